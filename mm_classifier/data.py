"""Data sources -> ``datasets.DatasetDict`` of photo rows, and their (photo, caption) pairs with concept labels.

Each layout on disk is one reader plus one line of LAYOUTS, the detection table :func:`load_photos` tries in order.
Flickr8k's own caption files are read into Python (8k photos); every other source goes through Arrow, so that a
collection of COCO's size (118k photos, 590k captions) is never held as Python objects.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import os
import random
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
from PIL import Image as PILImage
from tqdm.auto import tqdm

from .cache import cache_root
from .errors import MMClassifierError
from .labels import (
    CONCEPT_LEXICON,
    DEFAULT_MIN_VOTES,
    DEFAULT_NUM_CONCEPTS,
    labels_from_votes,
    leave_one_out_votes,
    mine_concepts,
    validate_lexicon,
)
from .sample import sample_folder

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT_FRACTIONS = (0.75, 0.125, 0.125)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
TABLE_SUFFIXES = {".parquet", ".arrow"}
# The photo folder names of both releases; either caption file is read with any of them.
FLICKR8K_PHOTO_FOLDERS = ("images", "Images", "Flicker8k_Dataset", "Flickr8k_Dataset")
# The original release's split lists, for either folder layout.
SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "validation": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
PHOTO_FEATURES = datasets.Features(
    {
        "image_id": datasets.Value("string"),
        "image": datasets.Image(),
        "captions": datasets.Sequence(datasets.Value("string")),
    }
)
# Your own data: the column names a table, an imagefolder's metadata or a hub data set gets by default.
IMAGE_COLUMNS = ("image", "file_name")
CAPTION_COLUMNS = ("text", "caption", "captions")
LABEL_COLUMNS = ("labels",)
ID_COLUMNS = ("image_id", "filename", "file_name", "image_filename")
CAPTION_TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None}
LABEL_SEPARATORS = ("|", ";", ",")
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
# Split folder (imagefolder) and split value (Karpathy) names -> our split names.
SPLIT_NAMES = {
    "train": "train", "training": "train", "restval": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "test": "test", "testing": "test", "eval": "test",
}
# Where Karpathy's JSON files usually have their photos, beside the JSON (Flickr8k, Flickr30k, COCO).
KARPATHY_PHOTO_FOLDERS = (*FLICKR8K_PHOTO_FOLDERS, "flickr30k-images", "flickr30k_images", ".")
PHOTO_ROWS_VERSION = 1  # bump when the photo rows written under cache_root()/photos change
BATCH_ROWS = 10_000


class DataWarning(UserWarning):
    """Some rows of a data set were unusable and were skipped (the message counts them)."""


@dataclass(frozen=True)
class DataSource:
    """A data set and how to read it: ``train.py --dataset`` and the options beside it.

    ``str(source)`` is ``path``, so a DataSource goes wherever a data set's name goes.

    Attributes:
        path: ``"sample"``, a folder or file in a layout of :data:`LAYOUTS`, or a hub data set id.
        image_column, caption_column, label_column: the columns of a table, an imagefolder's metadata or a hub data
            set that hold the photo, its caption(s) and its labels (default: :data:`IMAGE_COLUMNS`,
            :data:`CAPTION_COLUMNS`, :data:`LABEL_COLUMNS`, whichever the data has).
        image_dir: the folder that relative photo paths start from (default: beside the table or JSON file).
    """

    path: str
    image_column: str | None = None
    caption_column: str | None = None
    label_column: str | None = None
    image_dir: str | None = None

    def __str__(self) -> str:
        return str(self.path)

    def given_options(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if f.name != "path" and getattr(self, f.name)]


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


class Layout(NamedTuple):
    """One way a data set can lie on disk: ``detect(path)`` recognises it, ``read(path, source)`` loads it.

    ``read`` returns :class:`FoundPhotos` or :class:`CaptionRows` (then checked, split and counted here), or finished
    photo rows. ``options`` names the :class:`DataSource` options the layout reads (others are a mistake).
    """

    description: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, DataSource], FoundPhotos | CaptionRows | datasets.DatasetDict]
    options: tuple[str, ...] = ()


def load_photos(
    source: str | os.PathLike | DataSource = "sample",
    *,
    seed: int = 0,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    image_column: str | None = None,
    caption_column: str | None = None,
    label_column: str | None = None,
    image_dir: str | os.PathLike | None = None,
) -> datasets.DatasetDict:
    """Load a captioned (or labelled) photo collection as photo rows split by photo.

    Args:
        source: ``"sample"`` (the built-in synthetic data set), a path in one of the layouts of :data:`LAYOUTS`
            (the first that recognises it is used: Flickr8k folders, a Karpathy split JSON, COCO caption files,
            an imagefolder with metadata, parquet files, a CSV/TSV or JSON Lines table), a hub data set id, or a
            :class:`DataSource` that also carries the options below.
        seed: seeds the train/validation/test split when the source has no split of its own.
        split_fractions: train/validation/test fractions of photos for that seeded split.
        image_column, caption_column, label_column, image_dir: see :class:`DataSource`.

    Returns:
        ``DatasetDict`` with ``train``, ``validation`` and ``test`` splits of rows ``image_id`` (str),
        ``image`` (``datasets.Image``, decoded lazily), ``captions`` (list of str) and, when the source gives
        them, ``labels`` (list of label names). No photo is in two splits.
    """
    options = {"image_column": image_column, "caption_column": caption_column, "label_column": label_column,
               "image_dir": str(image_dir) if image_dir is not None else None}
    if not isinstance(source, DataSource):
        source = DataSource(str(source))
    source = dataclasses.replace(source, **{k: v for k, v in options.items() if v is not None})
    if source.path == "sample":
        path = sample_folder(seed=seed)
    else:
        path = Path(source.path).expanduser()
        if not path.exists():
            check_source(source)
            found = _read_hub(source.path, source)
            if isinstance(found, datasets.DatasetDict):
                return found
            return _caption_photo_rows(found, seed, split_fractions)
    found = _detect_layout(path, source).read(path, source)
    if isinstance(found, datasets.DatasetDict):
        return found
    if isinstance(found, CaptionRows):
        return _caption_photo_rows(found, seed, split_fractions)
    return _photo_rows(path, found, seed, split_fractions)


load_flickr8k = load_photos  # its first name, when Flickr8k was the only data set it read


def looks_like_hub_id(source: str) -> bool:
    """``owner/name`` that is not an existing local path."""
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~"))


def check_source(source: str | os.PathLike | DataSource) -> None:
    """Raise at once when ``source`` is neither ``"sample"``, an existing path nor a hub id (nothing is loaded)."""
    source = str(source)
    if source == "sample" or Path(source).expanduser().exists() or looks_like_hub_id(source):
        return
    raise MMClassifierError(
        f"Data set {Path(source).expanduser()} does not exist. Pass an existing folder or file, a hub id such as "
        "'jxie/flickr8k', or 'sample' for the built-in data set."
    )


def _detect_layout(path: Path, source: DataSource) -> Layout:
    """The first layout of LAYOUTS that recognises ``path``; it must read every option given."""
    layout = next((layout for layout in LAYOUTS if layout.detect(path)), None)
    if layout is None and path.is_file():
        raise MMClassifierError(
            f"{path} is a file; pass the folder that contains it, or a table ({', '.join(CAPTION_TABLE_SUFFIXES)}), "
            "a Karpathy split JSON (dataset_*.json) or a COCO captions JSON (captions_*.json)."
        )
    if layout is None:
        looked_for = "; ".join(layout.description for layout in LAYOUTS)
        raise MMClassifierError(
            f"{path} holds no data set: looked for: {looked_for}. Pass one of those, a hub id, or 'sample'."
        )
    unread = [name for name in source.given_options() if name not in layout.options]
    if unread:
        flags = ", ".join("--" + name.replace("_", "-") for name in unread)
        raise MMClassifierError(f"{path} is a {layout.description}, which has no use for {flags}.")
    return layout


# ---------------------------------------------------------------------------------------------- layouts


def _has_file(name: str) -> Callable[[Path], bool]:
    """Detect a layout by a file it always has."""
    return lambda path: (path / name).is_file()


def _holds_table_files(path: Path) -> bool:
    return path.is_dir() and any(p.suffix in TABLE_SUFFIXES for p in path.rglob("*"))


def _read_kaggle(folder: Path, source: DataSource) -> FoundPhotos:
    """Kaggle layout: ``captions.txt`` (``image,caption`` CSV with a header) next to ``images/``."""
    return _read_flickr8k_folder(folder, "captions.txt", _read_kaggle_captions)


def _read_original(folder: Path, source: DataSource) -> FoundPhotos:
    """Original release: ``Flickr8k.token.txt`` (``NAME.jpg#N<TAB>caption``) next to ``Flicker8k_Dataset/``."""
    return _read_flickr8k_folder(folder, "Flickr8k.token.txt", _read_token_captions)


def _read_table_files(folder: Path, source: DataSource) -> datasets.DatasetDict | CaptionRows:
    """Parquet/arrow files with a hub data set's columns (a downloaded copy of one, say)."""
    return _read_hub(str(folder), source)




def _read_flickr8k_folder(
    folder: Path, caption_name: str, read_captions: Callable[[Path, Counter], dict[str, list[str]]]
) -> FoundPhotos:
    """Either Flickr8k release: a caption file, a photo folder and, when all three are there, the split lists."""
    photo_folder = next((folder / name for name in FLICKR8K_PHOTO_FOLDERS if (folder / name).is_dir()), None)
    if photo_folder is None:
        looked_for = ", ".join(f"{name}/" for name in FLICKR8K_PHOTO_FOLDERS)
        raise MMClassifierError(f"{folder} has {caption_name} but no photo folder: looked for {looked_for} inside it.")
    skipped: Counter = Counter()
    captions = read_captions(folder / caption_name, skipped)
    images = {p.name: p for p in photo_folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    splits = None
    if all((folder / name).is_file() for name in SPLIT_FILES.values()):
        splits = {split: SplitList(name, (folder / name).read_text().split()) for split, name in SPLIT_FILES.items()}
    return FoundPhotos(captions, images, caption_name, f"{photo_folder.name}/", skipped, splits)


def _read_kaggle_captions(path: Path, skipped: Counter) -> dict[str, list[str]]:
    """``image,caption`` CSV with a header; captions may hold quoted commas."""
    captions: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.reader(f):
            if not row or row == ["image", "caption"]:
                continue
            if len(row) < 2 or not row[0].strip():
                skipped["malformed caption line"] += 1
                continue
            # An unquoted comma inside a caption splits it; the name is the first field either way.
            name, caption = row[0].strip(), ",".join(row[1:]).strip()
            if not caption:
                skipped["empty caption"] += 1
                continue
            captions[name].append(caption)
    return captions


def _read_token_captions(path: Path, skipped: Counter) -> dict[str, list[str]]:
    """Original ``NAME.jpg#N<TAB>caption`` lines."""
    captions: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            key, tab, caption = line.rstrip("\n").partition("\t")
            name, hash_, number = key.partition("#")
            if not tab or not hash_ or not number.strip().isdigit() or not caption.strip():
                skipped["malformed caption line"] += 1
                continue
            captions[name.strip()].append(caption.strip())
    return captions


# ---------------------------------------------------------------------------------------------- your own layouts


def _karpathy_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.name.startswith("dataset_") and path.suffix == ".json" else []
    return sorted(path.glob("dataset_*.json")) if path.is_dir() else []


def _read_karpathy(path: Path, source: DataSource) -> CaptionRows:
    """Karpathy's split JSON: ``images[]`` with ``filename``, optional ``filepath``, ``split``, ``sentences[].raw``."""
    file = _one_file(_karpathy_files(path), "Karpathy split JSONs")
    images = _struct_fields(_json_records(_json_table(file), "images", file), ("filename", "split", "sentences"), file)
    sentences = images["sentences"]
    raw = _struct_fields(sentences.values, ("raw",), file)["raw"]
    captions = pa.ListArray.from_arrays(sentences.offsets, raw)
    # A photo lies at filepath/filename or at filename, in one of the usual folders beside the JSON.
    places = [images["filename"]]
    if "filepath" in images:
        joined = pc.binary_join_element_wise(images["filepath"], images["filename"], "/")
        places.insert(0, pc.coalesce(joined, images["filename"]))
    roots = [file.parent / folder for folder in KARPATHY_PHOTO_FOLDERS]
    roots = [Path(source.image_dir).expanduser()] if source.image_dir else roots
    root, paths = _find_photos(roots, places, file)
    table = pa.table({"image": paths, "image_id": images["filename"], "captions": captions})
    rows = CaptionRows(file.name, {}, "image", "captions", image_id="image_id")
    split_of = pc.fill_null(images["split"], "")
    for split in SPLITS:  # restval (COCO's extra training photos) joins train, as in Karpathy's own training
        mask = pc.is_in(split_of, value_set=pa.array([k for k, v in SPLIT_NAMES.items() if v == split]))
        if _count(mask):
            rows.splits[split] = _rows_dataset(table.filter(mask), file, source, split, root)
            rows.image_roots[split] = root
    rows.skipped["photo in no split"] += len(table) - sum(len(ds) for ds in rows.splits.values())
    return rows


def _coco_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.name.startswith("captions_") and path.suffix == ".json" else []
    if not path.is_dir():
        return []
    return sorted([*path.glob("captions_*.json"), *(path / "annotations").glob("captions_*.json")])


def _read_coco(path: Path, source: DataSource) -> CaptionRows:
    """COCO caption files (``captions_train2017.json``, ...): ``images[]`` (``id``, ``file_name``) and
    ``annotations[]`` (``image_id``, ``caption``); photos in the folder named like the file (``train2017/``)."""
    rows = CaptionRows(path.name, {}, "image", "captions")
    for split, file in _coco_splits(_coco_files(path)).items():
        parsed = _json_table(file)
        images = _struct_fields(_json_records(parsed, "images", file), ("id", "file_name"), file)
        notes = _struct_fields(_json_records(parsed, "annotations", file), ("image_id", "caption"), file)
        del parsed
        photo = pc.index_in(notes["image_id"], value_set=images["id"])  # each caption's photo; null: no such photo
        known = pc.is_valid(photo)
        rows.skipped["captions for a missing photo"] += pc.count_distinct(
            pc.filter(notes["image_id"], pc.invert(known))).as_py()
        photo = pc.filter(photo, known).to_numpy()
        counts = np.bincount(photo, minlength=len(images["id"]))  # captions per photo, in the order of images[]
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        captions = pa.ListArray.from_arrays(offsets, pc.take(pc.filter(notes["caption"], known),
                                                             np.argsort(photo, kind="stable")))
        rows.skipped["photo without captions"] += int((counts == 0).sum())
        root, paths = _find_photos(_coco_photo_folders(file, source), [images["file_name"]], file)
        table = pa.table({"image": paths, "captions": captions}).filter(pa.array(counts > 0))
        rows.splits[split] = _rows_dataset(table, file, source, root)
        rows.image_roots[split] = root
    return rows


def _coco_splits(files: list[Path]) -> dict[str, Path]:
    """The caption file of each split: ``captions_train*``, ``captions_val*`` (validation), ``captions_test*``."""
    by_split: dict[str, list[Path]] = defaultdict(list)
    for file in files:
        stem = file.stem.removeprefix("captions_")
        by_split[next((s for p, s in (("train", "train"), ("val", "validation"), ("test", "test")) if
                       stem.startswith(p)), stem)].append(file)
    for split, found in by_split.items():
        if len(found) > 1:
            raise MMClassifierError(f"Several COCO caption files for {split}: {', '.join(map(str, found))}. Pass the "
                                    "one to use as --dataset FILE.")
    return {split: found[0] for split, found in by_split.items()}


def _coco_photo_folders(file: Path, source: DataSource) -> list[Path]:
    if source.image_dir:
        return [Path(source.image_dir).expanduser()]
    base = file.parent.parent if file.parent.name == "annotations" else file.parent
    stem = file.stem.removeprefix("captions_")
    return [base / stem, base / "images" / stem, base / "images", base]


def _metadata_files(path: Path) -> dict[str, Path]:
    """An imagefolder's metadata file by split: in the folder itself (no own split), else in its split folders."""
    if not path.is_dir():
        return {}
    flat = next((path / name for name in METADATA_FILES if (path / name).is_file()), None)
    if flat is not None:
        return {"train": flat}
    found: dict[str, Path] = {}
    for folder in sorted(p for p in path.iterdir() if p.name.lower() in SPLIT_NAMES and p.is_dir()):
        file = next((folder / name for name in METADATA_FILES if (folder / name).is_file()), None)
        if file is not None:
            found.setdefault(SPLIT_NAMES[folder.name.lower()], file)
    return found


def _read_imagefolder(path: Path, source: DataSource) -> CaptionRows:
    """A Hugging Face imagefolder: photos with ``metadata.jsonl`` / ``metadata.csv`` (``file_name``, a caption column,
    optionally ``labels``), loaded with ``datasets.load_dataset("imagefolder")``; split folders when present."""
    files = _metadata_files(path)
    roots = {split: Path(os.path.abspath(file.parent)) for split, file in files.items()}  # as datasets writes paths
    try:
        loaded = datasets.load_dataset("imagefolder", data_files={split: str(f) for split, f in files.items()})
    except (pa.ArrowException, ValueError, datasets.exceptions.DatasetGenerationError) as err:
        if any(f.suffix == ".parquet" for f in files.values()):
            raise MMClassifierError(f"Could not read the metadata of {path}: {err}") from err
        # datasets stops at a malformed metadata line; the table reader skips and counts it.
        logger.info("datasets could not read %s (%s); reading its metadata line by line", path, err)
        rows = CaptionRows(path.name, {}, "image", "captions", image_roots=roots)
        for split, file in files.items():
            rows.splits[split] = _rows_dataset(_read_table_file(file, source, rows.skipped), file, source)
        rows.labels = "labels" if "labels" in next(iter(rows.splits.values())).column_names else None
        return rows
    columns = _caption_columns(next(iter(loaded.values())).column_names, source, f"The metadata of {path}", "image")
    return CaptionRows(path.name, dict(loaded), "image", columns.captions, columns.labels, image_roots=roots)


def _caption_table_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix.lower() in CAPTION_TABLE_SUFFIXES else []
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.suffix.lower() in CAPTION_TABLE_SUFFIXES and p.is_file())


def _read_caption_table(path: Path, source: DataSource) -> CaptionRows:
    """A CSV/TSV or JSON Lines table: a row per photo (or per caption) with the photo's path (relative to the table,
    or to ``image_dir``), its caption(s) and optionally its labels."""
    file = _one_file(_caption_table_files(path), "tables")
    root = Path(source.image_dir).expanduser() if source.image_dir else file.parent
    skipped: Counter = Counter()
    table = _read_table_file(file, source, skipped)
    labels = "labels" if "labels" in table.column_names else None
    return CaptionRows(file.name, {"train": _rows_dataset(table, file, source)}, "image", "captions", labels,
                       image_roots={"train": root}, skipped=skipped)


# Tried in order; the first layout whose detect() accepts the path reads it.
_COLUMNS_AND_FOLDER = ("image_column", "caption_column", "label_column", "image_dir")
LAYOUTS: tuple[Layout, ...] = (
    Layout("Kaggle layout (captions.txt + photos)", _has_file("captions.txt"), _read_kaggle),
    Layout("original layout (Flickr8k.token.txt + photos)", _has_file("Flickr8k.token.txt"), _read_original),
    Layout("Karpathy split JSON (dataset_*.json + photos)", lambda p: bool(_karpathy_files(p)), _read_karpathy,
           ("image_dir",)),
    Layout("COCO captions (captions_*.json + photo folders)", lambda p: bool(_coco_files(p)), _read_coco,
           ("image_dir",)),
    Layout("imagefolder (photos + metadata.jsonl or metadata.csv)", lambda p: bool(_metadata_files(p)),
           _read_imagefolder, ("caption_column", "label_column")),
    Layout("parquet/arrow files (image, caption_0 .. caption_4, or named columns)", _holds_table_files,
           _read_table_files, _COLUMNS_AND_FOLDER),
    Layout("CSV/TSV or JSON Lines table (image, text, labels)", lambda p: bool(_caption_table_files(p)),
           _read_caption_table, _COLUMNS_AND_FOLDER),
)


# ---------------------------------------------------------------------------------------------- reading files


def _one_file(files: list[Path], what: str) -> Path:
    if len(files) > 1:
        raise MMClassifierError(f"Found several {what}: {', '.join(map(str, files))}. Pass the one to use as "
                                "--dataset FILE.")
    return files[0]


def _json_table(file: Path) -> pa.Table:
    """A JSON file (one object, pretty-printed or not) parsed by Arrow into columns, not a Python object a record."""
    options = pa_json.ReadOptions(block_size=max(file.stat().st_size + 1, 1 << 20))
    try:
        parse = pa_json.ParseOptions(newlines_in_values=True)  # pretty-printed files too
        return pa_json.read_json(file, read_options=options, parse_options=parse)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise MMClassifierError(f"{file} is not a JSON file that can be read: {err}") from None


def _json_records(table: pa.Table, key: str, file: Path) -> pa.StructArray:
    """The records of the list under top-level ``key``."""
    kind = table.schema.field(key).type if key in table.column_names else None
    if kind is None or not pa.types.is_list(kind) or not pa.types.is_struct(kind.value_type):
        raise MMClassifierError(f"{file} has no list of records under {key!r}.")
    return table.column(key).combine_chunks().flatten()


def _struct_fields(records: pa.StructArray, required: Sequence[str], file: Path) -> dict[str, pa.Array]:
    fields = {records.type.field(i).name: column for i, column in enumerate(records.flatten())}
    missing = [name for name in required if name not in fields]
    if missing:
        raise MMClassifierError(f"{file}: the records have no {', '.join(missing)} (they have {sorted(fields)}).")
    return fields


def _find_photos(roots: Sequence[Path], places: Sequence[pa.Array], file: Path) -> tuple[Path, pa.Array]:
    """The first folder (and way of naming photos) under which some of the first photos exist."""
    for root in roots:
        for paths in places:
            if any(p and (root / p).is_file() for p in paths.slice(0, 50).to_pylist()):
                return root, paths
    first = places[0][0].as_py() if len(places[0]) else None
    raise MMClassifierError(f"No photo of {file.name} found (the first is {first!r}): looked in "
                            f"{', '.join(map(str, roots))}. Pass the photo folder with --image-dir.")


def _read_table_file(file: Path, source: DataSource, skipped: Counter) -> pa.Table:
    """A CSV/TSV or JSON Lines table -> columns ``image`` (path), ``captions`` and ``labels`` (when it has them),
    built a chunk of rows at a time; malformed lines are counted in ``skipped``."""
    delimiter = CAPTION_TABLE_SUFFIXES.get(file.suffix.lower(), ",")
    records = _json_lines(file, skipped) if file.suffix.lower() == ".jsonl" else _csv_records(file, delimiter, skipped)
    first = next(records, None)
    if first is None:
        raise MMClassifierError(f"{file} has no rows.")
    columns = _caption_columns(list(first), source, str(file))
    schema = pa.schema([("image", pa.string()), ("captions", pa.list_(pa.string()))]
                       + ([("labels", pa.list_(pa.string()))] if columns.labels else []))
    batches = []
    for chunk in _chunks(itertools.chain([first], records), BATCH_ROWS):
        data = {"image": [_text_or_none(r.get(columns.image)) for r in chunk],
                "captions": [_text_list(r.get(columns.captions)) for r in chunk]}
        if columns.labels:
            data["labels"] = [_label_list(r.get(columns.labels)) for r in chunk]
        batches.append(pa.RecordBatch.from_pydict(data, schema=schema))
    return pa.Table.from_batches(batches, schema=schema)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _csv_records(file: Path, delimiter: str, skipped: Counter) -> Iterator[dict]:
    with open(file, encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.DictReader(f, delimiter=delimiter):
            if None in row or None in row.values():  # more fields than the header, or fewer
                skipped["malformed line"] += 1
                continue
            yield row


def _json_lines(file: Path, skipped: Counter) -> Iterator[dict]:
    with open(file, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                skipped["malformed line"] += 1
                continue
            yield record


class _Columns(NamedTuple):
    image: str
    captions: str
    labels: str | None


def _caption_columns(names: Sequence[str], source: DataSource, where: str, image: str | None = None) -> _Columns:
    """The photo, caption and label columns: those the options name, else the first default the data has."""

    def pick(option: str | None, defaults: Sequence[str], flag: str) -> str | None:
        if option and option not in names:
            raise MMClassifierError(f"{where} has no column {option!r} ({flag}); its columns are {list(names)}.")
        return option or next((name for name in defaults if name in names), None)

    image = image or pick(source.image_column, IMAGE_COLUMNS, "--image-column")
    captions = pick(source.caption_column, CAPTION_COLUMNS, "--caption-column")
    labels = pick(source.label_column, LABEL_COLUMNS, "--label-column")
    for found, defaults, flag in ((image, IMAGE_COLUMNS, "--image-column"), (captions, CAPTION_COLUMNS,
                                                                            "--caption-column")):
        if found is None:
            raise MMClassifierError(f"{where} has columns {list(names)}, none of them {' or '.join(defaults)}; name "
                                    f"the right one with {flag}.")
    return _Columns(image, captions, labels)


def _text_or_none(value) -> str | None:
    return None if value is None or value == "" else str(value)


def _text_list(value) -> list[str]:
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


def _label_list(value) -> list[str] | None:
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


def _photo_rows(source: Path, found: FoundPhotos, seed: int, split_fractions: Sequence[float]) -> datasets.DatasetDict:
    """Keep the photos with captions and a readable image, split them by photo, and warn once about the rest."""
    skipped = found.skipped
    usable = _usable_photos(found, skipped)
    if not usable:
        raise MMClassifierError(
            f"No usable photo in {source}: {found.captions_from} names {len(found.captions)} photos and "
            f"{found.images_from} holds {len(found.images)} image files, but no photo has both a caption and a "
            f"readable image ({_describe(skipped) or 'nothing to skip'})."
        )
    if found.splits is not None:
        split_names = _listed_split(found.splits, set(usable), skipped)
    else:
        split_names = _seeded_split(sorted(usable), seed, split_fractions)
    _warn_skipped(source, skipped)
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
        elif not _readable(found.images[name]):
            skipped["unreadable or corrupt photo"] += 1
        else:
            usable[name] = found.images[name]
    skipped["photo without captions"] += len(set(found.images) - set(found.captions))
    return usable


def _readable(path: Path) -> bool:
    """Decode at reduced size (JPEG draft: ~0.5 ms) to catch corrupt, truncated and non-image files."""
    try:
        with PILImage.open(path) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
            return image.width > 0 and image.height > 0
    except (OSError, SyntaxError, ValueError, PILImage.DecompressionBombError):
        return False


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


def _describe(skipped: Counter) -> str:
    return ", ".join(f"{count} {what}" for what, count in sorted(skipped.items()) if count)


def _warn_skipped(source: object, skipped: Counter) -> None:
    # stacklevel 4: the warning points at the caller of load_photos, the line a user can act on.
    if any(skipped.values()):
        warnings.warn(f"{source}: skipped {_describe(skipped)}.", DataWarning, stacklevel=4)


# ---------------------------------------------------------------------------------------------- rows -> photo rows


def _caption_photo_rows(rows: CaptionRows, seed: int, split_fractions: Sequence[float]) -> datasets.DatasetDict:
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
        skipped["photo in two splits"] += _count(repeated)
        table = table.filter(pc.invert(repeated))
        seen = pa.concat_arrays([seen, pc.filter(photo, pc.invert(repeated)).combine_chunks()])
        found[split] = _check_photos(rows, split, table, skipped)
    if not any(len(table) for table in found.values()):
        raise MMClassifierError(
            f"No usable photo in {rows.source}: no row has both a caption and a readable photo "
            f"({_describe(skipped) or 'it has no rows'})."
        )
    chosen = _assign_splits(rows.source, found, seed, split_fractions)
    _warn_skipped(rows.source, skipped)
    return datasets.DatasetDict(
        {split: _write_photo_rows(rows, source_split, split, table) for split, (source_split, table) in chosen.items()}
    )


def arrow_batches(ds: datasets.Dataset, columns: Sequence[str], batch_size: int = BATCH_ROWS) -> Iterator[pa.Table]:
    """``columns`` of ``ds`` as ``pyarrow.Table`` batches in row order: nothing decoded, memory-mapped data unread."""
    return ds.select_columns(list(columns)).with_format("arrow").iter(batch_size=batch_size)


def _count(mask) -> int:
    return int(pc.sum(mask).as_py() or 0)


def _rows_dataset(table: pa.Table, file: Path, *how) -> datasets.Dataset:
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
        captions, labels = _captions_of(caption_cell, skipped), _label_list(label_cell)
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
    texts = _text_list(cell)
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
        elif not _readable(image):
            skipped["unreadable or corrupt photo"] += 1
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


# ---------------------------------------------------------------------------------------------- hub


def _read_hub(name: str, source: DataSource) -> datasets.DatasetDict | CaptionRows:
    """A hub data set (or a local folder of parquet/arrow files): Flickr8k's columns ``image`` and ``caption_0`` ..
    ``caption_4``, or the photo, caption and label columns named by ``source`` (or found under their default names)."""
    loaded = _load_hub_dict(name)
    names = next(iter(loaded.values())).column_names
    if not source.given_options() and "image" in names and any(c.startswith("caption_") for c in names):
        return _load_hub(name, loaded)
    columns = _caption_columns(names, source, f"Data set {name!r}")
    id_column = next((c for c in ID_COLUMNS if c in names and c not in columns), None)
    splits: dict[str, datasets.Dataset] = {}
    for split, ds in loaded.items():
        if split.lower() in SPLIT_NAMES:
            splits.setdefault(SPLIT_NAMES[split.lower()], ds)
    ignored = [split for split in loaded if split.lower() not in SPLIT_NAMES]
    if ignored:
        logger.warning("Data set %r: splits %s are not train, validation or test; they are left out.", name, ignored)
    root = Path(source.image_dir).expanduser() if source.image_dir else Path(name) if Path(name).is_dir() else None
    return CaptionRows(name, splits, columns.image, columns.captions, columns.labels, id_column,
                       {split: root for split in splits} if root else {})


def _load_hub(source: str, loaded: datasets.DatasetDict | None = None) -> datasets.DatasetDict:
    """A hub id (or a local folder of parquet/arrow files with the same columns) via ``load_dataset``."""
    loaded = _load_hub_splits(source, loaded)
    out = {}
    # Keep to_photo_rows and the filter's lambda where and as they are: datasets hashes a function's code (qualified
    # name and column offsets included) into the fingerprints that name the cached pixels and features of hub data.
    for split in SPLITS:
        ds = loaded[split]
        caption_columns = sorted(c for c in ds.column_names if c.startswith("caption_"))
        if "image" not in ds.column_names or not caption_columns:
            raise MMClassifierError(
                f"Data set {source!r} split {split!r} has columns {ds.column_names}; expected 'image' and "
                "'caption_0' .. 'caption_4'."
            )
        id_column = next(
            (c for c in ("image_id", "filename", "file_name", "image_filename") if c in ds.column_names), None
        )
        ds = ds.cast_column("image", datasets.Image(decode=False))

        def to_photo_rows(batch, indices, split=split, id_column=id_column, caption_columns=caption_columns):
            captions = [
                [c.strip() for c in row if isinstance(c, str) and c.strip()]
                for row in zip(*(batch[c] for c in caption_columns))
            ]
            ids = batch[id_column] if id_column else [f"{split}-{i:05d}" for i in indices]
            return {"image_id": [str(i) for i in ids], "image": batch["image"], "captions": captions}

        ds = ds.map(to_photo_rows, batched=True, with_indices=True, remove_columns=ds.column_names)
        ds = ds.filter(lambda row: len(row["captions"]) > 0)
        out[split] = ds.cast(PHOTO_FEATURES)
    return datasets.DatasetDict(out)


def _load_hub_splits(source: str, loaded: datasets.DatasetDict | None = None) -> datasets.DatasetDict:
    """``load_dataset(source)`` with its train, validation and test splits, or a clear error saying why not."""
    loaded = _load_hub_dict(source) if loaded is None else loaded
    missing_splits = [s for s in SPLITS if s not in loaded]
    if missing_splits:
        raise MMClassifierError(f"Data set {source!r} has splits {list(loaded)}; expected {list(SPLITS)}.")
    return loaded


def _load_hub_dict(source: str) -> datasets.DatasetDict:
    """``load_dataset(source)`` as a ``DatasetDict`` (one split is ``train``), or a clear error saying why not."""
    try:
        loaded = datasets.load_dataset(source)
    except Exception as err:  # network, auth, missing repo: all mean "cannot use this source"
        offline = datasets.config.HF_HUB_OFFLINE
        hint = (
            "HF_HUB_OFFLINE is set and the data set is not in the local cache"
            if offline
            else "check the id and your internet connection"
        )
        raise MMClassifierError(
            f"Could not load data set {source!r} with datasets.load_dataset ({hint}): {type(err).__name__}: {err}. "
            "Offline, use a local copy (a folder or file) or 'sample'."
        ) from err
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


# ---------------------------------------------------------------------------------------------- pairs


def to_pairs(
    photos: datasets.DatasetDict | datasets.Dataset,
    concepts: Sequence[str] | None = None,
    *,
    min_votes: int = DEFAULT_MIN_VOTES,
    num_concepts: int = DEFAULT_NUM_CONCEPTS,
    lexicon: Mapping[str, Sequence[str]] | None = None,
) -> datasets.DatasetDict | datasets.Dataset:
    """Turn photo rows into (photo, one caption) rows labelled with concepts.

    Photos with given labels (a ``labels`` column) keep them: every caption of a photo makes a pair labelled with
    the photo's labels (see :func:`given_label_pairs`). Otherwise labels are mined leave-one-out: pair ``i`` of a
    photo reads caption ``i``, and its ``labels`` are the concepts that at least ``min_votes`` of the photo's
    *other* captions mention, so a caption never decides its own label.

    Args:
        photos: photo rows from :func:`load_photos` (a ``DatasetDict`` or one split).
        concepts: concept names, in label order. ``None`` mines the ``num_concepts`` most frequent concepts
            of ``lexicon`` from the training split (from ``photos`` itself when it is a single split); for given
            labels, ``None`` takes every label of the training split.
        lexicon: concept -> words (default: the built-in lexicon; see ``labels.load_concept_file``).

    Returns:
        The same kind of object with rows ``image_id``, ``image``, ``caption``, ``labels``, where
        ``features["labels"]`` is ``Sequence(ClassLabel(names=concepts))``.
    """
    if "labels" in _reference_split(photos).column_names:
        return given_label_pairs(photos, concepts)
    _require_several_captions(photos)
    lexicon = validate_lexicon(dict(lexicon), "lexicon") if lexicon is not None else CONCEPT_LEXICON
    concepts = _pair_concepts(photos, concepts, min_votes, num_concepts, lexicon)
    features = datasets.Features(
        {
            "image_id": datasets.Value("string"),
            "image": datasets.Image(decode=False),
            "caption": datasets.Value("string"),
            "labels": datasets.Sequence(datasets.ClassLabel(names=concepts)),
        }
    )

    def expand(batch):
        out = {"image_id": [], "image": [], "caption": [], "labels": []}
        for image_id, image, captions in zip(batch["image_id"], batch["image"], batch["captions"]):
            votes = leave_one_out_votes(captions, concepts, lexicon)
            for caption, labels in zip(captions, labels_from_votes(votes, min_votes)):
                out["image_id"].append(image_id)
                out["image"].append(image)
                out["caption"].append(caption)
                out["labels"].append(labels)
        return out

    def convert(split: datasets.Dataset) -> datasets.Dataset:
        undecoded = split.cast_column("image", datasets.Image(decode=False))
        pairs = undecoded.map(expand, batched=True, remove_columns=split.column_names, features=features)
        return pairs.cast_column("image", datasets.Image())

    if isinstance(photos, datasets.DatasetDict):
        return datasets.DatasetDict({name: convert(split) for name, split in photos.items()})
    return convert(photos)


def _pair_concepts(
    photos: datasets.DatasetDict | datasets.Dataset,
    concepts: Sequence[str] | None,
    min_votes: int,
    num_concepts: int,
    lexicon: Mapping[str, Sequence[str]],
) -> list[str]:
    """The given concepts, checked against the lexicon, or those mined from the training captions."""
    if concepts is None:
        reference = _reference_split(photos)
        concepts = [c for c, _ in mine_concepts(caption_lists(reference), num_concepts, min_votes, lexicon)]
        if not concepts:
            raise MMClassifierError("No concept of the lexicon is mentioned by enough captions to be used.")
    concepts = list(concepts)
    unknown = [c for c in concepts if c not in lexicon]
    if unknown:
        raise MMClassifierError(
            f"Unknown concepts {unknown}: they are not in the lexicon. Add them to a concept file "
            "(JSON: concept -> list of words)."
        )
    if len(set(concepts)) != len(concepts):
        raise MMClassifierError(f"Concept names must be unique, got {concepts}.")
    return concepts


def _reference_split(photos: datasets.DatasetDict | datasets.Dataset) -> datasets.Dataset:
    """The split that concepts and label sets come from: the training split, or the one split given."""
    return photos["train"] if isinstance(photos, datasets.DatasetDict) else photos


def caption_lists(photos: datasets.Dataset) -> Iterator[list[str]]:
    """Each photo's captions, read from Arrow a batch at a time (the whole column is never one Python list)."""
    for batch in arrow_batches(photos, ["captions"]):
        yield from batch["captions"].to_pylist()


def _require_several_captions(photos: datasets.DatasetDict | datasets.Dataset) -> None:
    """Leave-one-out labels come from a photo's other captions, so a data set of single captions has none."""
    most = 0
    for split in photos.values() if isinstance(photos, datasets.DatasetDict) else [photos]:
        for batch in arrow_batches(split, ["captions"]):
            most = max(most, pc.max(pc.list_value_length(batch["captions"])).as_py() or 0)
            if most > 1:
                return
    if most == 1:
        raise MMClassifierError(
            "Every photo has a single caption, and concepts are mined from a photo's other captions (leave-one-out), "
            "so that needs at least two captions per photo. Give the photos' labels instead: a labels column, named "
            "with --label-column."
        )


def given_label_pairs(
    photos: datasets.DatasetDict | datasets.Dataset, concepts: Sequence[str] | None = None
) -> datasets.DatasetDict | datasets.Dataset:
    """(photo, one caption) rows labelled with their photo's given labels (no leave-one-out: no caption decides a
    label). Labels outside ``concepts`` (default: every label of the training split) are dropped and reported."""
    if concepts is None:
        concepts = [name for name, _ in label_counts(_reference_split(photos))]
        if not concepts:
            raise MMClassifierError("No training photo has a label: the labels column holds only empty lists.")
    concepts = list(concepts)
    if len(set(concepts)) != len(concepts):
        raise MMClassifierError(f"Label names must be unique, got {concepts}.")
    position = {name: i for i, name in enumerate(concepts)}
    features = datasets.Features(
        {
            "image_id": datasets.Value("string"),
            "image": datasets.Image(decode=False),
            "caption": datasets.Value("string"),
            "labels": datasets.Sequence(datasets.ClassLabel(names=concepts)),
        }
    )

    def expand_given(batch):
        out = {"image_id": [], "image": [], "caption": [], "labels": []}
        photos = zip(batch["image_id"], batch["image"], batch["captions"], batch["labels"], strict=True)
        for image_id, image, captions, labels in photos:
            targets = sorted({position[name] for name in labels if name in position})
            for caption in captions:
                out["image_id"].append(image_id)
                out["image"].append(image)
                out["caption"].append(caption)
                out["labels"].append(targets)
        return out

    def convert(split: datasets.Dataset) -> datasets.Dataset:
        undecoded = split.cast_column("image", datasets.Image(decode=False))
        pairs = undecoded.map(expand_given, batched=True, remove_columns=split.column_names, features=features)
        return pairs.cast_column("image", datasets.Image())

    splits = photos if isinstance(photos, datasets.DatasetDict) else {str(photos.split or "the split"): photos}
    _warn_unknown_labels(splits, position)
    if isinstance(photos, datasets.DatasetDict):
        return datasets.DatasetDict({name: convert(split) for name, split in photos.items()})
    return convert(photos)


def label_counts(photos: datasets.Dataset) -> list[tuple[str, int]]:
    """``[(label, number of photos), ...]`` of given labels, most frequent first, ties broken by name."""
    counts: Counter = Counter()
    for batch in arrow_batches(photos, ["labels"]):
        for item in pc.value_counts(pc.list_flatten(batch["labels"])).to_pylist():
            counts[item["values"]] += item["counts"]
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _warn_unknown_labels(splits: Mapping[str, datasets.Dataset], known: Mapping[str, int]) -> None:
    """One warning that counts, per split, the labels of photos that are not in the label set (they are dropped)."""
    parts = []
    for name, split in splits.items():
        unknown = [(label, count) for label, count in label_counts(split) if label not in known]
        if unknown:
            listed = ", ".join(f"{label} ({count})" for label, count in unknown[:10])
            parts.append(f"{name}: {sum(c for _, c in unknown)} ({listed}{', ...' if len(unknown) > 10 else ''})")
    if parts:
        # stacklevel 4: the warning points at the caller of to_pairs.
        warnings.warn(f"Dropped the labels of photos that are not in the label set: {'; '.join(parts)}.", DataWarning,
                      stacklevel=4)


# ---------------------------------------------------------------------------------------------- CLI


def add_source_arguments(group) -> None:
    """The options that say how to read ``--dataset`` (shared by train.py, evaluation and this module's CLI)."""
    group.add_argument("--image-column", help="column with the photo (default: image or file_name)")
    group.add_argument("--caption-column", help="column with the caption(s) (default: text, caption or captions)")
    group.add_argument("--label-column", help="column with each photo's labels (default: labels, when there)")
    group.add_argument("--image-dir", help="folder that photo paths start from (default: beside the table or JSON)")


def source_from_args(args) -> DataSource:
    return DataSource(args.dataset, args.image_column, args.caption_column, args.label_column, args.image_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mm_classifier.data --dataset SRC``: split sizes and the concepts (mined or given), as Markdown."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m mm_classifier.data", description=main.__doc__)
    parser.add_argument("--dataset", default="sample", help="folder, file, hub id or 'sample' (default: %(default)s)")
    add_source_arguments(parser)
    parser.add_argument("--num-concepts", type=int, default=DEFAULT_NUM_CONCEPTS)
    parser.add_argument("--min-votes", type=int, default=DEFAULT_MIN_VOTES)
    args = parser.parse_args(argv)
    try:
        photos = load_photos(source_from_args(args))
        train = photos["train"]
        print(f"{args.dataset}: " + ", ".join(f"{name} {len(split)} photos" for name, split in photos.items()))
        if "labels" in train.column_names:
            print(f"\nLabels given for the {len(train)} training photos:\n")
            print("| # | label | training photos | share |\n|---:|---|---:|---:|")
            for rank, (label, count) in enumerate(label_counts(train), start=1):
                print(f"| {rank} | {label} | {count} | {count / len(train):.1%} |")
            return 0
        _require_several_captions(train)
    except MMClassifierError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"\nConcepts mined from the {len(train)} training photos (a photo has a concept when at least "
        f"{args.min_votes} of its captions name it):\n"
    )
    print("| # | concept | training photos | share | words |\n|---:|---|---:|---:|---|")
    mined = mine_concepts(caption_lists(train), args.num_concepts, args.min_votes)
    for rank, (concept, count) in enumerate(mined, start=1):
        words = ", ".join(w for w in CONCEPT_LEXICON[concept] if w != concept)
        print(f"| {rank} | {concept} | {count} | {count / len(train):.1%} | {words} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
