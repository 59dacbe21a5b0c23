"""Metrics for single-label classification (one class per example), as an `evaluate` module computed with
scikit-learn.

Load with ``evaluate.load("path/to/single_label_classification.py")``; works offline.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from ._per_label import per_label_scores

_DESCRIPTION = """
Accuracy, macro-averaged precision, recall and F1, per-class precision, recall, F1 and support, and the confusion
matrix of single-label predictions. A class's precision is undefined when it is never predicted; its recall and F1
are undefined when it has no reference example. Undefined values are returned as None and left out of the macro
averages; `undefined` lists them.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class indices, shape (n_examples,).
    references (list of int): true class indices, same shape.
    label_names (list of str, optional): names of the classes (their number sets the matrix's size).
Returns:
    accuracy, macro_precision, macro_recall, macro_f1, per_label (dict), confusion_matrix (list of rows: true class,
    columns: predicted class), undefined (dict).
Examples:
    >>> metric = evaluate.load("single_label_classification.py")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])["accuracy"]
    0.6666666666666666
"""


class SingleLabelClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html#classification-metrics"],
        )

    def _compute(self, predictions, references, label_names=None):
        y_pred, y_true = np.asarray(predictions, dtype=np.int64), np.asarray(references, dtype=np.int64)
        n_labels = len(label_names) if label_names is not None else int(max(y_pred.max(), y_true.max())) + 1
        names = list(label_names) if label_names is not None else [str(i) for i in range(n_labels)]
        classes = list(range(n_labels))
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=classes, average=None, zero_division=np.nan
        )
        per_label, macro, undefined = per_label_scores(names, precision, recall, f1, support)
        results = {"accuracy": float(accuracy_score(y_true, y_pred)), **macro}
        results["per_label"] = per_label
        results["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=classes).tolist()
        results["undefined"] = undefined
        return results
