"""Word-level caption tokenizer, trained with `tokenizers` and wrapped as a PreTrainedTokenizerFast."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
DEFAULT_MAX_LENGTH = 32  # Flickr8k captions: 11 words on average, 99th percentile about 25


def build_tokenizer(
    captions: Iterable[str],
    vocab_size: int = 5000,
    min_frequency: int = 2,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> PreTrainedTokenizerFast:
    """Learn a word vocabulary from (training) captions.

    Words are lower-cased and stripped of accents; punctuation is split off. ``[PAD]`` is id 0 and ``[UNK]`` id 1;
    words seen fewer than ``min_frequency`` times map to ``[UNK]``. Calls truncate to ``max_length`` tokens.
    """
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD_TOKEN, UNK_TOKEN], show_progress=False
    )
    tokenizer.train_from_iterator((c for c in captions if isinstance(c, str)), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=max_length,
        padding_side="right",
        truncation_side="right",
        model_input_names=["input_ids", "attention_mask"],
    )
