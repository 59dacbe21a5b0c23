"""Ranking metrics for multi-label scores (average precision, ROC-AUC) as an `evaluate` module (scikit-learn).

Load with ``evaluate.load("path/to/multilabel_ranking.py")``; works offline.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

_DESCRIPTION = """
Per-label average precision (area under the precision-recall curve) and ROC-AUC for multi-label scores, their
macro averages (mAP, roc_auc_macro) and micro averages (all label decisions pooled). Average precision is
undefined for a label without positive references; ROC-AUC also for a label without negatives. Undefined
values are returned as None, left out of the macro averages and listed in `undefined`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of float): scores (probabilities or logits), shape (n_examples, n_labels).
    references (list of list of int): 0/1 references, same shape.
    label_names (list of str, optional): names of the labels, for the per-label results.
Returns:
    mAP, micro_average_precision, roc_auc_macro, roc_auc_micro, per_label (dict), undefined (dict).
Examples:
    >>> metric = evaluate.load("multilabel_ranking.py")
    >>> metric.compute(predictions=[[0.9, 0.2], [0.1, 0.8]], references=[[1, 0], [0, 1]])["mAP"]
    1.0
"""


class MultilabelRanking(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("int8")),
                }
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html#multilabel-ranking-metrics"],
        )

    def _compute(self, predictions, references, label_names=None):
        scores = np.asarray(predictions, dtype=np.float64).reshape(len(predictions), -1)
        y_true = np.asarray(references, dtype=np.int8).reshape(len(references), -1)
        n_labels = y_true.shape[1]
        names = list(label_names) if label_names is not None else [str(i) for i in range(n_labels)]
        per_label, undefined = {}, {"average_precision": [], "roc_auc": []}
        for i, name in enumerate(names):
            positives = int(y_true[:, i].sum())
            negatives = len(y_true) - positives
            ap = float(average_precision_score(y_true[:, i], scores[:, i])) if positives else None
            auc = float(roc_auc_score(y_true[:, i], scores[:, i])) if positives and negatives else None
            if ap is None:
                undefined["average_precision"].append(name)
            if auc is None:
                undefined["roc_auc"].append(name)
            per_label[name] = {"average_precision": ap, "roc_auc": auc}
        aps = [v["average_precision"] for v in per_label.values() if v["average_precision"] is not None]
        aucs = [v["roc_auc"] for v in per_label.values() if v["roc_auc"] is not None]
        flat_true, flat_scores = y_true.ravel(), scores.ravel()
        has_both = 0 < flat_true.sum() < flat_true.size
        return {
            "mAP": float(np.mean(aps)) if aps else None,
            "micro_average_precision": (
                float(average_precision_score(flat_true, flat_scores)) if flat_true.any() else None
            ),
            "roc_auc_macro": float(np.mean(aucs)) if aucs else None,
            "roc_auc_micro": float(roc_auc_score(flat_true, flat_scores)) if has_both else None,
            "per_label": per_label,
            "undefined": undefined,
        }
