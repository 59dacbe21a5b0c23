"""Flickr8k (Kaggle folder, original folder, hub id) and the built-in sample as ``datasets.DatasetDict``.

Photo rows (``image_id``, ``image``, ``captions``) come from :func:`load_flickr8k`; :func:`to_pairs` turns them
into the (photo, one caption) rows that models train on, labelled leave-one-out.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Mapping, Sequence

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

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT_FRACTIONS = (0.75, 0.125, 0.125)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
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


def cache_root() -> Path:
    """Where generated data (the built-in sample) and feature caches live; override with MM_CLASSIFIER_CACHE."""
    return Path(os.environ.get("MM_CLASSIFIER_CACHE", Path.home() / ".cache" / "mm_classifier"))


def load_flickr8k(
    source: str | os.PathLike = "sample",
    *,
    seed: int = 0,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
) -> datasets.DatasetDict:
    """Load Flickr8k (or anything laid out like it) as photo rows split by photo.

    Args:
        source: ``"sample"`` (the built-in synthetic data set), a folder in the Kaggle layout
            (``images/`` + ``captions.txt``), a folder in the original layout (``Flicker8k_Dataset/`` +
            ``Flickr8k.token.txt`` + split lists), a folder of parquet/arrow files, or a hub data set id with
            columns ``image`` and ``caption_0`` .. ``caption_4``. The layout is detected.
        seed: seeds the train/validation/test split when the source has no official split lists.
        split_fractions: train/validation/test fractions of photos for that seeded split.

    Returns:
        ``DatasetDict`` with ``train``, ``validation`` and ``test`` splits of rows ``image_id`` (str),
        ``image`` (``datasets.Image``, decoded lazily) and ``captions`` (list of str). No photo is in two splits.
    """
    if str(source) == "sample":
        from .sample import sample_folder

        return _load_folder(sample_folder(seed=seed), seed, split_fractions)
    path = Path(source).expanduser()
    if path.is_dir():
        if _find_caption_file(path) is not None:
            return _load_folder(path, seed, split_fractions)
        if any(p.suffix in {".parquet", ".arrow"} for p in path.rglob("*")):
            return _load_hub(str(path))
        raise MMClassifierError(
            f"{path} holds no Flickr8k data: looked for 'captions.txt' (Kaggle layout), 'Flickr8k.token.txt' "
            "(original layout) or parquet/arrow files. Pass one of those folders, a hub id, or 'sample'."
        )
    if path.exists():
        raise MMClassifierError(f"{path} is a file; pass the folder that contains it.")
    check_source(source)
    return _load_hub(str(source))


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


# ---------------------------------------------------------------------------------------------- folders


def _find_caption_file(folder: Path) -> Path | None:
    for name in ("captions.txt", "Flickr8k.token.txt"):
        if (folder / name).is_file():
            return folder / name
    return None


def _find_photo_folder(folder: Path) -> Path | None:
    for name in ("images", "Images", "Flicker8k_Dataset", "Flickr8k_Dataset"):
        if (folder / name).is_dir():
            return folder / name
    return None


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


def _readable(path: Path) -> bool:
    """Decode at reduced size (JPEG draft: ~0.5 ms) to catch corrupt, truncated and non-image files."""
    try:
        with PILImage.open(path) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
            return image.width > 0 and image.height > 0
    except (OSError, SyntaxError, ValueError, PILImage.DecompressionBombError):
        return False


def _load_folder(folder: Path, seed: int, split_fractions: Sequence[float]) -> datasets.DatasetDict:
    caption_file = _find_caption_file(folder)
    photo_folder = _find_photo_folder(folder)
    if photo_folder is None:
        raise MMClassifierError(
            f"{folder} has {caption_file.name} but no photo folder: looked for images/, Images/ or "
            "Flicker8k_Dataset/ inside it."
        )
    skipped: Counter = Counter()
    if caption_file.name == "captions.txt":
        captions = _read_kaggle_captions(caption_file, skipped)
    else:
        captions = _read_token_captions(caption_file, skipped)

    files = {p.name: p for p in photo_folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    usable: dict[str, Path] = {}
    for name in tqdm(sorted(captions), desc="Checking photos", unit="photo", leave=False, mininterval=1):
        if name not in files:
            skipped["captions for a missing photo"] += 1
        elif not _readable(files[name]):
            skipped["unreadable or corrupt photo"] += 1
        else:
            usable[name] = files[name]
    skipped["photo without captions"] += len(set(files) - set(captions))

    if not usable:
        raise MMClassifierError(
            f"No usable photo in {folder}: {caption_file.name} names {len(captions)} photos and "
            f"{photo_folder.name}/ holds {len(files)} image files, but no photo has both a caption and a "
            f"readable image ({_describe(skipped) or 'nothing to skip'})."
        )
    split_names = _split_photos(folder, sorted(usable), seed, split_fractions, skipped)
    _warn_skipped(folder, skipped)
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {
                    "image_id": names,
                    "image": [str(usable[n]) for n in names],
                    "captions": [captions[n] for n in names],
                },
                features=PHOTO_FEATURES,
                split=split,
            )
            for split, names in split_names.items()
        }
    )


def _split_photos(
    folder: Path, names: list[str], seed: int, fractions: Sequence[float], skipped: Counter
) -> dict[str, list[str]]:
    """Official split lists when the folder has them, else a seeded split by photo."""
    if all((folder / f).is_file() for f in SPLIT_FILES.values()):
        available = set(names)
        splits, seen = {}, set()
        for split, file_name in SPLIT_FILES.items():
            listed = [n for n in (folder / file_name).read_text().split() if n not in seen]
            seen.update(listed)
            splits[split] = [n for n in listed if n in available]
            skipped[f"listed in {file_name} but missing"] += len(listed) - len(splits[split])
        skipped["photo in no split list"] += len(available - seen)
        return splits
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
    if any(skipped.values()):
        warnings.warn(f"{source}: skipped {_describe(skipped)}.", DataWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------- hub


def _load_hub(source: str) -> datasets.DatasetDict:
    """A hub id (or a local folder of parquet/arrow files with the same columns) via ``load_dataset``."""
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
    out = {}
    for split in SPLITS:
        ds = loaded[split]
        caption_columns = sorted(c for c in ds.column_names if c.startswith("caption_"))
        if "image" not in ds.column_names or not caption_columns:
            raise MMClassifierError(
                f"Data set {source!r} split {split!r} has columns {ds.column_names}; expected 'image' and "
                "'caption_0' .. 'caption_4'."
            )
        id_column = next((c for c in ("image_id", "filename", "file_name", "image_filename") if c in ds.column_names), None)
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
    the photo's *other* captions mention, so a caption never decides its own label. ``label_shares`` holds, per
    concept, the share of those other captions that mention it (the soft targets of ``train.py --soft-targets``).

    Args:
        photos: photo rows from :func:`load_flickr8k` (a ``DatasetDict`` or one split).
        concepts: concept names, in label order. ``None`` mines the ``num_concepts`` most frequent concepts
            of ``lexicon`` from the training split (from ``photos`` itself when it is a single split).
        lexicon: concept -> words (default: the built-in lexicon; see ``labels.load_concept_file``).

    Returns:
        The same kind of object with rows ``image_id``, ``image``, ``caption``, ``labels``, ``label_shares``, where
        ``features["labels"]`` is ``Sequence(ClassLabel(names=concepts))``.
    """
    lexicon = validate_lexicon(dict(lexicon), "lexicon") if lexicon is not None else CONCEPT_LEXICON
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
    features = datasets.Features(
        {
            "image_id": datasets.Value("string"),
            "image": datasets.Image(decode=False),
            "caption": datasets.Value("string"),
            "labels": datasets.Sequence(datasets.ClassLabel(names=concepts)),
            "label_shares": datasets.Sequence(datasets.Value("float32")),
        }
    )

    def expand(batch):
        out = {"image_id": [], "image": [], "caption": [], "labels": [], "label_shares": []}
        for image_id, image, captions in zip(batch["image_id"], batch["image"], batch["captions"]):
            votes = leave_one_out_votes(captions, concepts, lexicon)
            others = max(1, len(captions) - 1)
            for caption, labels, row in zip(captions, labels_from_votes(votes, min_votes), votes):
                out["image_id"].append(image_id)
                out["image"].append(image)
                out["caption"].append(caption)
                out["labels"].append(labels)
                out["label_shares"].append([v / others for v in row])
        return out

    def convert(split: datasets.Dataset) -> datasets.Dataset:
        undecoded = split.cast_column("image", datasets.Image(decode=False))
        pairs = undecoded.map(expand, batched=True, remove_columns=split.column_names, features=features)
        return pairs.cast_column("image", datasets.Image())

    if isinstance(photos, datasets.DatasetDict):
        return datasets.DatasetDict({name: convert(split) for name, split in photos.items()})
    return convert(photos)


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
    print(f"\nConcepts mined from the {len(train)} training photos (a photo has a concept when at least "
          f"{args.min_votes} of its captions name it):\n")
    print("| # | concept | training photos | share | words |\n|---:|---|---:|---:|---|")
    for rank, (concept, count) in enumerate(mine_concepts(train, args.num_concepts, args.min_votes), start=1):
        words = ", ".join(w for w in CONCEPT_LEXICON[concept] if w != concept)
        print(f"| {rank} | {concept} | {count} | {count / len(train):.1%} | {words} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
