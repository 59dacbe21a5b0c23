"""Evaluate a saved model on a split: pair scores -> metrics, modality ablations, comparisons, report files.

    python -m mm_classifier.evaluation --model outputs/fusion --dataset sample --output-dir reports/fusion
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from .baselines import PhotoBaseline, TextBaseline, late_fusion
from .calibration import expected_calibration_error
from .data import DataSource, add_source_arguments, load_photos, single_label_pairs, source_from_args, to_pairs
from .errors import MMClassifierError
from .features import cached_frozen_features, photo_pixels, photos_key
from .metrics import compute_metrics
from .pairs import hold_out_validation, multi_hot
from .photo_rows import DataWarning, photo_problem
from .predict import Predictor
from .reporting import format_metric, training_time_section, write_figures, write_report
from .thresholds import tune_thresholds

logger = logging.getLogger(__name__)

TEXT_BASELINE = "TF-IDF logistic regression"
PHOTO_BASELINE = "photo-feature logistic regression"
FUSION_BASELINE = "late fusion of the two regressions"

__all__ = ["build_parser", "evaluate_model", "main", "pairs_for_model", "score_pairs", "write_pipeline_report"]


# --------------------------------------------------------------------------------------------- scoring


@torch.inference_mode()
def score_pairs(predictor: Predictor, pairs, batch_size: int = 64, desc: str = "", logits: bool = False
                ) -> dict[str, np.ndarray]:
    """Probabilities (or, with ``logits=True``, logits) of a model for (photo, caption) pair rows; each photo is
    encoded once.

    Returns:
        ``{"both": (N, C)}`` for a single-modality model; a fusion model adds ``"image_only"`` (caption removed)
        and ``"text_only"`` (photo removed).
    """
    model, processor, device = predictor.model, predictor.processor, predictor.device
    config = model.config
    image_embeds = text_embeds = None
    if config.uses_image:
        pair_photo_ids = list(pairs["image_id"])
        first_row = first_rows(pairs)
        photo_ids = list(first_row)
        undecoded = pairs.cast_column("image", pairs.features["image"].__class__(decode=False))
        chunks = []
        for start in tqdm(range(0, len(photo_ids), batch_size), desc=f"{desc} photos".strip(), leave=False):
            rows = [first_row[i] for i in photo_ids[start : start + batch_size]]
            images = list(undecoded.select(rows)["image"])
            pixels = processor(images=images)["pixel_values"].to(device).contiguous(memory_format=torch.channels_last)
            chunks.append(model.encode_image(pixels))
        per_photo = torch.cat(chunks)  # (P, Di)
        position = {image_id: i for i, image_id in enumerate(photo_ids)}
        image_embeds = per_photo[torch.tensor([position[i] for i in pair_photo_ids])]  # (N, Di)
    if config.uses_text:
        captions = list(pairs["caption"])
        chunks = []
        for start in tqdm(range(0, len(captions), 256), desc=f"{desc} captions".strip(), leave=False):
            tokens = processor.tokenize(captions[start : start + 256])
            chunks.append(model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)))
        text_embeds = torch.cat(chunks)  # (N, Dt)

    def scores(image, text):
        out = model.classify(image, text).float()
        return (out if logits else model.probabilities(out)).cpu().numpy()

    result = {"both": scores(image_embeds, text_embeds)}
    if config.modality == "fusion":
        result["image_only"] = scores(image_embeds, None)
        result["text_only"] = scores(None, text_embeds)
    return result


def label_pairs(config, photos):
    """Photo rows (a split or a ``DatasetDict``) -> pair rows labelled with the model's own concepts and labelling
    rule: the photos' given labels when the data set has them (labels outside the model's concepts dropped and
    reported; a single-label model keeps the pairs whose photo has one of its classes), else mined from the
    captions."""
    lexicon = config.concept_words or {c: [c] for c in config.concepts}
    pairs = to_pairs(photos, config.concepts, min_votes=config.min_votes, lexicon=lexicon)
    return single_label_pairs(pairs) if config.single_label else pairs


def first_rows(pairs) -> dict[str, int]:
    """Each photo's first pair row, photos in order of first appearance."""
    first: dict[str, int] = {}
    for row, image_id in enumerate(pairs["image_id"]):
        first.setdefault(image_id, row)
    return first


def readable_pairs(pairs):
    """The pairs whose photo still decodes, and the names of the photos that do not (deleted, truncated or replaced
    since the data set loaded), with one warning naming them: they are left out, not allowed to stop the run."""
    undecoded = pairs.cast_column("image", datasets.Image(decode=False))
    bad = []
    for image_id, row in first_rows(pairs).items():
        image = undecoded[row]["image"]
        source = io.BytesIO(image["bytes"]) if image.get("bytes") else image.get("path")
        if source is None or (isinstance(source, str) and not os.path.isfile(source)) or photo_problem(source):
            bad.append(image_id)
    if not bad:
        return pairs, []
    warnings.warn(f"Left out {len(bad)} photo(s) that no longer decode: {', '.join(bad[:5])}"
                  f"{', ...' if len(bad) > 5 else ''}.", DataWarning, stacklevel=2)
    gone = set(bad)
    return pairs.filter(lambda image_id: image_id not in gone, input_columns="image_id"), bad


def pairs_for_model(config, dataset: str | DataSource, split: str, seed: int = 0):
    """The split's pairs, labelled as :func:`label_pairs` labels them.

    Args:
        dataset: a data set name or path, or a :class:`~mm_classifier.data.DataSource` with the options to read it.
    """
    photos = load_photos(dataset, seed=seed)
    if split not in photos:
        raise MMClassifierError(f"Unknown split {split!r}; choose from {list(photos)}.")
    return label_pairs(config, photos[split])


# --------------------------------------------------------------------------------------------- baselines


def baseline_scores(predictor: Predictor, photos: datasets.DatasetDict, split: str, pairs, seed: int = 0
                    ) -> dict[str, np.ndarray]:
    """The baselines' probabilities for the evaluated ``pairs`` (of the ``split`` of ``photos``, the data set's
    photo rows as ``load_photos`` gives them), each decided as the model decides: fitted on the training pairs,
    thresholds (multi-label) tuned on the validation pairs.

    The training and validation photos are those train.py used: when the evaluated split is the validation split
    (a copy whose test photos are withheld), a seeded seventh of the training photos serve as the validation split,
    as in training. The photo regression reads the features the model's image encoder reads from its backbone
    (the head's pooled output, or the chosen stages'), pooled: a linear probe of the same backbone; a text-only
    model gets only the text regression.

    Returns:
        Baseline name -> (N, C) probabilities, and ``"thresholds"`` -> name -> thresholds (None: single-label).
    """
    config = predictor.model.config
    evaluated = photos[split]  # the split's photo table, as training had it (so its cached features are found)
    if split == "validation" or len(photos["validation"]) == 0:
        held = datasets.DatasetDict({"train": photos["train"], "validation": photos[split]})
        photos = hold_out_validation(held, held, seed)[0]
    fit, tune = (label_pairs(config, photos[name]) for name in ("train", "validation"))
    num = config.num_labels
    fit_targets, tune_targets = (multi_hot(list(p["labels"]), num) for p in (fit, tune))
    text = TextBaseline(config.single_label).fit(list(fit["caption"]), fit_targets)
    scored = {TEXT_BASELINE: [text.predict(list(rows["caption"])) for rows in (tune, pairs)]}
    if config.uses_image:
        tables = {"train": photos["train"], "validation": photos["validation"], "evaluated": evaluated}
        features = {name: _pooled_features(predictor, table) for name, table in tables.items()}
        photo = PhotoBaseline(config.single_label).fit(features["train"],
                                                       _photo_targets(fit, tables["train"], fit_targets))
        scored[PHOTO_BASELINE] = [photo.predict(features[name])[_photo_rows(rows, tables[name])]
                                  for name, rows in (("validation", tune), ("evaluated", pairs))]
        scored[FUSION_BASELINE] = [late_fusion(text_probs, photo_probs) for text_probs, photo_probs in zip(
            scored[TEXT_BASELINE], scored[PHOTO_BASELINE], strict=True)]
    thresholds = {}
    for name, (tune_probs, _) in scored.items():
        thresholds[name] = None if config.single_label else tune_thresholds(
            tune_probs, tune_targets, groups=list(tune["image_id"]))
    return {name: probs for name, (_, probs) in scored.items()} | {"thresholds": thresholds}


def _pooled_features(predictor: Predictor, photos) -> np.ndarray:
    """(P, F) the features the model's image encoder reads from its backbone, pooled over positions: the frozen
    features training cached (read from that cache when the backbone trained frozen), else computed once and
    cached the same way."""
    model, processor = predictor.model, predictor.processor
    model.freeze_backbone(0)  # evaluation trains nothing; a frozen backbone's outputs can be cached
    table = cached_frozen_features(lambda: photo_pixels(photos, processor), photos_key(photos) + str(
        model.config.image_size), model, processor, device=predictor.device, num_photos=len(photos))
    features = table.tensor().float()  # (P, F), or (P, C, h, w) maps for a local projection
    return (features.mean(dim=(-2, -1)) if features.dim() == 4 else features).numpy()


def _photo_rows(pairs, photos) -> np.ndarray:
    """Each pair's row in ``photos``."""
    position = {image_id: i for i, image_id in enumerate(photos["image_id"])}
    return np.array([position[i] for i in pairs["image_id"]], dtype=np.int64)


def _photo_targets(pairs, photos, targets: np.ndarray) -> np.ndarray:
    """(P, C) each photo's share of pairs with each concept (its given labels, for given labels)."""
    rows = _photo_rows(pairs, photos)
    sums = np.zeros((len(photos), targets.shape[1]))
    np.add.at(sums, rows, targets)
    counts = np.bincount(rows, minlength=len(photos))[:, None]
    return sums / np.maximum(counts, 1)


# --------------------------------------------------------------------------------------------- evaluation


def evaluate_model(
    model_dir: str | Path,
    dataset: str,
    split: str = "test",
    output_dir: str | Path | None = None,
    compare: Sequence[str | Path] = (),
    seed: int = 0,
    num_examples: int = 12,
    title: str | None = None,
    baselines: bool = True,
) -> dict:
    """Evaluate a model (and optional comparison models, and the plain baselines) on a split and write the report.

    Writes ``metrics.json``, ``report.md``, ``roc_curves.png``, ``pr_curves.png``, ``reliability.png``,
    ``examples.png`` and, for a single-label model, ``confusion_matrix.png`` into ``output_dir`` (default:
    ``model_dir/eval_<split>``). Returns the content of ``metrics.json``.

    Args:
        baselines: fit and score the baselines (:func:`baseline_scores`); off for data too large to want them.
    """
    predictor = Predictor.from_pretrained(model_dir)
    model = predictor.model
    config = model.config
    output_dir = Path(output_dir) if output_dir is not None else Path(model_dir) / f"eval_{split}"
    output_dir.mkdir(parents=True, exist_ok=True)
    photos = load_photos(dataset, seed=seed)
    if split not in photos:
        raise MMClassifierError(f"Unknown split {split!r}; choose from {list(photos)}.")
    pairs = label_pairs(config, photos[split])
    unreadable = []
    if config.uses_image:
        pairs, unreadable = readable_pairs(pairs)
    if len(pairs) == 0:
        raise MMClassifierError(f"The {split} split of {dataset} has no pairs to evaluate.")
    targets = multi_hot(list(pairs["labels"]), config.num_labels)
    logits = score_pairs(predictor, pairs, desc=Path(model_dir).name, logits=True)
    scores = {name: model.probabilities(torch.from_numpy(z)).numpy() for name, z in logits.items()}
    uncalibrated = model.probabilities(torch.from_numpy(logits["both"]), calibrated=False).numpy()
    concepts, single_label = config.concepts, config.single_label
    thresholds = None if single_label else config.thresholds

    def metrics(probabilities, cutoffs=thresholds):
        return compute_metrics(probabilities, targets, cutoffs, concepts, single_label=single_label)

    main = metrics(scores["both"])
    rows = {f"{config.modality} model ({Path(model_dir).name})": main}
    ablation = {}
    if config.modality == "fusion":
        ablation["caption removed (photo only)"] = metrics(scores["image_only"])
        ablation["photo removed (caption only)"] = metrics(scores["text_only"])
    compared = {}
    for other_dir in compare:
        other = Predictor.from_pretrained(other_dir)
        if other.concepts != concepts or other.model.config.problem_type != config.problem_type:
            raise MMClassifierError(f"{other_dir} predicts other concepts than {model_dir} (or is not a "
                                    f"{config.problem_type} model too); they cannot be compared.")
        other_scores = score_pairs(other, pairs, desc=Path(other_dir).name)["both"]
        name = f"{other.model.config.modality} model ({Path(other_dir).name})"
        compared[name] = metrics(other_scores, None if single_label else other.model.config.thresholds)
    baseline_rows = {}
    if baselines and split != "train":
        found = baseline_scores(predictor, photos, split, pairs, seed)
        baseline_rows = {f"{name} (baseline)": metrics(probs, found["thresholds"][name])
                         for name, probs in found.items() if name != "thresholds"}
    calibration = {
        "temperatures": config.calibration_temperatures, "biases": config.calibration_biases,
        "ece": expected_calibration_error(scores["both"], targets, single_label),
        "ece_uncalibrated": expected_calibration_error(uncalibrated, targets, single_label),
    }
    write_figures(output_dir, pairs, scores["both"], targets, thresholds, concepts, num_examples,
                  uncalibrated=uncalibrated, single_label=single_label)
    result = {
        "model": str(model_dir), "dataset": str(dataset), "split": split, "num_pairs": len(pairs),
        "num_photos": len(set(pairs["image_id"])), "unreadable_photos": unreadable, "problem_type": config.problem_type,
        "labels": "given" if "labels" in photos[split].column_names else "mined", "metrics": main,
        "calibration": calibration, "ablation": ablation, "compare": compared, "baselines": baseline_rows,
    }
    write_report(output_dir, result, {**compared, **rows, **ablation, **baseline_rows}, title=title)
    return result


def write_pipeline_report(
    output_dir: Path, stage_dirs: dict[str, Path], dataset: str, seed: int = 0, split: str = "test",
    baselines: bool = True,
) -> Path:
    """``outputs/report.md``: the fusion model, its ablations and the image-only and text-only models, side by side.

    Args:
        output_dir: where the report and its figures go.
        stage_dirs: stage name (``"fusion"``, ``"image"``, ``"text"``) -> its model folder. The fusion model (else
            the first of the others) is the main model; the others are compared with it.
        dataset, seed, split, baselines: as for :func:`evaluate_model`.

    Returns:
        The path of ``report.md``, which ends with each stage's training time.
    """
    fusion = stage_dirs.get("fusion")
    others = [stage_dirs[s] for s in ("image", "text") if s in stage_dirs]
    if fusion is None:
        main, others = others[0], others[1:]
    else:
        main = fusion
    evaluate_model(
        main, dataset, split, output_dir, compare=others, seed=seed, baselines=baselines,
        title="Image-only, text-only and fusion models compared, with the plain baselines",
    )
    with open(Path(output_dir) / "report.md", "a") as f:
        f.write(training_time_section(stage_dirs))
    return Path(output_dir) / "report.md"


# --------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mm_classifier.evaluation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (e.g. outputs/fusion) or hub id")
    parser.add_argument("--dataset", default="sample", help="folder, file, hub id or 'sample' (default: %(default)s)")
    add_source_arguments(parser)  # --image-column, --caption-column, --label-column, --image-dir
    parser.add_argument("--split", default="test", help="train, validation or test (default: %(default)s)")
    parser.add_argument("--output-dir", type=Path, help="where to write the report (default: MODEL/eval_SPLIT)")
    parser.add_argument("--compare", nargs="*", default=[], help="other model folders to evaluate on the same pairs")
    parser.add_argument("--seed", type=int, default=0,
                        help="split seed, as given to train.py (its --split-seed, else its --seed)")
    parser.add_argument("--num-examples", type=int, default=12, help="photos in examples.png")
    parser.add_argument("--skip-baselines", action="store_true",
                        help="leave out the logistic-regression baselines (for data too large to want them)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = evaluate_model(
            args.model, source_from_args(args), args.split, args.output_dir, args.compare, args.seed, args.num_examples,
            baselines=not args.skip_baselines,
        )
    except MMClassifierError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    m = result["metrics"]
    output_dir = args.output_dir or Path(args.model) / f"eval_{args.split}"
    first = "accuracy" if result["problem_type"] == "single_label_classification" else "micro-F1"
    print(f"{first} {format_metric(m['micro_f1'])}, macro-F1 {format_metric(m['macro_f1'])}, "
          f"mAP {format_metric(m['mAP'])}, ROC-AUC {format_metric(m['roc_auc'])} on {result['num_pairs']} pairs "
          f"-> {output_dir}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
