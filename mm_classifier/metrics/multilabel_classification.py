"""Threshold metrics for multi-label classification, as an `evaluate` module computed with scikit-learn.

Load with ``evaluate.load("path/to/multilabel_classification.py")``; works offline.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, hamming_loss, precision_recall_fscore_support

from ._per_label import per_label_scores

_DESCRIPTION = """
Micro, macro and samples averaged precision, recall and F1, subset accuracy and Hamming loss for multi-label
predictions, plus per-label precision, recall, F1 and support. A label's precision is undefined when it is
never predicted; its recall and F1 are undefined when it has no positive reference. Undefined values are
returned as None and left out of the macro averages; `undefined` lists them.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of int): 0/1 predictions, shape (n_examples, n_labels).
    references (list of list of int): 0/1 references, same shape.
    label_names (list of str, optional): names of the labels, for the per-label results.
Returns:
    micro_f1, macro_f1, samples_f1, micro_precision, macro_precision, samples_precision, micro_recall,
    macro_recall, samples_recall, subset_accuracy, hamming_loss, per_label (dict), undefined (dict).
Examples:
    >>> metric = evaluate.load("multilabel_classification.py")
    >>> metric.compute(predictions=[[1, 0], [1, 1]], references=[[1, 0], [0, 1]])["micro_f1"]
    0.8
"""


class MultilabelClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int8")),
                    "references": datasets.Sequence(datasets.Value("int8")),
                }
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html#multilabel-ranking-metrics"],
        )

    def _compute(self, predictions, references, label_names=None):
        y_pred = np.asarray(predictions, dtype=np.int8).reshape(len(predictions), -1)
        y_true = np.asarray(references, dtype=np.int8).reshape(len(references), -1)
        n_labels = y_true.shape[1]
        names = list(label_names) if label_names is not None else [str(i) for i in range(n_labels)]
        results = {}
        for average in ("micro", "samples"):
            # samples: an example with no reference and no predicted label is a perfect answer (1.0).
            p, r, f, _ = precision_recall_fscore_support(
                y_true, y_pred, average=average, zero_division=1.0 if average == "samples" else 0.0
            )
            results.update({f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)})
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, average=None, zero_division=np.nan
        )
        per_label, macro, undefined = per_label_scores(names, precision, recall, f1, support)
        results.update(macro)
        results["subset_accuracy"] = float(accuracy_score(y_true, y_pred))
        results["hamming_loss"] = float(hamming_loss(y_true, y_pred))
        results["per_label"] = per_label
        results["undefined"] = undefined
        return results
