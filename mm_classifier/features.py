"""Cached tensors for training: resized uint8 pixels, the outputs of a backbone's frozen part, and a frozen
transformers text encoder's caption vectors.

Photo tensors are written by ``datasets.map`` into Arrow files, caption vectors into one safetensors file, under
:func:`~mm_classifier.cache.cache_root`, named by a hash of everything they depend on, so a second run (or a second
process) reuses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm.auto import tqdm

from .cache import cache_root, drop_if_damaged
from .errors import MMClassifierError
from .processing import MultiModalProcessor

logger = logging.getLogger(__name__)
# 2: the frozen features column is named "features"; 3: photos decoded at full size (a JPEG was decoded at reduced
# size for small image sizes), so that training and prediction read the same pixels
FEATURE_CACHE_VERSION = 3


def _digest(*parts) -> str:
    h = hashlib.sha1()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode() if not isinstance(part, bytes) else part)
    return h.hexdigest()[:20]


def _column_chunks(table: datasets.Dataset, column: str) -> list[np.ndarray]:
    """A fixed-size nested list column as flat numpy arrays, one per Arrow chunk, viewing the Arrow buffers
    (memory-mapped from the cache file) without a copy.

    ``np.asarray(ds[column])`` converts row by row (seconds and gigabytes for a few thousand photos).
    """
    chunks = []
    for chunk in table.data.column(column).chunks:
        values = getattr(chunk, "storage", chunk)  # Array3D is an extension type over nested lists
        while pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type):
            values = values.flatten()
        chunks.append(values.to_numpy(zero_copy_only=False))
    return chunks


class PhotoTable:
    """Rows of equal shape (one per photo) read straight from a cached Arrow column, indexed like a tensor.

    ``table[index]`` (an int, a slice, a list or a tensor of row numbers) returns a new tensor of those rows;
    ``len``, ``shape`` and ``dtype`` work as for a tensor. Nothing is copied until rows are asked for: the rows
    stay in the memory-mapped cache file, so a cached split opens in milliseconds and costs no memory of its
    own (a full copy of 2,000 photos at 224 px is 300 MB of fresh pages: most of a cached rerun's time).
    ``tensor()`` copies everything into one tensor.
    """

    unreadable: list[int] = []  # rows of photos that did not decode (:func:`photo_pixels`)

    def __init__(self, table: datasets.Dataset, column: str, row_shape: tuple[int, ...], dtype: np.dtype):
        self._row_size, self._np_dtype = int(np.prod(row_shape)), np.dtype(dtype)
        self._chunks = [c.astype(dtype, copy=False).reshape(-1, self._row_size) for c in _column_chunks(table, column)]
        self._starts = np.cumsum([0] + [len(c) for c in self._chunks])  # first row of each chunk, then the end
        self.row_shape = tuple(row_shape)
        self.dtype = torch.from_numpy(np.empty(0, self._np_dtype)).dtype
        if self._starts[-1] != len(table):
            raise ValueError(f"column {column!r}: {self._starts[-1]} rows of {row_shape} for {len(table)} rows")

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.row_shape))

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, int):
            return self[[index]][0]
        rows = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index, dtype=np.int64)
        if rows.ndim != 1:
            raise IndexError("PhotoTable takes an int, a slice or a 1-D sequence of row numbers")
        rows = np.where(rows < 0, rows + len(self), rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        chunk_of = np.searchsorted(self._starts, rows, side="right") - 1
        out = np.empty((len(rows), self._row_size), self._np_dtype)
        for chunk in np.unique(chunk_of):
            where = chunk_of == chunk
            out[where] = self._chunks[chunk][rows[where] - self._starts[chunk]]
        return torch.from_numpy(out).view(len(rows), *self.row_shape)

    def tensor(self) -> torch.Tensor:
        return self[:]


def photos_key(photos: datasets.Dataset) -> str:
    """Identity of a split's photos: names, files (path, size, mtime) or, for embedded images, the fingerprint."""
    # The image column's paths and whether bytes are embedded, read as Arrow (not decoded row by row).
    undecoded = photos.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    images = undecoded.with_format("arrow")[:]["image"].combine_chunks()  # the selected rows only
    paths = images.field("path").to_pylist()
    embedded = pc.fill_null(pc.greater(pc.binary_length(images.field("bytes")), 0), False).to_pylist()
    files = []
    for path, has_bytes in zip(paths, embedded, strict=True):
        if path and not has_bytes and os.path.isfile(path):
            stat = os.stat(path)
            files.append((path, stat.st_size, int(stat.st_mtime)))
        else:
            files.append(None)
    if any(f is None for f in files):
        files.append(photos._fingerprint)
    return _digest(FEATURE_CACHE_VERSION, list(photos["image_id"]), files)


def photo_pixels(
    photos: datasets.Dataset, processor: MultiModalProcessor, num_proc: int | None = None
) -> PhotoTable:
    """(P, 3, S, S) uint8 pixels of a split's photos, through the processor's resize, cached on disk.

    A photo that no longer decodes (deleted, truncated or replaced after the data set loaded) does not stop the
    run: its row is black, a warning names it, and the returned table's ``unreadable`` lists its row, so that
    training can leave its pairs out.

    Returns a :class:`PhotoTable` on the cache file: ``pixels[index]`` gives a tensor of those photos.
    """
    key = _digest(photos_key(photos), processor.image_size)
    cache_file = cache_root() / "pixels" / f"{key}.arrow"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    drop_if_damaged(cache_file, len(photos))
    size = processor.image_size

    def resize(batch):
        pixels, readable = [], []
        for image in batch["image"]:
            try:
                pixels.append(processor.resize_image(image).numpy())
                readable.append(True)
            except MMClassifierError:
                pixels.append(np.zeros((3, size, size), np.uint8))
                readable.append(False)
        return {"pixels": pixels, "readable": readable}

    undecoded = photos.cast_column("image", datasets.Image(decode=False)).select_columns(["image"])
    resized = undecoded.map(
        resize,
        batched=True,
        batch_size=64,
        num_proc=num_proc if num_proc and len(photos) >= 256 else None,
        remove_columns=["image"],
        features=datasets.Features({"pixels": datasets.Array3D((3, size, size), "uint8"),
                                    "readable": datasets.Value("bool")}),
        cache_file_name=str(cache_file),
        new_fingerprint=key,
        desc="Decoding and resizing photos",
    )
    table = PhotoTable(resized, "pixels", (3, size, size), np.uint8)
    readable = resized.data.column("readable").to_numpy(zero_copy_only=False)
    table.unreadable = np.flatnonzero(~readable).tolist()
    if table.unreadable:
        names = photos.select_columns(["image_id"]).select(table.unreadable[:5])["image_id"]
        logger.warning("%d photo(s) no longer decode and are left out: %s%s", len(table.unreadable),
                       ", ".join(names), ", ..." if len(table.unreadable) > 5 else "")
    return table


def _tensor_digest(named_tensors) -> str:
    """A hash of (name, tensor) pairs: their names and bytes, in the order given."""
    h = hashlib.sha1()
    for name, tensor in named_tensors:
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def backbone_digest(model) -> str:
    """Identity of the frozen part of a model's backbone (architecture, creation arguments, weights)."""
    config, trainable_blocks = model.config, model.image_encoder.trainable_blocks
    weights = _tensor_digest(sorted(model.image_encoder.backbone.state_dict().items()))
    return _digest(config.backbone, config.backbone_kwargs, config.image_feature_blocks,
                   config.image_local_projection, trainable_blocks, weights)


@torch.no_grad()
def cached_frozen_features(
    pixels: torch.Tensor | PhotoTable | Callable[[], torch.Tensor | PhotoTable],
    pixels_key: str,
    model,
    processor: MultiModalProcessor,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    num_photos: int | None = None,
    mirror: bool = False,
) -> PhotoTable:
    """A wholly frozen backbone's features (``model.image_encoder.backbone_features``) of every photo, cached on
    disk in float16.

    Args:
        pixels: (P, 3, S, S) uint8 from :func:`photo_pixels`, or a function that returns them: it is called
            only when the outputs are not cached yet (then ``num_photos`` must say P), so a cached run never
            loads the pixels.
        model: a model whose backbone is frozen (``freeze_backbone(0)``): the features its projection reads,
            (P, F) or maps, are cached.
        mirror: of the photos' mirror images (flipped left to right) instead, cached apart.

    Returns:
        A :class:`PhotoTable` of float16 rows, (F,) or (C, h, w) each, on the memory-mapped cache file: a split's
        features are read a batch at a time, never held whole in memory.

    The model's image encoder is moved to ``device`` (where training will use it anyway).
    """
    if model.image_encoder.trainable_blocks != 0:
        raise ValueError("cached_frozen_features needs a wholly frozen backbone (freeze_backbone(0)); trainable "
                         "stages train on pixels")
    views = ("mirror",) if mirror else ()  # the plain view's key is the one it always had
    # The image settings only: a caption setting (the processor's max_length, set from the training texts) must not
    # invalidate the photos' features.
    key = _digest(pixels_key, backbone_digest(model), processor.image_processor.to_dict(), *views)
    cache_file = cache_root() / "features" / f"{key}.arrow"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    encoder = model.image_encoder.to(device)
    was_training = encoder.training
    encoder.eval()
    encoder.to(memory_format=torch.channels_last)  # MobileNetV2 runs about twice as fast so on CPU, and on GPU
    if callable(pixels):
        if num_photos is None:
            raise TypeError("cached_frozen_features: pass num_photos with a function that loads the pixels")
        load, loaded = pixels, []
    else:
        num_photos, loaded = len(pixels), [pixels]
    drop_if_damaged(cache_file, num_photos)

    def run(batch):
        if not loaded:  # a cache miss: now the pixels are needed
            loaded.append(load())
        index = torch.as_tensor(batch["photo"])
        x = processor.normalize(loaded[0][index]).to(device)
        x = (x.flip(-1) if mirror else x).contiguous(memory_format=torch.channels_last)
        out = encoder.backbone_features(x).float().cpu()
        return {"shape": [list(out.shape[1:])] * len(out), "features": out.flatten(1).half().numpy()}

    table = datasets.Dataset.from_dict({"photo": list(range(num_photos))})
    try:
        cached = table.map(
            run,
            batched=True,
            batch_size=batch_size,
            remove_columns=["photo"],
            cache_file_name=str(cache_file),
            new_fingerprint=key,
            desc=f"Computing backbone features{' of the mirror images' if mirror else ''}",
        )
    finally:
        encoder.train(was_training)
    return PhotoTable(cached, "features", tuple(cached[0]["shape"]), np.float16)


@torch.no_grad()
def cached_caption_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 128,
                            device: torch.device | str = "cpu") -> torch.Tensor:
    """A frozen transformers text encoder's caption vectors (N, hidden) for (N, T) caption tokens, cached on disk
    (float16, safetensors) under a hash of the encoder's weights and pooling and of the tokens.

    Captions run in batches of similar length, each cut to its longest caption, so a few long texts do not make
    every batch long. The file is written under a temporary name and renamed, so a crash never leaves a
    half-written cache that a later run would read.
    """
    from safetensors.torch import load_file, save_file

    encoder = model.text_encoder
    key = _digest(FEATURE_CACHE_VERSION, encoder.pooling, model.config.text_model_config,
                  _tensor_digest(sorted(encoder.model.state_dict().items())), list(input_ids.shape),
                  _tensor_digest([("ids", input_ids), ("mask", attention_mask)]))
    cache_file = cache_root() / "captions" / f"{key}.safetensors"
    if cache_file.is_file():
        try:
            return load_file(str(cache_file))["features"].float()
        except Exception as err:  # a damaged file: computed again below
            logger.warning("Rebuilding the unreadable caption cache %s (%s)", cache_file, err)
    encoder.to(device)
    was_training = encoder.training
    encoder.eval()
    lengths = attention_mask.sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    features = None
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="Computing caption features", leave=False):
            rows = order[start : start + batch_size]
            width = max(1, int(lengths[rows].max()))
            out = encoder.caption_features(input_ids[rows, :width].to(device),
                                           attention_mask[rows, :width].to(device)).float().cpu()
            if features is None:
                features = torch.zeros(len(order), out.shape[1])
            features[rows] = out
    finally:
        encoder.train(was_training)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_file.with_suffix(f".{os.getpid()}.tmp")
    save_file({"features": features.half()}, str(partial))
    os.replace(partial, cache_file)
    return features.half().float()  # exactly what a cached run reads
