"""Photo rows -> (photo, caption) pairs with concept labels (mined leave-one-out, or given), and the data CLI.

``python -m mm_classifier.data --dataset SRC`` prints a data set's split sizes and its concept table. Loading a data
set is ``sources.load_photos`` (re-exported here); checking and splitting its rows is ``photo_rows``.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence

import datasets
import numpy as np
import pyarrow.compute as pc

from .configuration import PROBLEM_TYPES
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
from .photo_rows import DataWarning, arrow_batches
from .sources import (  # noqa: F401  (loading is imported from here too)
    LAYOUTS,
    DataSource,
    check_source,
    load_flickr8k,
    load_photos,
    looks_like_hub_id,
)


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

    def expand(batch):
        out = {"image_id": [], "image": [], "caption": [], "labels": []}
        for image_id, image, captions in zip(batch["image_id"], batch["image"], batch["captions"], strict=True):
            votes = leave_one_out_votes(captions, concepts, lexicon)
            for caption, labels in zip(captions, labels_from_votes(votes, min_votes), strict=True):
                out["image_id"].append(image_id)
                out["image"].append(image)
                out["caption"].append(caption)
                out["labels"].append(labels)
        return out

    return _expand_photos(photos, expand, concepts)


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

    splits = photos if isinstance(photos, datasets.DatasetDict) else {str(photos.split or "the split"): photos}
    _warn_unknown_labels(splits, position)
    return _expand_photos(photos, expand_given, concepts)


def _expand_photos(
    photos: datasets.DatasetDict | datasets.Dataset, expand: Callable[[dict], dict], concepts: Sequence[str]
) -> datasets.DatasetDict | datasets.Dataset:
    """Photo rows -> pair rows ``image_id``, ``image``, ``caption``, ``labels`` (indices into ``concepts``) through
    ``expand``, a batched map, in every split; the photos are never decoded."""
    features = datasets.Features(
        {
            "image_id": datasets.Value("string"),
            "image": datasets.Image(decode=False),
            "caption": datasets.Value("string"),
            "labels": datasets.Sequence(datasets.ClassLabel(names=list(concepts))),
        }
    )

    def convert(split: datasets.Dataset) -> datasets.Dataset:
        undecoded = split.cast_column("image", datasets.Image(decode=False))
        pairs = undecoded.map(expand, batched=True, remove_columns=split.column_names, features=features)
        return pairs.cast_column("image", datasets.Image())

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


MULTI_LABEL, SINGLE_LABEL = PROBLEM_TYPES


def problem_type_of(photos: datasets.DatasetDict, asked: str | None = None) -> str:
    """Whether a data set is single-label (every training photo has exactly one given label, of two or more
    classes) or multi-label (several labels a photo, or concepts mined from captions); ``asked`` (train.py's
    ``--problem-type``) overrides the detection where the labels allow it."""
    train = photos["train"]
    if "labels" not in train.column_names:
        if asked == SINGLE_LABEL:
            raise MMClassifierError(
                "--problem-type single_label_classification needs given labels, one per photo; this data set's "
                "concepts are mined from the captions, and a caption names several. Name its labels column with "
                "--label-column."
            )
        return MULTI_LABEL
    if asked == SINGLE_LABEL:
        for name, split in photos.items():
            several = [(row["image_id"], row["labels"]) for batch in arrow_batches(split, ["image_id", "labels"])
                       for row in batch.filter(pc.greater(pc.list_value_length(batch["labels"]), 1)).to_pylist()]
            if several:
                image_id, labels = several[0]
                raise MMClassifierError(
                    f"--problem-type single_label_classification, but {len(several)} {name} photos have several "
                    f"labels (e.g. {image_id}: {', '.join(labels)}). Give each photo one label, or train a multi-label "
                    "model (leave --problem-type out)."
                )
    if asked is not None:
        return asked
    counts = [pc.list_value_length(batch["labels"]) for batch in arrow_batches(train, ["labels"])]
    one_each = all(pc.all(pc.equal(c, 1)).as_py() is not False for c in counts)
    return SINGLE_LABEL if one_each and len(label_counts(train)) >= 2 else MULTI_LABEL


def single_label_pairs(pairs: datasets.DatasetDict | datasets.Dataset) -> datasets.DatasetDict | datasets.Dataset:
    """The pairs of a single-label model: those whose photo has one label in the model's classes. A pair whose photo
    has none (its label is not a class, or it has no label) cannot be scored and is dropped, with one warning that
    counts them; a photo with several labels is an error."""
    splits = pairs if isinstance(pairs, datasets.DatasetDict) else {str(pairs.split or "the split"): pairs}
    kept, dropped = {}, []
    for name, split in splits.items():
        lengths = np.concatenate([pc.list_value_length(batch["labels"]).to_numpy(zero_copy_only=False)
                                  for batch in arrow_batches(split, ["labels"])] or [np.zeros(0, int)])
        if (lengths > 1).any():
            raise MMClassifierError(f"A single-label model needs one label a photo, but {int((lengths > 1).sum())} "
                                    f"{name} pairs have several.")
        kept[name] = split if lengths.all() else split.select(lengths.nonzero()[0].tolist())
        if not lengths.all():
            dropped.append(f"{name}: {int((lengths == 0).sum())}")
    if dropped:
        warnings.warn(f"Dropped the pairs whose photo has no label among the classes (a single-label model must "
                      f"choose one): {'; '.join(dropped)}.", DataWarning, stacklevel=2)
    return datasets.DatasetDict(kept) if isinstance(pairs, datasets.DatasetDict) else kept[next(iter(kept))]


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
