"""Which caption encoder a training run builds: the word-level ones learnt from scratch (``lstm``, ``bag``) or a
pretrained transformers encoder from a hub id or a local folder (its configuration, tokenizer and pooling), and
how many tokens of a caption it reads."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

from .errors import MMClassifierError
from .sources import looks_like_hub_id
from .tokenization import DEFAULT_MAX_LENGTH, build_tokenizer

WORD_ENCODERS = ("lstm", "bag")  # learnt from scratch on the training captions' word vocabulary
# The default: the lstm for short captions (95 % of them within DEFAULT_MAX_LENGTH tokens), the bag for longer
# texts. Measured (docs/experiments.md): on Flickr8k's captions the two read as well alone, but the fusion model
# does better with the lstm; on IMDb plot outlines (median 25 words, the 95th percentile 48 tokens) the bag does
# better by far, alone and in the fusion model.
AUTO = "auto"
# A bag reads whole descriptions, where rarer words matter; the lstm keeps the notebooks' vocabulary.
WORD_VOCAB_SIZE = {"lstm": 5000, "bag": 20000}
MAX_LENGTH_QUANTILE = 95  # percent of the training texts that max_length leaves uncut (at least DEFAULT_MAX_LENGTH)
MAX_LENGTH_SAMPLE = 20_000  # captions whose lengths are measured
MAX_LENGTH_CAP = 512  # the most tokens any caption keeps (a BERT-style encoder's own limit)
# Text towers whose convention is their own pooled output (the end-of-text token's state), not a mean.
POOLER_MODEL_TYPES = ("clip_text_model",)


def encoder_type(text_encoder: str) -> str:
    """``train.py --text-encoder``'s value -> the config's ``text_encoder_type`` (``auto``: a word-level one, whose
    choice waits for the data)."""
    if text_encoder == AUTO:
        return "lstm"
    return text_encoder if text_encoder in WORD_ENCODERS else "transformers"


def check_text_encoder(text_encoder: str) -> None:
    """Fail before any data loads when a pretrained encoder cannot be had: a missing folder, or a hub id offline."""
    if text_encoder in (*WORD_ENCODERS, AUTO):
        return
    path = Path(text_encoder).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MMClassifierError(f"--text-encoder {text_encoder} is a folder without config.json: not a "
                                    "transformers model folder.")
        return
    if not (looks_like_hub_id(text_encoder) or "/" not in text_encoder):  # owner/name, or a single-name id
        raise MMClassifierError(f"--text-encoder {text_encoder}: no such folder. Give lstm, bag, a transformers "
                                "model folder or a hub id (e.g. sentence-transformers/all-MiniLM-L6-v2).")
    from .hub import hub_unreachable_reason

    reason = hub_unreachable_reason()
    if reason:
        raise MMClassifierError(f"--text-encoder {text_encoder} is downloaded from the hub, but {reason}. Pass a "
                                "local model folder instead, or leave out --text-encoder (auto: learnt from "
                                "scratch, no download).")


def _load(loader, text_encoder: str, what: str):
    try:
        return loader(str(Path(text_encoder).expanduser()) if Path(text_encoder).expanduser().is_dir()
                      else text_encoder)
    except Exception as err:
        raise MMClassifierError(f"Cannot load the {what} of --text-encoder {text_encoder} "
                                f"({type(err).__name__}: {err}).") from err


def pretrained_text_config(text_encoder: str) -> tuple[dict, str]:
    """The text model's configuration as a dict (a composite model's text tower: CLIP's) and its pooling."""
    config = _load(AutoConfig.from_pretrained, text_encoder, "configuration")
    text_config = getattr(config, "text_config", None) or config
    if MODEL_MAPPING_NAMES.get(text_config.model_type) is None:  # what AutoModel.from_config would refuse, later
        raise MMClassifierError(f"--text-encoder {text_encoder}: transformers has no model class for its text "
                                f"encoder (model type {text_config.model_type!r}). Use a BERT-, RoBERTa-, MiniLM- or "
                                "CLIP-style encoder.")
    pooling = "pooler" if text_config.model_type in POOLER_MODEL_TYPES else "mean"
    return text_config.to_dict(), pooling


def choose_text_encoder(text_encoder: str, captions: Sequence[str], min_frequency: int = 2
                        ) -> tuple[str, PreTrainedTokenizerBase]:
    """``text_encoder`` with ``auto`` resolved for these training ``captions`` (see ``AUTO``), and its tokenizer."""
    if text_encoder != AUTO:
        return text_encoder, caption_tokenizer(text_encoder, captions, min_frequency)
    tokenizer = caption_tokenizer("lstm", captions, min_frequency)
    if fit_max_length(tokenizer, captions) <= DEFAULT_MAX_LENGTH:
        return "lstm", tokenizer
    return "bag", caption_tokenizer("bag", captions, min_frequency)


def caption_tokenizer(text_encoder: str, captions: Sequence[str], min_frequency: int = 2) -> PreTrainedTokenizerBase:
    """A word vocabulary learnt from the training captions (``lstm``, ``bag``), or the pretrained encoder's own
    tokenizer."""
    if text_encoder in WORD_ENCODERS:
        return build_tokenizer(captions, vocab_size=WORD_VOCAB_SIZE[text_encoder], min_frequency=min_frequency,
                               max_length=MAX_LENGTH_CAP)
    tokenizer = _load(AutoTokenizer.from_pretrained, text_encoder, "tokenizer")
    if tokenizer.pad_token_id is None:  # pad with the end-of-text token, as CLIP and GPT-style models do
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token or tokenizer.unk_token
    if tokenizer.pad_token_id is None:
        raise MMClassifierError(f"The tokenizer of --text-encoder {text_encoder} has no padding, end-of-text or "
                                "unknown token to pad captions with.")
    tokenizer.padding_side = tokenizer.truncation_side = "right"
    positions = pretrained_text_config(text_encoder)[0].get("max_position_embeddings")
    if positions and tokenizer.model_max_length > positions:  # a tokenizer saved without its model's limit
        tokenizer.model_max_length = positions
    return tokenizer


def max_length_limit(tokenizer: PreTrainedTokenizerBase) -> int:
    """The most tokens a caption may keep: the tokenizer's ``model_max_length`` (a transformers encoder's position
    limit), at most ``MAX_LENGTH_CAP``."""
    return min(tokenizer.model_max_length, MAX_LENGTH_CAP)


def fit_max_length(tokenizer: PreTrainedTokenizerBase, captions: Sequence[str], limit: int | None = None) -> int:
    """Tokens a caption may keep: enough for ``MAX_LENGTH_QUANTILE`` percent of the training ``captions``
    (never below ``DEFAULT_MAX_LENGTH``, so short captions read as before), at most the encoder's ``limit``
    (default: the tokenizer's own ``model_max_length``, or ``MAX_LENGTH_CAP`` for a tokenizer that sets none)."""
    limit = limit or max_length_limit(tokenizer)
    texts = [c for c in captions if isinstance(c, str)]
    texts = texts[:: max(1, len(texts) // MAX_LENGTH_SAMPLE)]  # evenly spread: a quantile needs no more
    if not texts:
        return min(DEFAULT_MAX_LENGTH, limit)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
    return int(min(limit, max(DEFAULT_MAX_LENGTH, math.ceil(np.percentile(lengths, MAX_LENGTH_QUANTILE)))))
