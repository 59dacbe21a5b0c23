from transformers import AutoTokenizer

from mm_classifier import build_tokenizer


def tokenizer():
    return build_tokenizer(["A dog runs on the grass .", "a Dog jumps", "the café"] * 2, min_frequency=1)


def test_special_tokens_and_lowercasing():
    tok = tokenizer()
    assert tok.pad_token_id == 0 and tok.convert_tokens_to_ids("[UNK]") == 1
    assert tok("A DOG")["input_ids"] == tok("a dog")["input_ids"]
    assert tok("cafe")["input_ids"] == tok("café")["input_ids"]  # accents stripped


def test_unknown_words_emoji_empty_and_huge_captions():
    tok = tokenizer()
    assert tok("zebra 🐶")["input_ids"] == [1, 1]
    assert tok("")["input_ids"] == []
    encoded = tok("dog " * 10_000, truncation=True, max_length=32)
    assert len(encoded["input_ids"]) == 32


def test_save_and_auto_tokenizer_round_trip(tmp_path):
    tok = tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tok.get_vocab()
    assert loaded("a dog jumps")["input_ids"] == tok("a dog jumps")["input_ids"]
    assert loaded.model_max_length == 32
