"""Classification metrics as local `evaluate` modules (no hub download), and one call that computes them all."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

METRICS_DIR = Path(__file__).parent
METRIC_NAMES = ("multilabel_classification", "multilabel_ranking", "single_label_classification")
TOP_K = 3  # a single-label model's top-k accuracy: the true class among its k most probable (with more than k)


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
    thresholds: Sequence[float] | float | None = 0.5,
    label_names: Sequence[str] | None = None,
    single_label: bool = False,
) -> dict:
    """All metrics of a split.

    Args:
        probabilities: (N, C) scores in [0, 1].
        references: (N, C) 0/1 targets (single-label: one-hot).
        thresholds: multi-label: one cut-off for all concepts or one per concept (predicted when score >= threshold).
        single_label: each row has exactly one class, and the most probable class is the prediction (thresholds
            are not used).

    Returns:
        Multi-label: flat summary keys (``micro_f1``, ``macro_f1``, ``samples_f1``, precision/recall likewise,
        ``mAP``, ``roc_auc`` (macro), ``roc_auc_micro``, ``subset_accuracy``, ``hamming_loss``) plus
        ``per_concept`` (each with f1, precision, recall, average_precision, roc_auc, support, threshold) and
        ``undefined``. Single-label: ``accuracy`` (also as ``micro_f1``, which it equals), ``top_k_accuracy``
        (with ``top_k``; None with ``TOP_K`` classes or fewer), macro precision, recall and F1, the ranking
        metrics, ``per_concept`` (no threshold), ``confusion_matrix`` and ``undefined``.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    references = np.asarray(references, dtype=np.int8)
    names = list(label_names) if label_names is not None else [str(i) for i in range(references.shape[1])]
    ranking_results = load_metric("multilabel_ranking").compute(
        predictions=probabilities, references=references, label_names=names
    )
    if single_label:
        classes = references.argmax(axis=1)
        results = load_metric("single_label_classification").compute(
            predictions=probabilities.argmax(axis=1), references=classes, label_names=names
        )
        top_k = None
        if len(names) > TOP_K:
            top = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP_K]
            top_k = float((top == classes[:, None]).any(axis=1).mean())
        summary = {"accuracy": results["accuracy"], "micro_f1": results["accuracy"], "top_k_accuracy": top_k,
                   "top_k": TOP_K, **{k: results[k] for k in ("macro_f1", "macro_precision", "macro_recall")}}
        cutoffs = None
    else:
        cutoffs = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), probabilities.shape[1:])
        predictions = (probabilities >= cutoffs).astype(np.int8)
        results = load_metric("multilabel_classification").compute(
            predictions=predictions, references=references, label_names=names
        )
        summary = {k: v for k, v in results.items() if k not in ("per_label", "undefined")}
    summary["mAP"] = ranking_results["mAP"]
    summary["micro_average_precision"] = ranking_results["micro_average_precision"]
    summary["roc_auc"] = ranking_results["roc_auc_macro"]
    summary["roc_auc_micro"] = ranking_results["roc_auc_micro"]
    summary["per_concept"] = {
        name: {
            **results["per_label"][name],
            **ranking_results["per_label"][name],
            **({} if cutoffs is None else {"threshold": float(cutoffs[i])}),
        }
        for i, name in enumerate(names)
    }
    if single_label:
        summary["confusion_matrix"] = results["confusion_matrix"]
    summary["undefined"] = {**results["undefined"], **ranking_results["undefined"]}
    return summary
