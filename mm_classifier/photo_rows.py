"""What a data set's reader found -> checked photo rows, split by photo: a ``datasets.DatasetDict`` of
``image_id``, ``image``, ``captions`` (and ``labels`` when given).

Readers (``sources.py``) hand over :class:`FoundPhotos` (Flickr8k's own caption files, read into Python: 8k photos)
or :class:`CaptionRows` (every other collection, as Arrow tables). The second path works on Arrow columns a batch at a
time and writes the rows into memory-mapped Arrow files, so a collection of COCO's size (118k photos, 590k captions)
is never held as Python objects.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image as PILImage
from tqdm.auto import tqdm

from .cache import cache_root, drop_if_damaged
from .errors import MMClassifierError
from .images import too_large

SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT_FRACTIONS = (0.75, 0.125, 0.125)
PHOTO_FEATURES = datasets.Features(
    {
        "image_id": datasets.Value("string"),
        "image": datasets.Image(),
        "captions": datasets.Sequence(datasets.Value("string")),
    }
)
# How a labels cell written as one string may join its label names.
LABEL_SEPARATORS = ("|", ";", ",")
PHOTO_ROWS_VERSION = 1  # bump when the photo rows written under cache_root()/photos change
BATCH_ROWS = 10_000


class DataWarning(UserWarning):
    """Some rows of a data set were unusable and were skipped (the message counts them; ``skipped``: the counts by
    kind, e.g. ``{"truncated or corrupt photo": 1}``)."""

    def __init__(self, message: str, skipped: Mapping[str, int] | None = None):
        super().__init__(message)
        self.skipped = {kind: count for kind, count in (skipped or {}).items() if count}


@dataclass
class SplitList:
    """The photo names a data set's own split puts in one split, in its order, and where that list came from."""

    source: str
    photos: list[str]


@dataclass
class FoundPhotos:
    """What a layout reader found, before the photos are checked and split: captions and image files by photo name.

    ``captions_from`` and ``images_from`` say where they were read (for messages); ``skipped`` counts the bad rows the
    reader dropped; ``splits`` is the data set's own split (split name -> list), or ``None`` for a seeded split.
    """

    captions: dict[str, list[str]]
    images: dict[str, Path]
    captions_from: str
    images_from: str
    skipped: Counter = field(default_factory=Counter)
    splits: dict[str, SplitList] | None = None


@dataclass
class CaptionRows:
    """What a reader of any other collection found, before checks: rows of a photo and its caption(s), per split.

    A photo may span several rows (one caption each); rows are grouped by photo, in order of first appearance.

    Attributes:
        source: what was read, for messages.
        splits: the source's own split (``train`` / ``validation`` / ``test``) -> rows; one entry when it has none.
        image: the column with the photo: a ``datasets.Image`` or a path (relative to the split's ``image_roots``).
        captions: the column with a caption, a list of captions, or a JSON list of them.
        labels: the column with the photo's label names (a list, a JSON list or a separator-joined string), or
            ``None``: then concepts are mined from the captions.
        image_id: a column naming each photo; default: its path as written (embedded photos: split and row).
        image_roots: split -> the folder that relative paths start from.
        skipped: bad rows the reader already dropped, by kind.
    """

    source: str
    splits: dict[str, datasets.Dataset]
    image: str
    captions: str
    labels: str | None = None
    image_id: str | None = None
    image_roots: dict[str, Path] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)


def text_list(value) -> list[str]:
    """A caption cell: a caption, a list of captions, or (in a CSV file) a JSON list of them."""
    if value is None or (isinstance(value, float) and value != value):  # pandas reads an empty CSV cell as NaN
        return []
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return [value]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def label_list(value) -> list[str] | None:
    """A labels cell -> label names, each once: a list, a JSON list or a ``|``, ``;`` or ``,``-joined string.
    ``None`` when the value is missing (an empty cell); ``[]`` is a photo with none of the labels."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = json.loads(text) if text.startswith("[") else None
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, list):
            separator = next((s for s in LABEL_SEPARATORS if s in text), None)
            value = text.split(separator) if separator else [text]
    if not isinstance(value, (list, tuple)):
        value = [value]
    return list(dict.fromkeys(str(v).strip() for v in value if v is not None and str(v).strip()))



# ---------------------------------------------------------------------------------------------- checks and splits


def found_photo_rows(
    source: Path, found: FoundPhotos, seed: int, split_fractions: Sequence[float]
) -> datasets.DatasetDict:
    """Keep the photos with captions and a readable image, split them by photo, and warn once about the rest."""
    skipped = found.skipped
    usable = _usable_photos(found, skipped)
    if not usable:
        raise MMClassifierError(
            f"No usable photo in {source}: {found.captions_from} names {len(found.captions)} photos and "
            f"{found.images_from} holds {len(found.images)} image files, but no photo has both a caption and a "
            f"readable image ({describe_skipped(skipped) or 'nothing to skip'})."
        )
    if found.splits is not None:
        split_names = _listed_split(found.splits, set(usable), skipped)
    else:
        split_names = _seeded_split(sorted(usable), seed, split_fractions)
    warn_skipped(source, skipped)
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {
                    "image_id": names,
                    "image": [str(usable[n]) for n in names],
                    "captions": [found.captions[n] for n in names],
                },
                features=PHOTO_FEATURES,
                split=split,
            )
            for split, names in split_names.items()
        }
    )


def _usable_photos(found: FoundPhotos, skipped: Counter) -> dict[str, Path]:
    """Image file by photo name of the photos that have captions and a readable image; counts the others."""
    usable: dict[str, Path] = {}
    for name in tqdm(sorted(found.captions), desc="Checking photos", unit="photo", leave=False, mininterval=1):
        if name not in found.images:
            skipped["captions for a missing photo"] += 1
        elif problem := photo_problem(found.images[name]):
            skipped[problem] += 1
        else:
            usable[name] = found.images[name]
    skipped["photo without captions"] += len(set(found.images) - set(found.captions))
    return usable


def photo_problem(path) -> str | None:
    """What is wrong with a photo file (the kind the loading summary counts), or None when it is usable.

    Decodes at reduced size (JPEG draft: ~0.5 ms) to catch empty, non-image, truncated and corrupt files, and
    refuses what ``images.load_image`` refuses (``images.too_large``): more pixels to decode, after its
    reduced-size decode, than PIL's decompression-bomb limit, in a file too small to hold a photo that large (a
    valid 90-megapixel JPEG passes at a reduced scale, a valid PNG as large decoded whole, a small PNG claiming as
    many pixels does not)."""
    if isinstance(path, (str, os.PathLike)) and os.path.getsize(path) == 0:
        return "empty photo file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)  # the bound is checked below
            with PILImage.open(path) as image:
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                if too_large(image, path):
                    return "photo above the pixel limit (a decompression bomb?)"
                image.load()
                return None if image.width > 0 and image.height > 0 else "truncated or corrupt photo"
    except PILImage.UnidentifiedImageError:
        return "file that is no image"
    except PILImage.DecompressionBombError:
        return "photo above the pixel limit (a decompression bomb?)"
    except (OSError, SyntaxError, ValueError):
        return "truncated or corrupt photo"


def _listed_split(splits: Mapping[str, SplitList], available: set[str], skipped: Counter) -> dict[str, list[str]]:
    """The data set's own split, in its order, restricted to available photos; counts the listed but missing."""
    out: dict[str, list[str]] = {}
    seen: set[str] = set()
    for split, split_list in splits.items():
        # A photo already in an earlier split stays there, so no photo is in two splits.
        listed = [n for n in split_list.photos if n not in seen]
        seen.update(listed)
        out[split] = [n for n in listed if n in available]
        skipped[f"listed in {split_list.source} but missing"] += len(listed) - len(out[split])
    skipped["photo in no split list"] += len(available - seen)
    return out


def _seeded_split(names: list[str], seed: int, fractions: Sequence[float]) -> dict[str, list[str]]:
    """A split by photo that depends on the seed and the photo names only."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise MMClassifierError(f"split_fractions must be three non-negative numbers summing to 1, got {fractions}.")
    shuffled = names[:]
    random.Random(seed).shuffle(shuffled)
    n_train = round(fractions[0] * len(shuffled))
    n_val = round(fractions[1] * len(shuffled))
    return {
        "train": sorted(shuffled[:n_train]),
        "validation": sorted(shuffled[n_train : n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val :]),
    }


def describe_skipped(skipped: Counter) -> str:
    return ", ".join(f"{count} {what}" for what, count in sorted(skipped.items()) if count)


def warn_skipped(source: object, skipped: Counter) -> None:
    # stacklevel 4: the warning points at the caller of load_photos, the line a user can act on.
    if any(skipped.values()):
        warnings.warn(DataWarning(f"{source}: skipped {describe_skipped(skipped)}.", skipped), stacklevel=4)


@contextlib.contextmanager
def counting_skipped() -> Iterator[Counter]:
    """Within the block, the rows that loading a data set skips are counted by kind into the Counter it gives (for
    a run's results); the warnings still show, when the block ends."""
    counts: Counter = Counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            yield counts
    finally:  # an error in the block still shows what was skipped before it
        for warning in caught:
            if isinstance(warning.message, DataWarning):
                counts.update(warning.message.skipped)
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


# ---------------------------------------------------------------------------------------------- rows -> photo rows


def caption_photo_rows(rows: CaptionRows, seed: int, split_fractions: Sequence[float]) -> datasets.DatasetDict:
    """Clean, group, check and split what a reader found, then write the photo rows (memory-mapped Arrow files).

    Everything here works on Arrow columns a batch at a time; only the photos' ids and file names are ever a Python
    list of the whole data set.
    """
    skipped = rows.skipped
    found: dict[str, pa.Table] = {}
    seen = pa.array([], pa.string())
    for split in sorted(rows.splits, key=lambda s: SPLITS.index(s) if s in SPLITS else len(SPLITS)):
        table = _group_by_photo(_scan_rows(rows, split, skipped))
        # The same file (an embedded photo: the same id) in two splits stays in the first; two files of one name in
        # two split folders are two photos.
        photo = pc.if_else(table["embedded"], table["image_id"], table["path"])
        repeated = pc.is_in(photo, value_set=seen)
        skipped["photo in two splits"] += count_true(repeated)
        table = table.filter(pc.invert(repeated))
        seen = pa.concat_arrays([seen, pc.filter(photo, pc.invert(repeated)).combine_chunks()])
        found[split] = _check_photos(rows, split, table, skipped)
    if not any(len(table) for table in found.values()):
        raise MMClassifierError(
            f"No usable photo in {rows.source}: no row has both a caption and a readable photo "
            f"({describe_skipped(skipped) or 'it has no rows'})."
        )
    chosen = _assign_splits(rows.source, found, seed, split_fractions)
    warn_skipped(rows.source, skipped)
    return datasets.DatasetDict(
        {split: _write_photo_rows(rows, source_split, split, table) for split, (source_split, table) in chosen.items()}
    )


def arrow_batches(ds: datasets.Dataset, columns: Sequence[str], batch_size: int = BATCH_ROWS) -> Iterator[pa.Table]:
    """``columns`` of ``ds`` as ``pyarrow.Table`` batches in row order: nothing decoded, memory-mapped data unread."""
    return ds.select_columns(list(columns)).with_format("arrow").iter(batch_size=batch_size)


def count_true(mask) -> int:
    return int(pc.sum(mask).as_py() or 0)


def rows_dataset(table: pa.Table, file: Path, *how) -> datasets.Dataset:
    """A table read from ``file`` as a ``Dataset``, its fingerprint naming the file (and its size and time) and how it
    was read, instead of a hash of the whole table."""
    stat = file.stat()
    fingerprint = _digest(PHOTO_ROWS_VERSION, str(file.resolve()), stat.st_size, stat.st_mtime_ns, *map(str, how))
    return datasets.Dataset(datasets.table.InMemoryTable(table), fingerprint=fingerprint)


def _scan_schema(with_labels: bool) -> pa.Schema:
    labels = [("labels", pa.list_(pa.string()))] if with_labels else []
    return pa.schema([("row", pa.int64()), ("image_id", pa.string()), ("path", pa.string()), ("embedded", pa.bool_()),
                      ("captions", pa.list_(pa.string())), *labels])


def _scan_rows(rows: CaptionRows, split: str, skipped: Counter) -> pa.Table:
    """One split's rows as (row, image_id, path, embedded, captions[, labels]), cleaned; bad rows counted, dropped."""
    ds = rows.splits[split]
    columns = list(dict.fromkeys(c for c in (rows.image, rows.captions, rows.labels, rows.image_id) if c))
    parts, start = [], 0
    for batch in tqdm(arrow_batches(ds, columns), desc=f"Reading {split} rows", total=-(-len(ds) // BATCH_ROWS),
                      unit="batch", leave=False, mininterval=1):
        parts.append(_scan_batch(rows, split, batch, start, skipped))
        start += len(batch)
    return pa.concat_tables(parts) if parts else _scan_schema(rows.labels is not None).empty_table()


def _scan_batch(rows: CaptionRows, split: str, batch: pa.Table, start: int, skipped: Counter) -> pa.Table:
    column = batch.column(rows.image)
    if pa.types.is_struct(column.type):  # a datasets.Image: embedded bytes and/or a path; the bytes stay in Arrow
        paths = pc.struct_field(column, "path").to_pylist()
        embedded = pc.fill_null(pc.greater(pc.binary_length(pc.struct_field(column, "bytes")), 0), False).to_pylist()
    else:
        paths, embedded = column.to_pylist(), [False] * len(batch)
    no_cells = [None] * len(batch)
    label_cells = batch.column(rows.labels).to_pylist() if rows.labels else no_cells
    given_ids = batch.column(rows.image_id).to_pylist() if rows.image_id else no_cells
    root = rows.image_roots.get(split)
    out = {name: [] for name in _scan_schema(rows.labels is not None).names}
    cells = zip(paths, embedded, batch.column(rows.captions).to_pylist(), label_cells, given_ids, strict=True)
    for row, (path, has_bytes, caption_cell, label_cell, given_id) in enumerate(cells, start=start):
        captions, labels = _captions_of(caption_cell, skipped), label_list(label_cell)
        if not captions:
            continue
        if rows.labels and labels is None:
            skipped["photo without labels"] += 1
            continue
        if not path and not has_bytes:
            skipped["row without a photo"] += 1
            continue
        out["row"].append(row)
        out["image_id"].append(_photo_id(given_id, path, has_bytes, root, split, row))
        out["path"].append(path if has_bytes or root is None or os.path.isabs(path) else str(root / path))
        out["embedded"].append(has_bytes)
        out["captions"].append(captions)
        if rows.labels:
            out["labels"].append(labels)
    return pa.table(out, schema=_scan_schema(rows.labels is not None))


def _captions_of(cell, skipped: Counter) -> list[str]:
    texts = text_list(cell)
    kept = [text.strip() for text in texts if text.strip()]
    skipped["empty caption"] += (len(texts) - len(kept)) or (0 if kept else 1)
    return kept


def _photo_id(given, path: str | None, has_bytes: bool, root: Path | None, split: str, row: int) -> str:
    """A given id; else the photo's path as written (relative to its folder); an embedded photo: split and row."""
    if given is not None:
        return str(given)
    if has_bytes or not path:
        return f"{split}-{row:05d}"
    if root is not None and os.path.isabs(path):
        relative = os.path.relpath(path, os.path.abspath(root))
        if not relative.startswith(".."):
            return Path(relative).as_posix()
    return Path(os.path.normpath(path)).as_posix()


def _group_by_photo(table: pa.Table) -> pa.Table:
    """Rows of one photo (a caption each, say) merged, in order of first appearance: the first row's photo, every
    row's captions in order, and the union of their labels."""
    encoded = pc.dictionary_encode(table["image_id"]).combine_chunks()  # photos numbered by first appearance
    if len(encoded.dictionary) == len(table):
        return table
    photo = encoded.indices.to_numpy()
    order = np.argsort(photo, kind="stable")  # the rows photo by photo, each photo's in row order
    starts = np.concatenate([[0], np.cumsum(np.bincount(photo))[:-1]])  # where each photo's rows start in ``order``
    photos = table.take(order[starts])
    photos = photos.set_column(photos.schema.get_field_index("captions"), "captions",
                               _concatenated_lists(table["captions"], order, starts))
    if "labels" in table.column_names:
        merged = _concatenated_lists(table["labels"], order, starts).to_pylist()
        photos = photos.set_column(photos.schema.get_field_index("labels"), "labels",
                                   pa.array([list(dict.fromkeys(labels)) for labels in merged], pa.list_(pa.string())))
    return photos


def _concatenated_lists(column: pa.ChunkedArray, order: np.ndarray, starts: np.ndarray) -> pa.ListArray:
    """The lists of the rows ``order[starts[p]:starts[p + 1]]`` joined into one list per photo ``p``."""
    rows = pc.take(column, order).combine_chunks()
    lengths = pc.list_value_length(rows).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(np.add.reduceat(lengths, starts))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), rows.flatten())


def _check_photos(rows: CaptionRows, split: str, table: pa.Table, skipped: Counter) -> pa.Table:
    """The photos whose image opens (a quick reduced-size decode); missing and corrupt ones counted."""
    ok = np.zeros(len(table), dtype=bool)
    images = tqdm(_photo_files(rows, split, table), total=len(table), desc=f"Checking {split} photos", unit="photo",
                  leave=False, mininterval=1)
    for i, image in enumerate(images):
        if isinstance(image, str) and not os.path.isfile(image):
            skipped["captions for a missing photo"] += 1
        elif problem := photo_problem(image):
            skipped[problem] += 1
        else:
            ok[i] = True
    return table.filter(pa.array(ok))


def _photo_files(rows: CaptionRows, split: str, table: pa.Table) -> Iterator[str | io.BytesIO]:
    """Each photo's file, or its embedded bytes (read from Arrow a batch at a time)."""
    paths = table["path"].to_pylist()
    embedded = table["embedded"].to_numpy(zero_copy_only=False)
    if not embedded.any():
        yield from paths
        return
    photos = rows.splits[split].select(table["row"].to_numpy())
    position = 0
    for batch in arrow_batches(photos, [rows.image], batch_size=256):
        for data in pc.struct_field(batch.column(rows.image), "bytes").to_pylist():
            yield io.BytesIO(data) if embedded[position] else paths[position]
            position += 1


def _assign_splits(
    source: str, found: dict[str, pa.Table], seed: int, fractions: Sequence[float]
) -> dict[str, tuple[str, pa.Table]]:
    """Output split -> (the source split its rows come from, its photos). A source with one split is split by a seed;
    one without a validation split gives it a seeded share of the training photos; a missing test split stays empty."""
    if len(found) == 1:
        (name, table), = found.items()
        chosen = _seeded_split(sorted(table["image_id"].to_pylist()), seed, fractions)
        return {split: (name, table.take(pc.index_in(pa.array(names, pa.string()), value_set=table["image_id"])))
                for split, names in chosen.items()}
    if "train" not in found:
        raise MMClassifierError(f"{source} has the splits {sorted(found)} but no training split.")
    out = {split: (split, found[split]) for split in SPLITS if split in found}
    train = found["train"]
    if "validation" not in found:
        share = fractions[1] / max(fractions[0] + fractions[1], 1e-9)
        held = _seeded_split(sorted(train["image_id"].to_pylist()), seed, (1 - share, share, 0))["validation"]
        in_validation = pc.is_in(train["image_id"], value_set=pa.array(held, pa.string()))
        out["train"] = ("train", train.filter(pc.invert(in_validation)))
        out["validation"] = ("train", train.filter(in_validation))
    out.setdefault("test", ("train", train.slice(0, 0)))
    return {split: out[split] for split in SPLITS}


def _photo_features(with_labels: bool) -> datasets.Features:
    return datasets.Features({**PHOTO_FEATURES, **({"labels": datasets.Sequence(datasets.Value("string"))}
                                                   if with_labels else {})})


def _write_photo_rows(rows: CaptionRows, source_split: str, split: str, table: pa.Table) -> datasets.Dataset:
    """The split's photo rows, written once into an Arrow file under the cache (named by what they hold), from where
    they are memory-mapped; embedded photos are copied along, unopened."""
    features = _photo_features(rows.labels is not None)
    if len(table) == 0:
        return datasets.Dataset.from_dict({name: [] for name in features}, features=features, split=split)
    source = rows.splits[source_split]
    key = _digest(PHOTO_ROWS_VERSION, source._fingerprint, split, _table_digest(table))
    cache_file = cache_root() / "photos" / f"{key}.arrow"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    drop_if_damaged(cache_file, len(table))
    photos = source.select(table["row"].to_numpy()).select_columns([rows.image])
    if isinstance(photos.features[rows.image], datasets.Image):
        photos = photos.cast_column(rows.image, datasets.Image(decode=False))
    text = table.drop_columns(["row"])

    def attach(images, indices):
        part = text.take(indices)
        kinds = zip(images, part["embedded"].to_pylist(), part["path"].to_pylist(), strict=True)
        out = {"image_id": part["image_id"].to_pylist(), "captions": part["captions"].to_pylist(),
               "image": [image if embedded else {"bytes": None, "path": path} for image, embedded, path in kinds]}
        if "labels" in part.column_names:
            out["labels"] = part["labels"].to_pylist()
        return out

    written = photos.map(attach, batched=True, with_indices=True, input_columns=[rows.image],
                         remove_columns=[rows.image], features=features, cache_file_name=str(cache_file),
                         new_fingerprint=key, desc=f"Writing {split} photo rows")
    return datasets.Dataset(written.data, info=written.info, split=split, fingerprint=written._fingerprint)


def _digest(*parts) -> str:
    h = hashlib.sha1()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


class _HashSink:
    """A write-only file that hashes what is written to it."""

    def __init__(self):
        self.hash, self.closed = hashlib.sha1(), False

    def write(self, data) -> int:
        self.hash.update(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _table_digest(table: pa.Table) -> str:
    """A hash of a table's content, streamed through Arrow's IPC format (no copy of the table)."""
    sink = _HashSink()
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), table.schema) as writer:
        writer.write_table(table)
    return sink.hash.hexdigest()


