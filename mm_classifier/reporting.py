"""What an evaluation leaves on disk: ``metrics.json``, ``report.md`` and its figures (ROC and PR curves, examples).

Computes no scores: :mod:`mm_classifier.evaluation` hands over the metrics, probabilities and targets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from .calibration import calibration_bins, expected_calibration_error
from .metrics import TOP_K

__all__ = [
    "SUMMARY_KEYS", "format_metric", "render_report", "training_time_section", "write_figures", "write_report",
]

# (key in compute_metrics' result, column label): the summary table's columns, in order.
SUMMARY_KEYS = (
    ("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"), ("samples_f1", "samples-F1"),
    ("micro_precision", "micro-P"), ("micro_recall", "micro-R"), ("mAP", "mAP"), ("roc_auc", "ROC-AUC macro"),
    ("roc_auc_micro", "ROC-AUC micro"), ("subset_accuracy", "subset acc."), ("hamming_loss", "Hamming loss"),
)
SINGLE_LABEL_SUMMARY_KEYS = (
    ("accuracy", "accuracy"), ("top_k_accuracy", f"top-{TOP_K} acc."), ("macro_f1", "macro-F1"),
    ("macro_precision", "macro-P"), ("macro_recall", "macro-R"), ("mAP", "mAP"), ("roc_auc", "ROC-AUC macro"),
)
# The metric the report's verdict compares models and baselines by: for multi-label the threshold-free mAP (the
# metric training keeps its best epoch by), for single-label how often the chosen class is right.
PRIMARY_METRIC = {"multi_label_classification": ("mAP", "mAP"), "single_label_classification": ("accuracy", "accuracy")}


def format_metric(value) -> str:
    """A metric with three decimals, or ``n/a`` for an undefined one (None)."""
    return "n/a" if value is None else f"{value:.3f}"


def write_figures(
    output_dir: Path, pairs, probabilities: np.ndarray, targets: np.ndarray, thresholds, concepts,
    num_examples: int = 12, uncalibrated: np.ndarray | None = None, single_label: bool = False,
) -> None:
    """Write ``roc_curves.png``, ``pr_curves.png``, ``examples.png``, ``reliability.png`` and, for a single-label
    model, ``confusion_matrix.png`` into ``output_dir``.

    Args:
        pairs: the evaluated (photo, caption) pair rows (``image_id``, ``image``, ``caption``).
        probabilities: (N, C) scores of the pairs (calibrated).
        targets: (N, C) 0/1 labels of the pairs.
        thresholds: C decision thresholds, for the examples' predicted concepts (None: single-label, the most
            probable class).
        concepts: C concept names.
        num_examples: photos in ``examples.png``, one pair each.
        uncalibrated: (N, C) the scores before calibration, drawn beside the calibrated ones in the diagram.
    """
    import matplotlib.pyplot as plt

    from .plots import plot_confusion_matrix, plot_examples, plot_reliability

    output_dir = Path(output_dir)
    _save_curves(probabilities, targets, concepts, output_dir)
    figure = plot_examples(_examples(pairs, probabilities, targets, thresholds, concepts, num_examples))
    figure.savefig(output_dir / "examples.png", dpi=90)
    plt.close(figure)
    curves = {}
    for name, scores in (("before calibration", uncalibrated), ("after calibration", probabilities)):
        if scores is not None:
            curves[name] = {**calibration_bins(scores, targets, single_label),
                            "ece": expected_calibration_error(scores, targets, single_label)}
    kind = "the most probable class" if single_label else "every concept's probability"
    figure = plot_reliability(curves, f"Reliability of {kind}")
    figure.savefig(output_dir / "reliability.png", dpi=90)
    plt.close(figure)
    if single_label:
        from sklearn.metrics import confusion_matrix

        matrix = confusion_matrix(targets.argmax(1), probabilities.argmax(1), labels=range(len(concepts)))
        figure = plot_confusion_matrix(matrix, list(concepts))
        figure.savefig(output_dir / "confusion_matrix.png", dpi=90)
        plt.close(figure)


def write_report(output_dir: Path, result: dict, rows: dict[str, dict], title: str | None = None) -> None:
    """Write ``metrics.json`` (``result`` as it is) and ``report.md`` (:func:`render_report`) into ``output_dir``."""
    output_dir = Path(output_dir)
    (output_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (output_dir / "report.md").write_text(render_report(result, rows, title=title))


def _save_curves(probabilities, targets, concepts, output_dir: Path) -> None:
    import matplotlib.pyplot as plt

    from .plots import plot_curves

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
        if thresholds is None:  # single-label: the most probable class
            predicted = [concepts[int(np.argmax(probabilities[row]))]]
        else:
            predicted = [c for c, p, t in zip(concepts, probabilities[row], thresholds, strict=True) if p >= t]
        examples.append({
            "image": record["image"], "caption": record["caption"],
            "true": [concepts[i] for i in np.flatnonzero(targets[row])], "predicted": predicted,
        })
    return examples


def describe_labels(result: dict) -> str:
    """One sentence on how the evaluated pairs were labelled, and one on how decisions are made."""
    labels = ("Labels are mined leave-one-out: a pair's concepts come from the photo's *other* captions."
              if result.get("labels", "mined") == "mined" else
              "Labels are the photos' given labels, used as given: every caption of a photo has its photo's labels.")
    if result.get("problem_type") == "single_label_classification":
        return labels + " Single-label: each model predicts its most probable class (one per pair)."
    return labels + (" Decisions use each model's tuned per-concept thresholds (the baselines': tuned the same way on "
                     "the validation split).")


def verdict(result: dict, rows: dict[str, dict]) -> str:
    """One sentence: which row is best by the primary metric and by how much; plainly when a baseline wins."""
    key, label = PRIMARY_METRIC[result.get("problem_type", "multi_label_classification")]
    baselines = result.get("baselines") or {}
    # Best first; on a tie a model comes before a baseline (a baseline wins only by being better).
    scored = sorted(((m[key], name not in baselines, name) for name, m in rows.items() if m.get(key) is not None),
                    reverse=True)
    if len(scored) < 2:
        return ""
    (best, _, best_name), (second, _, second_name) = scored[:2]
    sentence = (f"Best by {label}: {best_name}, {format_metric(best)}, {best - second:.3f} ahead of {second_name} "
                f"({format_metric(second)}).")
    if best_name in baselines:
        return f"**A baseline wins.** {sentence} The model's {label}: {format_metric(result['metrics'].get(key))}."
    return sentence


def render_report(result: dict, rows: dict[str, dict], title: str | None = None) -> str:
    """Markdown: summary table (one row per model, ablation or baseline), the verdict, calibration, per-concept table,
    undefined metrics, figures.

    Args:
        result: the content of ``metrics.json``; its ``metrics`` fill the per-concept table.
        rows: summary-table row name -> that row's metrics (as :func:`mm_classifier.metrics.compute_metrics`).
        title: the report's heading (default "Evaluation report").
    """
    main = result["metrics"]
    single_label = result.get("problem_type") == "single_label_classification"
    keys = SINGLE_LABEL_SUMMARY_KEYS if single_label else SUMMARY_KEYS
    lines = [
        f"# {title or 'Evaluation report'}",
        "",
        f"Model `{result['model']}` on `{result['dataset']}`, split `{result['split']}`: {result['num_pairs']} "
        f"(photo, caption) pairs from {result['num_photos']} photos. {describe_labels(result)}",
        "",
        "| model | " + " | ".join(label for _, label in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(format_metric(metrics.get(key)) for key, _ in keys) + " |")
    sentence = verdict(result, rows)
    if sentence:
        lines += ["", sentence]
    if result.get("baselines"):
        lines += ["", "The baselines are scikit-learn logistic regressions fitted on the training pairs: on TF-IDF "
                  "features of the texts (words and bigrams), on the pooled features the model's image encoder reads "
                  "from its backbone, and the mean of their probabilities (`mm_classifier/baselines.py`)."]
    calibration = result.get("calibration")
    if calibration:
        lines += ["", f"Calibration: expected calibration error {format_metric(calibration['ece_uncalibrated'])} "
                  f"before and {format_metric(calibration['ece'])} after the calibration fitted on the validation "
                  "split (see reliability.png)."]
    lines += [
        "",
        "## Per class" if single_label else "## Per concept",
        "",
    ]
    if single_label:
        lines += ["| class | support | precision | recall | F1 | AP | ROC-AUC |", "|---|---:|---:|---:|---:|---:|---:|"]
    else:
        lines += ["| concept | support | threshold | precision | recall | F1 | AP | ROC-AUC |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, values in main["per_concept"].items():
        threshold = "" if single_label else f" {values['threshold']:.2f} |"
        lines.append(
            f"| {name} | {values['support']} |{threshold} {format_metric(values['precision'])} | "
            f"{format_metric(values['recall'])} | {format_metric(values['f1'])} | "
            f"{format_metric(values['average_precision'])} | {format_metric(values['roc_auc'])} |"
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
        "![Reliability diagram](reliability.png)",
        "",
    ]
    if single_label:
        lines += ["![Confusion matrix](confusion_matrix.png)", ""]
    lines += [
        "![Examples: predicted concepts in green when right, red when wrong; missed ones in amber](examples.png)",
        "",
    ]
    return "\n".join(lines)


def training_time_section(stage_dirs: dict[str, Path]) -> str:
    """Markdown to append to ``report.md``: each stage's best epoch, epochs run and seconds.

    Args:
        stage_dirs: stage name -> its model folder; a folder without ``all_results.json`` gets no row.
    """
    timing = [
        "", "## Training time", "",
        "| model | best epoch | epochs run | training s | stage s |", "|---|---:|---:|---:|---:|",
    ]
    for stage, directory in stage_dirs.items():
        results_file = Path(directory) / "all_results.json"
        if results_file.is_file():
            r = json.loads(results_file.read_text())
            timing.append(
                f"| {stage} | {r['best_epoch']} | {r['epochs_run']} | {r['train_seconds']} | {r['stage_seconds']} |"
            )
    return "\n".join(timing) + "\n"
