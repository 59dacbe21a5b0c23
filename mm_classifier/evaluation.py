"""Predictions -> metrics, per-concept tables, ROC/PR curves, example grid, ablations; model cards.

    python -m mm_classifier.evaluation --model outputs/fusion --dataset sample --output-dir reports/fusion
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import f1_score, precision_recall_curve, roc_curve
from tqdm.auto import tqdm

from .data import load_flickr8k, to_pairs
from .errors import MMClassifierError
from .metrics import compute_metrics
from .predict import Predictor

logger = logging.getLogger(__name__)
SUMMARY_KEYS = (
    ("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"), ("samples_f1", "samples-F1"),
    ("micro_precision", "micro-P"), ("micro_recall", "micro-R"), ("mAP", "mAP"), ("roc_auc", "ROC-AUC macro"),
    ("roc_auc_micro", "ROC-AUC micro"), ("subset_accuracy", "subset acc."), ("hamming_loss", "Hamming loss"),
)

__all__ = [
    "compute_metrics", "tune_thresholds", "select_threshold_shrinkage", "evaluate_model", "score_pairs", "write_model_card",
]


# Candidate strengths k for pulling each concept's threshold toward the shared one (see tune_thresholds).
SHRINKAGE_STRENGTHS = (0.0, 10.0, 30.0, 100.0, 300.0, 1000.0, float("inf"))


def _cut_between(scores: np.ndarray, cut: float) -> float:
    """A threshold midway between ``cut`` and the next lower score, so it does not hinge on one example."""
    below = scores[scores < cut]
    return float(np.clip((cut + below.max()) / 2 if len(below) else cut, 0.01, 0.99))


def _best_f1_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, cuts = precision_recall_curve(y, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return _cut_between(scores, cuts[int(np.argmax(f1[:-1]))])


def _own_and_shared(probabilities, references) -> tuple[np.ndarray, float, np.ndarray] | None:
    """Each concept's F1-best threshold, the one micro-F1-best threshold, and each concept's positive count;
    None when no row is positive for any concept."""
    positives = references.sum(axis=0)
    if positives.sum() == 0:
        return None
    shared = _best_f1_threshold(references.ravel(), probabilities.ravel())
    # A concept without positives (or negatives) has no threshold of its own: it takes the shared one.
    own = np.array([
        _best_f1_threshold(references[:, c], probabilities[:, c]) if 0 < positives[c] < len(references) else shared
        for c in range(references.shape[1])
    ])
    return own, shared, positives


def _shrink(own: np.ndarray, shared: float, positives: np.ndarray, strength: float) -> np.ndarray:
    """``(n * own + k * shared) / (n + k)`` per concept; k = inf gives every concept the shared threshold."""
    if np.isinf(strength):
        return np.full(len(own), shared)
    weight = np.divide(positives, positives + strength, out=np.zeros(len(own)), where=positives + strength > 0)
    return weight * own + (1 - weight) * shared


def select_threshold_shrinkage(
    probabilities: np.ndarray, references: np.ndarray, groups: Sequence | np.ndarray | None = None, folds: int = 5,
    strengths: Sequence[float] = SHRINKAGE_STRENGTHS,
) -> tuple[float, dict[float, float]]:
    """The shrinkage strength whose thresholds give the best micro-F1 on held-out folds of these scores.

    Args:
        groups: one id per row (the photo of a pair); folds never split a group. Default: every row its own.
        folds: number of folds; with fewer groups than folds, the shared threshold (infinite strength) is used.

    Returns:
        The chosen strength and the cross-validated micro-F1 of each candidate. Ties go to the stronger
        shrinkage, which has fewer free thresholds.
    """
    groups = np.arange(len(references)) if groups is None else np.asarray(groups)
    names = np.unique(groups)
    if len(names) < folds:
        return float("inf"), {}
    fold_of = dict(zip(names.tolist(), np.random.default_rng(0).permutation(len(names)) % folds))
    fold = np.array([fold_of[g] for g in groups.tolist()])
    predicted = {float(strength): np.zeros_like(references, dtype=bool) for strength in strengths}
    for k in range(folds):
        held_out = fold == k
        tuned = _own_and_shared(probabilities[~held_out], references[~held_out])
        for strength, rows in predicted.items():
            thresholds = np.full(references.shape[1], 0.5) if tuned is None else _shrink(*tuned, strength)
            rows[held_out] = probabilities[held_out] >= thresholds
    scores = {
        strength: float(f1_score(references, rows, average="micro", zero_division=0))
        for strength, rows in predicted.items()
    }
    best = max(sorted(scores, reverse=True), key=lambda s: scores[s])  # stable: ties keep the stronger one
    return best, scores


def tune_thresholds(
    probabilities: np.ndarray, references: np.ndarray, default: float = 0.5, shrinkage: float | None = None,
    groups: Sequence | np.ndarray | None = None,
) -> list[float]:
    """One decision threshold per concept, tuned on these (validation) scores.

    Each concept's F1-maximising threshold is pulled toward the single threshold that maximises micro-F1 over
    all concepts: ``t_c = (n_c * own_c + k * shared) / (n_c + k)``, with ``n_c`` the concept's positive rows.
    ``k = 0`` keeps each concept's own threshold, ``k = inf`` gives every concept the shared one. Concepts
    with few positives get thresholds that fit noise; shrinking them is what makes the tuned thresholds hold on
    new photos (README, "Training").

    Args:
        shrinkage: ``k``; None chooses it by cross-validation (:func:`select_threshold_shrinkage`).
        groups: passed to that cross-validation (the photo of each pair).
        default: every threshold when no row is positive for any concept.

    Thresholds sit midway between neighbouring scores, so they do not depend on the exact score of one example.
    """
    probabilities, references = np.asarray(probabilities), np.asarray(references)
    if shrinkage is None:
        shrinkage, _ = select_threshold_shrinkage(probabilities, references, groups)
    tuned = _own_and_shared(probabilities, references)
    if tuned is None:
        return [default] * references.shape[1]
    return [float(t) for t in _shrink(*tuned, shrinkage)]


# --------------------------------------------------------------------------------------------- scoring


@torch.inference_mode()
def score_pairs(predictor: Predictor, pairs, batch_size: int = 64, desc: str = "") -> dict[str, np.ndarray]:
    """Probabilities of a model for (photo, caption) pair rows; each photo is encoded once.

    Returns:
        ``{"both": (N, C)}`` for a single-modality model; a fusion model adds ``"image_only"`` (caption removed)
        and ``"text_only"`` (photo removed).
    """
    model, processor, device = predictor.model, predictor.processor, predictor.device
    config = model.config
    image_embeds = text_embeds = None
    if config.uses_image:
        pair_photo_ids = list(pairs["image_id"])
        photo_ids = list(dict.fromkeys(pair_photo_ids))
        first_row = {}
        for row, image_id in enumerate(pair_photo_ids):
            first_row.setdefault(image_id, row)
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

    def probabilities(image, text):
        return torch.sigmoid(model.classify(image, text).float()).cpu().numpy()

    scores = {"both": probabilities(image_embeds, text_embeds)}
    if config.modality == "fusion":
        scores["image_only"] = probabilities(image_embeds, None)
        scores["text_only"] = probabilities(None, text_embeds)
    return scores


def pairs_for_model(config, dataset: str, split: str, seed: int = 0):
    """The split's pairs, labelled with the model's own concepts and labelling rule."""
    photos = load_flickr8k(dataset, seed=seed)
    if split not in photos:
        raise MMClassifierError(f"Unknown split {split!r}; choose from {list(photos)}.")
    lexicon = config.concept_words or {c: [c] for c in config.concepts}
    return to_pairs(photos[split], config.concepts, min_votes=config.min_votes, lexicon=lexicon)


def multi_hot(label_lists, num_concepts: int) -> np.ndarray:
    """Concept-index lists (a pair column ``labels``) -> (N, C) 0/1 int8 targets."""
    targets = np.zeros((len(label_lists), num_concepts), dtype=np.int8)
    for row, labels in enumerate(label_lists):
        targets[row, labels] = 1
    return targets


# --------------------------------------------------------------------------------------------- report


def evaluate_model(
    model_dir: str | Path,
    dataset: str,
    split: str = "test",
    output_dir: str | Path | None = None,
    compare: Sequence[str | Path] = (),
    seed: int = 0,
    num_examples: int = 12,
    title: str | None = None,
) -> dict:
    """Evaluate a model (and optional comparison models) on a split and write the report files.

    Writes ``metrics.json``, ``report.md``, ``roc_curves.png``, ``pr_curves.png`` and ``examples.png`` into
    ``output_dir`` (default: ``model_dir/eval_<split>``). Returns the content of ``metrics.json``.
    """
    from .plots import plot_curves, plot_examples

    predictor = Predictor.from_pretrained(model_dir)
    config = predictor.model.config
    output_dir = Path(output_dir) if output_dir is not None else Path(model_dir) / f"eval_{split}"
    output_dir.mkdir(parents=True, exist_ok=True)
    pairs = pairs_for_model(config, dataset, split, seed)
    if len(pairs) == 0:
        raise MMClassifierError(f"The {split} split of {dataset} has no pairs to evaluate.")
    targets = multi_hot(list(pairs["labels"]), config.num_labels)
    scores = score_pairs(predictor, pairs, desc=Path(model_dir).name)
    concepts = config.concepts
    thresholds = config.thresholds
    main = compute_metrics(scores["both"], targets, thresholds, concepts)
    rows = {f"{config.modality} model ({Path(model_dir).name})": main}
    ablation = {}
    if config.modality == "fusion":
        ablation["caption removed (photo only)"] = compute_metrics(scores["image_only"], targets, thresholds, concepts)
        ablation["photo removed (caption only)"] = compute_metrics(scores["text_only"], targets, thresholds, concepts)
    compared = {}
    for other_dir in compare:
        other = Predictor.from_pretrained(other_dir)
        if other.concepts != concepts:
            raise MMClassifierError(f"{other_dir} predicts other concepts than {model_dir}; they cannot be compared.")
        other_scores = score_pairs(other, pairs, desc=Path(other_dir).name)["both"]
        name = f"{other.model.config.modality} model ({Path(other_dir).name})"
        compared[name] = compute_metrics(other_scores, targets, other.model.config.thresholds, concepts)

    _save_curves(plot_curves, scores["both"], targets, concepts, output_dir)
    examples = _examples(pairs, scores["both"], targets, thresholds, concepts, num_examples)
    figure = plot_examples(examples)
    figure.savefig(output_dir / "examples.png", dpi=90)
    import matplotlib.pyplot as plt

    plt.close(figure)

    result = {
        "model": str(model_dir), "dataset": str(dataset), "split": split, "num_pairs": len(pairs),
        "num_photos": len(set(pairs["image_id"])), "metrics": main,
        "ablation": ablation, "compare": compared,
    }
    (output_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    report = render_report(result, {**compared, **rows, **ablation}, title=title)
    (output_dir / "report.md").write_text(report)
    return result


def _save_curves(plot_curves, probabilities, targets, concepts, output_dir: Path) -> None:
    import matplotlib.pyplot as plt

    roc, pr = {}, {}
    for i, name in enumerate(concepts):
        y = targets[:, i]
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, probabilities[:, i])
            roc[name] = (fpr, tpr, float(np.trapezoid(tpr, fpr)))
        if y.sum() > 0:
            precision, recall, _ = precision_recall_curve(y, probabilities[:, i])
            pr[name] = (recall, precision, float(-np.sum(np.diff(recall) * precision[:-1])))
    flat_y, flat_p = targets.ravel(), probabilities.ravel()
    if 0 < flat_y.sum() < len(flat_y):
        fpr, tpr, _ = roc_curve(flat_y, flat_p)
        roc["micro average"] = (fpr, tpr, float(np.trapezoid(tpr, fpr)))
        precision, recall, _ = precision_recall_curve(flat_y, flat_p)
        pr["micro average"] = (recall, precision, float(-np.sum(np.diff(recall) * precision[:-1])))
    for curves, kind, file_name, title in (
        (roc, "roc", "roc_curves.png", "ROC curves (area in brackets)"),
        (pr, "pr", "pr_curves.png", "Precision-recall curves (average precision in brackets)"),
    ):
        figure = plot_curves(curves, kind, title)
        figure.savefig(output_dir / file_name, dpi=90)
        plt.close(figure)


def _examples(pairs, probabilities, targets, thresholds, concepts, count: int) -> list[dict]:
    """One pair from each of the first ``count`` photos (spread over the split), decoded."""
    seen, rows = set(), []
    image_ids = list(pairs["image_id"])
    step = max(1, len(pairs) // max(count, 1))
    for row in list(range(0, len(pairs), step)) + list(range(len(pairs))):
        image_id = image_ids[row]
        if image_id not in seen:
            seen.add(image_id)
            rows.append(row)
        if len(rows) == count:
            break
    examples = []
    for row in rows:
        record = pairs[row]
        predicted = [c for c, p, t in zip(concepts, probabilities[row], thresholds) if p >= t]
        examples.append({
            "image": record["image"], "caption": record["caption"],
            "true": [concepts[i] for i in np.flatnonzero(targets[row])], "predicted": predicted,
        })
    return examples


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render_report(result: dict, rows: dict[str, dict], title: str | None = None) -> str:
    """Markdown: summary table (one row per model or ablation), per-concept table, undefined metrics, figures."""
    main = result["metrics"]
    lines = [
        f"# {title or 'Evaluation report'}",
        "",
        f"Model `{result['model']}` on `{result['dataset']}`, split `{result['split']}`: {result['num_pairs']} "
        f"(photo, caption) pairs from {result['num_photos']} photos. Labels are leave-one-out: a pair's concepts "
        "come from the photo's *other* captions. Decisions use each model's tuned per-concept thresholds.",
        "",
        "| model | " + " | ".join(label for _, label in SUMMARY_KEYS) + " |",
        "|---|" + "---:|" * len(SUMMARY_KEYS),
    ]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(metrics.get(key)) for key, _ in SUMMARY_KEYS) + " |")
    lines += [
        "",
        "## Per concept",
        "",
        "| concept | support | threshold | precision | recall | F1 | AP | ROC-AUC |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, values in main["per_concept"].items():
        lines.append(
            f"| {name} | {values['support']} | {values['threshold']:.2f} | {_fmt(values['precision'])} | "
            f"{_fmt(values['recall'])} | {_fmt(values['f1'])} | {_fmt(values['average_precision'])} | "
            f"{_fmt(values['roc_auc'])} |"
        )
    undefined = {k: v for k, v in main["undefined"].items() if v}
    if undefined:
        lines += ["", "**Undefined metrics** (shown as n/a and left out of the macro averages):"]
        reasons = {
            "precision": "never predicted", "recall": "no positive example", "f1": "no positive example",
            "average_precision": "no positive example", "roc_auc": "no positive or no negative example",
        }
        for metric, names in undefined.items():
            lines.append(f"- {metric} ({reasons.get(metric, 'undefined')}): {', '.join(names)}")
    lines += [
        "",
        "## Figures",
        "",
        "![ROC curves](roc_curves.png)",
        "",
        "![Precision-recall curves](pr_curves.png)",
        "",
        "![Examples: predicted concepts in green when right, red when wrong; missed ones in amber](examples.png)",
        "",
    ]
    return "\n".join(lines)


def write_pipeline_report(
    output_dir: Path, stage_dirs: dict[str, Path], dataset: str, seed: int = 0, split: str = "test"
) -> Path:
    """``outputs/report.md``: the fusion model, its ablations and the image-only and text-only models, side by side."""
    fusion = stage_dirs.get("fusion")
    others = [stage_dirs[s] for s in ("image", "text") if s in stage_dirs]
    if fusion is None:
        main, others = others[0], others[1:]
    else:
        main = fusion
    evaluate_model(
        main, dataset, split, output_dir, compare=others, seed=seed,
        title="Image-only, text-only and fusion models compared",
    )
    timing = ["", "## Training time", "", "| model | best epoch | epochs run | training s | stage s |", "|---|---:|---:|---:|---:|"]
    for stage, directory in stage_dirs.items():
        results_file = Path(directory) / "all_results.json"
        if results_file.is_file():
            r = json.loads(results_file.read_text())
            timing.append(f"| {stage} | {r['best_epoch']} | {r['epochs_run']} | {r['train_seconds']} | {r['stage_seconds']} |")
    with open(Path(output_dir) / "report.md", "a") as f:
        f.write("\n".join(timing) + "\n")
    return Path(output_dir) / "report.md"


def write_model_card(directory: Path, config, results: dict, dataset: str) -> None:
    """A model card README.md (hub metadata, concepts, data, metrics, intended use, limits)."""
    modality = {"fusion": "a photo and/or its caption", "image": "a photo", "text": "a caption"}[config.modality]
    mirror = " (a photo's embedding is the mean of its own and its mirror image's)" if (
        config.uses_image and config.image_mirror_average) else ""
    metric_rows = "\n".join(
        f"| {label} | {_fmt(results.get('test_' + key))} |" for key, label in SUMMARY_KEYS if "test_" + key in results
    )
    card = f"""---
library_name: transformers
pipeline_tag: image-classification
tags: [mm_classifier, multi-label, multimodal, flickr8k]
datasets: [flickr8k]
metrics: [f1, average_precision, roc_auc]
---

# mm_classifier: {config.modality} model

Predicts which of {config.num_labels} concepts appear in {modality}, each with a probability.
Backbone `{config.backbone}` at {config.image_size} px{mirror}; word-level BiLSTM caption encoder; fused by
concatenation and fully connected layers (`modality={config.modality}`).

## Concepts

{", ".join(f"`{c}` (threshold {t:.2f})" for c, t in zip(config.concepts, config.thresholds))}

A photo has a concept when at least {config.min_votes} of its captions name it (words per concept are in
`config.json`, `concept_words`). Training and test pairs are labelled leave-one-out: a caption never decides
its own label, so a caption-reading model cannot just spot keywords.

## Data

Trained on `{dataset}`; {results.get('train_rows', '?')} training rows; tested on {results.get('test_pairs', '?')}
(photo, caption) pairs of photos that training never saw (the split is by photo).

## Results (test split)

| metric | value |
|---|---:|
{metric_rows}

Best epoch {results.get('best_epoch')} of {results.get('epochs_run')}; {results.get('train_seconds')} s of training.

## Use

```python
import mm_classifier
predictor = mm_classifier.Predictor.from_pretrained("path/to/this/folder")
print(predictor.predict(["photo.jpg"], ["a dog runs on the beach"])[0].predicted)
```

## Intended use and limits

For teaching and demos of multimodal, multi-label classification. Concepts and their frequencies come from
Flickr8k captions: everyday scenes of people, dogs and outdoor places; other photos are out of domain. Labels
are what captioners chose to mention, not exhaustive annotations, so "not predicted" does not mean "absent".
Person concepts (man, woman, boy, girl) reflect captioners' judgements and are hard to tell from pixels; do not
use this model to make decisions about people.
"""
    (Path(directory) / "README.md").write_text(card)


# --------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mm_classifier.evaluation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (e.g. outputs/fusion) or hub id")
    parser.add_argument("--dataset", default="sample", help="folder, hub id or 'sample' (default: %(default)s)")
    parser.add_argument("--split", default="test", help="train, validation or test (default: %(default)s)")
    parser.add_argument("--output-dir", type=Path, help="where to write the report (default: MODEL/eval_SPLIT)")
    parser.add_argument("--compare", nargs="*", default=[], help="other model folders to evaluate on the same pairs")
    parser.add_argument("--seed", type=int, default=0, help="split seed, as given to train.py (its --split-seed, else its --seed)")
    parser.add_argument("--num-examples", type=int, default=12, help="photos in examples.png")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = evaluate_model(
            args.model, args.dataset, args.split, args.output_dir, args.compare, args.seed, args.num_examples
        )
    except MMClassifierError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    m = result["metrics"]
    output_dir = args.output_dir or Path(args.model) / f"eval_{args.split}"
    print(f"micro-F1 {_fmt(m['micro_f1'])}, macro-F1 {_fmt(m['macro_f1'])}, mAP {_fmt(m['mAP'])}, "
          f"ROC-AUC {_fmt(m['roc_auc'])} on {result['num_pairs']} pairs -> {output_dir}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
