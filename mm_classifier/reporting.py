"""What an evaluation leaves on disk: ``metrics.json``, ``report.md`` and its figures (ROC and PR curves, examples).

Computes no scores: :mod:`mm_classifier.evaluation` hands over the metrics, probabilities and targets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

__all__ = [
    "SUMMARY_KEYS", "format_metric", "render_report", "training_time_section", "write_figures", "write_report",
]

# (key in compute_metrics' result, column label): the summary table's columns, in order.
SUMMARY_KEYS = (
    ("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"), ("samples_f1", "samples-F1"),
    ("micro_precision", "micro-P"), ("micro_recall", "micro-R"), ("mAP", "mAP"), ("roc_auc", "ROC-AUC macro"),
    ("roc_auc_micro", "ROC-AUC micro"), ("subset_accuracy", "subset acc."), ("hamming_loss", "Hamming loss"),
)


def format_metric(value) -> str:
    """A metric with three decimals, or ``n/a`` for an undefined one (None)."""
    return "n/a" if value is None else f"{value:.3f}"


def write_figures(
    output_dir: Path, pairs, probabilities: np.ndarray, targets: np.ndarray, thresholds, concepts,
    num_examples: int = 12,
) -> None:
    """Write ``roc_curves.png``, ``pr_curves.png`` and ``examples.png`` into ``output_dir``.

    Args:
        pairs: the evaluated (photo, caption) pair rows (``image_id``, ``image``, ``caption``).
        probabilities: (N, C) scores of the pairs.
        targets: (N, C) 0/1 labels of the pairs.
        thresholds: C decision thresholds, for the examples' predicted concepts.
        concepts: C concept names.
        num_examples: photos in ``examples.png``, one pair each.
    """
    import matplotlib.pyplot as plt

    from .plots import plot_examples

    output_dir = Path(output_dir)
    _save_curves(probabilities, targets, concepts, output_dir)
    figure = plot_examples(_examples(pairs, probabilities, targets, thresholds, concepts, num_examples))
    figure.savefig(output_dir / "examples.png", dpi=90)
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
        predicted = [c for c, p, t in zip(concepts, probabilities[row], thresholds, strict=True) if p >= t]
        examples.append({
            "image": record["image"], "caption": record["caption"],
            "true": [concepts[i] for i in np.flatnonzero(targets[row])], "predicted": predicted,
        })
    return examples


def render_report(result: dict, rows: dict[str, dict], title: str | None = None) -> str:
    """Markdown: summary table (one row per model or ablation), per-concept table, undefined metrics, figures.

    Args:
        result: the content of ``metrics.json``; its ``metrics`` fill the per-concept table.
        rows: summary-table row name -> that row's metrics (as :func:`mm_classifier.metrics.compute_metrics`).
        title: the report's heading (default "Evaluation report").
    """
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
        lines.append(f"| {name} | " + " | ".join(format_metric(metrics.get(key)) for key, _ in SUMMARY_KEYS) + " |")
    lines += [
        "",
        "## Per concept",
        "",
        "| concept | support | threshold | precision | recall | F1 | AP | ROC-AUC |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, values in main["per_concept"].items():
        lines.append(
            f"| {name} | {values['support']} | {values['threshold']:.2f} | {format_metric(values['precision'])} | "
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
