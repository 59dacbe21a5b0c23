"""Captions as token ids without torch: the truncation, padding and blank-caption rules both prediction backends
(PyTorch's processor, the ONNX runtime) share, on a ``tokenizers.Tokenizer``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from .errors import MMClassifierError


def batch_encoder(tokenizer: Tokenizer, max_length: int, pad_id: int, pad_token: str) -> Tokenizer:
    """A copy of ``tokenizer`` that truncates to ``max_length`` and pads on the right to the longest caption, as
    ``transformers``' ``tokenizer(text, padding="longest", truncation=True, max_length=...)`` does."""
    encoder = Tokenizer.from_str(tokenizer.to_str())
    encoder.enable_truncation(max_length=max_length)
    encoder.enable_padding(direction="right", pad_id=pad_id, pad_token=pad_token)
    return encoder


def check_captions(text) -> list[str]:
    """One caption or a list of them -> a non-empty list of strings; clear errors otherwise."""
    if isinstance(text, str):
        text = [text]
    text = list(text)
    if not text:
        raise MMClassifierError("The list of captions is empty.")
    bad = [type(t).__name__ for t in text if not isinstance(t, str)]
    if bad:
        raise MMClassifierError(f"Captions must be strings; got {bad[0]}.")
    return text


def encode_captions(encoder: Tokenizer, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Captions -> ``input_ids`` and ``attention_mask``, (B, T) int64, with :func:`batch_encoder`'s encoder (its
    padding gives the pad id: cheaper than a ``transformers`` tokenizer's ``pad_token_id``)."""
    # One caption: encode, which skips the batch's hand-off to the thread pool (the same ids and mask).
    rows = [encoder.encode(captions[0])] if len(captions) == 1 else encoder.encode_batch(list(captions))
    ids = np.array([row.ids for row in rows], dtype=np.int64).reshape(len(rows), -1)
    mask = np.array([row.attention_mask for row in rows], dtype=np.int64).reshape(len(rows), -1)
    return blank_captions_masked(captions, ids, mask, encoder.padding["pad_id"])


def blank_captions_masked(captions: Sequence[str], ids: np.ndarray, mask: np.ndarray, pad_id: int
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Every batch has at least one position, so an all-empty batch still has a (B, 1) shape; and a blank caption
    is no caption for every encoder, although a transformers tokenizer still gives it its special tokens ([CLS]
    [SEP]): no position is attended, and the model embeds it as zeros."""
    if ids.shape[1] == 0:
        return np.full((len(captions), 1), pad_id, dtype=np.int64), np.zeros((len(captions), 1), dtype=np.int64)
    if all(caption.strip() for caption in captions):  # the usual case, without numpy's cost on one caption
        return ids, mask
    blank = np.array([not caption.strip() for caption in captions])
    return ids, np.where(blank[:, None], 0, mask)
