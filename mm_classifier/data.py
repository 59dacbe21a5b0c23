"""Data sources -> ``datasets.DatasetDict`` of photo rows, and their (photo, caption) pairs labelled leave-one-out.

Each layout on disk is one reader plus one line of LAYOUTS, the detection table :func:`load_flickr8k` tries in order.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import datasets
from PIL import Image as PILImage
from tqdm.auto import tqdm

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


class DataWarning(UserWarning):
    """Some rows of a data set were unusable and were skipped (the message counts them)."""


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


class Layout(NamedTuple):
    """One way a data set can lie on disk: ``detect(path)`` recognises it, ``read(path)`` loads it.

    ``read`` returns :class:`FoundPhotos` (then checked, split and counted here) or finished photo rows.
    """

    description: str
    detect: Callable[[Path], bool]
    read: Callable[[Path], FoundPhotos | datasets.DatasetDict]


def load_flickr8k(
    source: str | os.PathLike = "sample",
    *,
    seed: int = 0,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
) -> datasets.DatasetDict:
    """Load Flickr8k (or anything laid out like it) as photo rows split by photo.

    Args:
        source: ``"sample"`` (the built-in synthetic data set), a path in one of the layouts of :data:`LAYOUTS`
            (the first that recognises it is used), or a hub data set id with columns ``image`` and
            ``caption_0`` .. ``caption_4``.
        seed: seeds the train/validation/test split when the source has no split of its own.
        split_fractions: train/validation/test fractions of photos for that seeded split.

    Returns:
        ``DatasetDict`` with ``train``, ``validation`` and ``test`` splits of rows ``image_id`` (str),
        ``image`` (``datasets.Image``, decoded lazily) and ``captions`` (list of str). No photo is in two splits.
    """
    if str(source) == "sample":
        path = sample_folder(seed=seed)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            check_source(source)
            return _load_hub(str(source))
    found = _detect_layout(path).read(path)
    if isinstance(found, datasets.DatasetDict):
        return found
    return _photo_rows(path, found, seed, split_fractions)


def looks_like_hub_id(source: str) -> bool:
    """``owner/name`` that is not an existing local path."""
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~"))


def check_source(source: str | os.PathLike) -> None:
    """Raise at once when ``source`` is neither ``"sample"``, an existing path nor a hub id (nothing is loaded)."""
    if str(source) == "sample" or Path(source).expanduser().exists() or looks_like_hub_id(str(source)):
        return
    raise MMClassifierError(
        f"Data set folder {Path(source).expanduser()} does not exist. Pass an existing folder, a hub id such as "
        "'jxie/flickr8k', or 'sample' for the built-in data set."
    )


def _detect_layout(path: Path) -> Layout:
    """The first layout of LAYOUTS that recognises ``path``."""
    for layout in LAYOUTS:
        if layout.detect(path):
            return layout
    if not path.is_dir():
        raise MMClassifierError(f"{path} is a file; pass the folder that contains it.")
    looked_for = "; ".join(layout.description for layout in LAYOUTS)
    raise MMClassifierError(
        f"{path} holds no Flickr8k data: looked for: {looked_for}. Pass one of those, a hub id, or 'sample'."
    )


# ---------------------------------------------------------------------------------------------- layouts


def _has_file(name: str) -> Callable[[Path], bool]:
    """Detect a layout by a file it always has."""
    return lambda path: (path / name).is_file()


def _holds_table_files(path: Path) -> bool:
    return path.is_dir() and any(p.suffix in TABLE_SUFFIXES for p in path.rglob("*"))


def _read_kaggle(folder: Path) -> FoundPhotos:
    """Kaggle layout: ``captions.txt`` (``image,caption`` CSV with a header) next to ``images/``."""
    return _read_flickr8k_folder(folder, "captions.txt", _read_kaggle_captions)


def _read_original(folder: Path) -> FoundPhotos:
    """Original release: ``Flickr8k.token.txt`` (``NAME.jpg#N<TAB>caption``) next to ``Flicker8k_Dataset/``."""
    return _read_flickr8k_folder(folder, "Flickr8k.token.txt", _read_token_captions)


def _read_table_files(folder: Path) -> datasets.DatasetDict:
    """Parquet/arrow files with a hub data set's columns (a downloaded copy of one, say)."""
    return _load_hub(str(folder))


# Tried in order; the first layout whose detect() accepts the path reads it.
LAYOUTS: tuple[Layout, ...] = (
    Layout("Kaggle layout (captions.txt + photos)", _has_file("captions.txt"), _read_kaggle),
    Layout("original layout (Flickr8k.token.txt + photos)", _has_file("Flickr8k.token.txt"), _read_original),
    Layout("parquet/arrow files (image, caption_0 .. caption_4)", _holds_table_files, _read_table_files),
)


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
    # stacklevel 4: the warning points at the caller of load_flickr8k, the line a user can act on.
    if any(skipped.values()):
        warnings.warn(f"{source}: skipped {_describe(skipped)}.", DataWarning, stacklevel=4)


# ---------------------------------------------------------------------------------------------- hub


def _load_hub(source: str) -> datasets.DatasetDict:
    """A hub id (or a local folder of parquet/arrow files with the same columns) via ``load_dataset``."""
    loaded = _load_hub_splits(source)
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


def _load_hub_splits(source: str) -> datasets.DatasetDict:
    """``load_dataset(source)`` with its train, validation and test splits, or a clear error saying why not."""
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
            "Offline, use a local folder (Kaggle or original layout) or 'sample'."
        ) from err
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    missing_splits = [s for s in SPLITS if s not in loaded]
    if missing_splits:
        raise MMClassifierError(f"Data set {source!r} has splits {list(loaded)}; expected {list(SPLITS)}.")
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
    """Turn photo rows into (photo, one caption) rows labelled leave-one-out.

    Pair ``i`` of a photo reads caption ``i``; its ``labels`` are the concepts that at least ``min_votes`` of
    the photo's *other* captions mention, so a caption never decides its own label.

    Args:
        photos: photo rows from :func:`load_flickr8k` (a ``DatasetDict`` or one split).
        concepts: concept names, in label order. ``None`` mines the ``num_concepts`` most frequent concepts
            of ``lexicon`` from the training split (from ``photos`` itself when it is a single split).
        lexicon: concept -> words (default: the built-in lexicon; see ``labels.load_concept_file``).

    Returns:
        The same kind of object with rows ``image_id``, ``image``, ``caption``, ``labels``, where
        ``features["labels"]`` is ``Sequence(ClassLabel(names=concepts))``.
    """
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
        reference = photos["train"] if isinstance(photos, datasets.DatasetDict) else photos
        concepts = [c for c, _ in mine_concepts(list(reference["captions"]), num_concepts, min_votes, lexicon)]
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


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mm_classifier.data --dataset SRC``: split sizes and the mined concepts as a Markdown table."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m mm_classifier.data", description=main.__doc__)
    parser.add_argument("--dataset", default="sample", help="folder, hub id or 'sample' (default: %(default)s)")
    parser.add_argument("--num-concepts", type=int, default=DEFAULT_NUM_CONCEPTS)
    parser.add_argument("--min-votes", type=int, default=DEFAULT_MIN_VOTES)
    args = parser.parse_args(argv)
    try:
        photos = load_flickr8k(args.dataset)
    except MMClassifierError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    train = list(photos["train"]["captions"])
    print(f"{args.dataset}: " + ", ".join(f"{name} {len(split)} photos" for name, split in photos.items()))
    print(
        f"\nConcepts mined from the {len(train)} training photos (a photo has a concept when at least "
        f"{args.min_votes} of its captions name it):\n"
    )
    print("| # | concept | training photos | share | words |\n|---:|---|---:|---:|---|")
    for rank, (concept, count) in enumerate(mine_concepts(train, args.num_concepts, args.min_votes), start=1):
        words = ", ".join(w for w in CONCEPT_LEXICON[concept] if w != concept)
        print(f"| {rank} | {concept} | {count} | {count / len(train):.1%} | {words} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
