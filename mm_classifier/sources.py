"""Where a data set comes from: :class:`DataSource`, the layouts a folder or file can have, and their readers.

Each layout on disk is one reader plus one line of LAYOUTS, the detection table :func:`load_photos` tries in order.
A reader returns what it found (``photo_rows.FoundPhotos`` or ``photo_rows.CaptionRows``), which ``photo_rows``
checks, splits and writes as photo rows.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import MMClassifierError
from .photo_rows import (
    DEFAULT_SPLIT_FRACTIONS,
    PHOTO_FEATURES,
    SPLITS,
    CaptionRows,
    FoundPhotos,
    SplitList,
    caption_photo_rows,
    count_true,
    found_photo_rows,
    rows_dataset,
)
from .sample import BUILT_IN, built_in_path
from .table_files import (
    CAPTION_TABLE_SUFFIXES,
    caption_columns,
    find_photos,
    json_records,
    json_table,
    one_file,
    read_table_file,
    struct_fields,
)

logger = logging.getLogger(__name__)

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
# Your own data: the column names a table, an imagefolder's metadata or a hub data set gets by default.
ID_COLUMNS = ("image_id", "filename", "file_name", "image_filename")
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
# Split folder (imagefolder) and split value (Karpathy) names -> our split names.
SPLIT_NAMES = {
    "train": "train", "training": "train", "restval": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "test": "test", "testing": "test", "eval": "test",
}
# Where Karpathy's JSON files usually have their photos, beside the JSON (Flickr8k, Flickr30k, COCO).
KARPATHY_PHOTO_FOLDERS = (*FLICKR8K_PHOTO_FOLDERS, "flickr30k-images", "flickr30k_images", ".")


@dataclass(frozen=True)
class DataSource:
    """A data set and how to read it: ``train.py --dataset`` and the options beside it.

    ``str(source)`` is ``path``, so a DataSource goes wherever a data set's name goes.

    Attributes:
        path: ``"sample"``, a folder or file in a layout of :data:`LAYOUTS`, or a hub data set id.
        image_column, caption_column, label_column: the columns of a table, an imagefolder's metadata or a hub data
            set that hold the photo, its caption(s) and its labels (default: ``table_files``' ``IMAGE_COLUMNS``,
            ``CAPTION_COLUMNS``, ``LABEL_COLUMNS``, whichever the data has).
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
    if source.path in BUILT_IN:
        path = built_in_path(source.path, seed=seed)
    else:
        path = Path(source.path).expanduser()
        if not path.exists():
            check_source(source)
            found = _read_hub(source.path, source)
            if isinstance(found, datasets.DatasetDict):
                return found
            return caption_photo_rows(found, seed, split_fractions)
    found = _detect_layout(path, source).read(path, source)
    if isinstance(found, datasets.DatasetDict):
        return found
    if isinstance(found, CaptionRows):
        return caption_photo_rows(found, seed, split_fractions)
    return found_photo_rows(path, found, seed, split_fractions)


load_flickr8k = load_photos  # its first name, when Flickr8k was the only data set it read


def looks_like_hub_id(source: str) -> bool:
    """``owner/name`` that is not an existing local path."""
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~"))


def check_source(source: str | os.PathLike | DataSource) -> None:
    """Raise at once when ``source`` is neither ``"sample"``, an existing path nor a hub id (nothing is loaded)."""
    source = str(source)
    if source in BUILT_IN or Path(source).expanduser().exists() or looks_like_hub_id(source):
        return
    raise MMClassifierError(
        f"Data set {Path(source).expanduser()} does not exist. Pass an existing folder or file, a hub id such as "
        "'jxie/flickr8k', or 'sample' for the built-in data set ('sample-grounds': its single-label version)."
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
    file = one_file(_karpathy_files(path), "Karpathy split JSONs")
    images = struct_fields(json_records(json_table(file), "images", file), ("filename", "split", "sentences"), file)
    sentences = images["sentences"]
    raw = struct_fields(sentences.values, ("raw",), file)["raw"]
    captions = pa.ListArray.from_arrays(sentences.offsets, raw)
    # A photo lies at filepath/filename or at filename, in one of the usual folders beside the JSON.
    places = [images["filename"]]
    if "filepath" in images:
        joined = pc.binary_join_element_wise(images["filepath"], images["filename"], "/")
        places.insert(0, pc.coalesce(joined, images["filename"]))
    roots = [file.parent / folder for folder in KARPATHY_PHOTO_FOLDERS]
    roots = [Path(source.image_dir).expanduser()] if source.image_dir else roots
    root, paths = find_photos(roots, places, file)
    table = pa.table({"image": paths, "image_id": images["filename"], "captions": captions})
    rows = CaptionRows(file.name, {}, "image", "captions", image_id="image_id")
    split_of = pc.fill_null(images["split"], "")
    for split in SPLITS:  # restval (COCO's extra training photos) joins train, as in Karpathy's own training
        mask = pc.is_in(split_of, value_set=pa.array([k for k, v in SPLIT_NAMES.items() if v == split]))
        if count_true(mask):
            rows.splits[split] = rows_dataset(table.filter(mask), file, source, split, root)
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
        parsed = json_table(file)
        images = struct_fields(json_records(parsed, "images", file), ("id", "file_name"), file)
        notes = struct_fields(json_records(parsed, "annotations", file), ("image_id", "caption"), file)
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
        root, paths = find_photos(_coco_photo_folders(file, source), [images["file_name"]], file)
        table = pa.table({"image": paths, "captions": captions}).filter(pa.array(counts > 0))
        rows.splits[split] = rows_dataset(table, file, source, root)
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
            rows.splits[split] = rows_dataset(read_table_file(file, source, rows.skipped), file, source)
        rows.labels = "labels" if "labels" in next(iter(rows.splits.values())).column_names else None
        return rows
    columns = caption_columns(next(iter(loaded.values())).column_names, source, f"The metadata of {path}", "image")
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
    file = one_file(_caption_table_files(path), "tables")
    root = Path(source.image_dir).expanduser() if source.image_dir else file.parent
    skipped: Counter = Counter()
    table = read_table_file(file, source, skipped)
    labels = "labels" if "labels" in table.column_names else None
    return CaptionRows(file.name, {"train": rows_dataset(table, file, source)}, "image", "captions", labels,
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


# ---------------------------------------------------------------------------------------------- hub


def _read_hub(name: str, source: DataSource) -> datasets.DatasetDict | CaptionRows:
    """A hub data set (or a local folder of parquet/arrow files): Flickr8k's columns ``image`` and ``caption_0`` ..
    ``caption_4``, or the photo, caption and label columns named by ``source`` (or found under their default names)."""
    loaded = _load_hub_dict(name)
    names = next(iter(loaded.values())).column_names
    if not source.given_options() and "image" in names and any(c.startswith("caption_") for c in names):
        return _load_hub(name, loaded)
    columns = caption_columns(names, source, f"Data set {name!r}")
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
    # datasets hashes to_photo_rows' and the filter's code (module, name and column offsets included) into the
    # fingerprints that name the cached pixels and features of hub data: editing or moving them rebuilds those once.
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
                for row in zip(*(batch[c] for c in caption_columns), strict=True)
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


