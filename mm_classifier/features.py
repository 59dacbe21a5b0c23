"""Cached photo tensors for training: resized uint8 pixels, and backbone (stem) outputs of a frozen backbone.

Both are written by ``datasets.map`` into Arrow files under :func:`~mm_classifier.data.cache_root`, named by a
hash of everything they depend on, so a second run (or a second process) reuses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Callable

import datasets
import numpy as np
import pyarrow as pa
import torch

from .data import cache_root
from .processing import MultiModalProcessor

logger = logging.getLogger(__name__)
FEATURE_CACHE_VERSION = 1


def _digest(*parts) -> str:
    h = hashlib.sha1()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode() if not isinstance(part, bytes) else part)
    return h.hexdigest()[:20]


def _column_array(table: datasets.Dataset, column: str, dtype) -> np.ndarray:
    """A fixed-size nested list column as one flat numpy array, straight from the Arrow buffers.

    ``np.asarray(ds[column])`` converts row by row (seconds and gigabytes for a few thousand photos).
    """
    chunks = []
    for chunk in table.data.column(column).chunks:
        values = getattr(chunk, "storage", chunk)  # Array3D is an extension type over nested lists
        while pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type):
            values = values.flatten()
        chunks.append(values.to_numpy(zero_copy_only=False))
    return np.concatenate(chunks).astype(dtype, copy=False)


def photos_key(photos: datasets.Dataset) -> str:
    """Identity of a split's photos: names, files (path, size, mtime) or, for embedded images, the fingerprint."""
    undecoded = photos.cast_column("image", datasets.Image(decode=False))
    files = []
    for value in list(undecoded["image"]):
        path = value.get("path")
        if path and os.path.isfile(path) and not value.get("bytes"):
            stat = os.stat(path)
            files.append((path, stat.st_size, int(stat.st_mtime)))
        else:
            files.append(None)
    if any(f is None for f in files):
        files.append(photos._fingerprint)
    return _digest(FEATURE_CACHE_VERSION, list(photos["image_id"]), files)


def photo_pixels(
    photos: datasets.Dataset, processor: MultiModalProcessor, num_proc: int | None = None
) -> torch.Tensor:
    """(P, 3, S, S) uint8 pixels of a split's photos, through the processor's resize, cached on disk."""
    key = _digest(photos_key(photos), processor.image_size)
    cache_file = cache_root() / "pixels" / f"{key}.arrow"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    size = processor.image_size

    def resize(batch):
        return {"pixels": [processor.resize_image(image).numpy() for image in batch["image"]]}

    undecoded = photos.cast_column("image", datasets.Image(decode=False)).select_columns(["image"])
    resized = undecoded.map(
        resize,
        batched=True,
        batch_size=64,
        num_proc=num_proc if num_proc and len(photos) >= 256 else None,
        remove_columns=["image"],
        features=datasets.Features({"pixels": datasets.Array3D((3, size, size), "uint8")}),
        cache_file_name=str(cache_file),
        new_fingerprint=key,
        desc="Decoding and resizing photos",
    )
    return torch.from_numpy(_column_array(resized, "pixels", np.uint8).reshape(len(resized), 3, size, size))


def backbone_digest(model, trainable_blocks: int) -> str:
    """Identity of the frozen part of a model's backbone (architecture, creation arguments, weights)."""
    config = model.config
    h = hashlib.sha1()
    for name, tensor in sorted(model.image_encoder.backbone.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return _digest(config.backbone, config.backbone_kwargs, config.image_feature_blocks,
                   config.image_local_projection, trainable_blocks, h.hexdigest())


@torch.no_grad()
def stem_outputs(
    pixels: torch.Tensor | Callable[[], torch.Tensor],
    pixels_key: str,
    model,
    processor: MultiModalProcessor,
    trainable_blocks: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    num_photos: int | None = None,
) -> torch.Tensor:
    """Outputs of the frozen backbone part for every photo, cached on disk in float16.

    Args:
        pixels: (P, 3, S, S) uint8 from :func:`photo_pixels`, or a function that returns them: it is called
            only when the outputs are not cached yet (then ``num_photos`` must say P), so a cached run never
            loads the pixels.
        trainable_blocks: 0 caches the pooled features (P, F); N > 0 caches the map entering the last N stages.

    Returns:
        float16 tensor: (P, F) or (P, C, h, w).

    The model's image encoder is moved to ``device`` (where training will use it anyway).
    """
    key = _digest(pixels_key, backbone_digest(model, trainable_blocks), processor.to_dict())
    cache_file = cache_root() / "features" / f"{key}.arrow"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    encoder = model.image_encoder.to(device)
    was_training = encoder.training
    encoder.eval()
    encoder.to(memory_format=torch.channels_last)  # faster on CPU (README, Performance) and on GPU
    if callable(pixels):
        if num_photos is None:
            raise TypeError("stem_outputs: pass num_photos with a function that loads the pixels")
        load, loaded = pixels, []
    else:
        num_photos, loaded = len(pixels), [pixels]

    def run(batch):
        if not loaded:  # a cache miss: now the pixels are needed
            loaded.append(load())
        index = torch.as_tensor(batch["photo"])
        x = processor.normalize(loaded[0][index]).to(device).contiguous(memory_format=torch.channels_last)
        out = encoder.stem(x, trainable_blocks).float().cpu()
        return {"shape": [list(out.shape[1:])] * len(out), "stem": out.flatten(1).half().numpy()}

    table = datasets.Dataset.from_dict({"photo": list(range(num_photos))})
    try:
        cached = table.map(
            run,
            batched=True,
            batch_size=batch_size,
            remove_columns=["photo"],
            cache_file_name=str(cache_file),
            new_fingerprint=key,
            desc="Computing backbone features",
        )
    finally:
        encoder.train(was_training)
    shape = cached[0]["shape"]
    return torch.from_numpy(_column_array(cached, "stem", np.float16)).view(num_photos, *shape)

