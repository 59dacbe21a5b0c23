"""Multi-label metrics as local `evaluate` modules (no hub download), and one call that computes them all."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

METRICS_DIR = Path(__file__).parent
METRIC_NAMES = ("multilabel_classification", "multilabel_ranking")


@cache
def load_metric(name: str):
    """``evaluate.load`` of one of this folder's metric scripts (``METRIC_NAMES``)."""
    import evaluate

    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; available: {METRIC_NAMES}.")
    return evaluate.load(str(METRICS_DIR / f"{name}.py"))


def compute_metrics(
    probabilities: np.ndarray,
    references: np.ndarray,
    thresholds: Sequence[float] | float = 0.5,
    label_names: Sequence[str] | None = None,
) -> dict:
    """All metrics of a split.

    Args:
        probabilities: (N, C) scores in [0, 1].
        references: (N, C) 0/1 targets.
        thresholds: one cut-off for all concepts or one per concept (predicted when score >= threshold).

    Returns:
        Flat summary keys (``micro_f1``, ``macro_f1``, ``samples_f1``, precision/recall likewise, ``mAP``,
        ``roc_auc`` (macro), ``roc_auc_micro``, ``subset_accuracy``, ``hamming_loss``) plus ``per_concept``
        (each with f1, precision, recall, average_precision, roc_auc, support, threshold) and ``undefined``.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    references = np.asarray(references, dtype=np.int8)
    cutoffs = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), probabilities.shape[1:])
    predictions = (probabilities >= cutoffs).astype(np.int8)
    names = list(label_names) if label_names is not None else [str(i) for i in range(references.shape[1])]
    threshold_results = load_metric("multilabel_classification").compute(
        predictions=predictions, references=references, label_names=names
    )
    ranking_results = load_metric("multilabel_ranking").compute(
        predictions=probabilities, references=references, label_names=names
    )
    summary = {k: v for k, v in threshold_results.items() if k not in ("per_label", "undefined")}
    summary["mAP"] = ranking_results["mAP"]
    summary["micro_average_precision"] = ranking_results["micro_average_precision"]
    summary["roc_auc"] = ranking_results["roc_auc_macro"]
    summary["roc_auc_micro"] = ranking_results["roc_auc_micro"]
    summary["per_concept"] = {
        name: {
            **threshold_results["per_label"][name],
            **ranking_results["per_label"][name],
            "threshold": float(cutoffs[i]),
        }
        for i, name in enumerate(names)
    }
    summary["undefined"] = {**threshold_results["undefined"], **ranking_results["undefined"]}
    return summary
