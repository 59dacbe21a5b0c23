import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    hamming_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from mm_classifier.metrics import compute_metrics, load_metric

Y = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]])
P = np.array(
    [[0.9, 0.2, 0.6, 0.1], [0.3, 0.7, 0.4, 0.2], [0.6, 0.4, 0.2, 0.3], [0.2, 0.1, 0.8, 0.6], [0.4, 0.3, 0.1, 0.1]]
)


def test_threshold_metrics_equal_sklearn_and_constant_column_is_undefined():
    predictions = (P >= 0.5).astype(int)
    result = load_metric("multilabel_classification").compute(predictions=predictions, references=Y,
                                                              label_names=list("abcd"))
    assert result["micro_f1"] == pytest.approx(f1_score(Y, predictions, average="micro"))
    assert result["micro_precision"] == pytest.approx(precision_score(Y, predictions, average="micro"))
    assert result["samples_f1"] == pytest.approx(f1_score(Y, predictions, average="samples", zero_division=1.0))
    assert result["subset_accuracy"] == pytest.approx(accuracy_score(Y, predictions))
    assert result["hamming_loss"] == pytest.approx(hamming_loss(Y, predictions))
    # Column d has no positive: its recall and F1 are undefined and left out of the macro averages.
    assert result["per_label"]["d"]["f1"] is None and "d" in result["undefined"]["f1"]
    assert result["macro_f1"] == pytest.approx(f1_score(Y[:, :3], predictions[:, :3], average="macro"))
    assert result["macro_recall"] == pytest.approx(recall_score(Y[:, :3], predictions[:, :3], average="macro"))
    assert result["per_label"]["d"]["precision"] == 0.0  # predicted once, wrongly
    assert result["per_label"]["a"]["support"] == 3


def test_ranking_metrics_equal_sklearn():
    result = load_metric("multilabel_ranking").compute(predictions=P, references=Y, label_names=list("abcd"))
    assert result["mAP"] == pytest.approx(np.mean([average_precision_score(Y[:, i], P[:, i]) for i in range(3)]))
    assert result["roc_auc_macro"] == pytest.approx(roc_auc_score(Y[:, :3], P[:, :3], average="macro"))
    assert result["roc_auc_micro"] == pytest.approx(roc_auc_score(Y.ravel(), P.ravel()))
    assert result["per_label"]["d"] == {"average_precision": None, "roc_auc": None}
    assert result["undefined"]["roc_auc"] == ["d"]


def test_all_positive_column_has_ap_but_no_auc():
    y = np.array([[1, 0], [1, 1], [1, 0]])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.3]])
    result = compute_metrics(p, y, 0.5, ["always", "some"])
    assert result["per_concept"]["always"]["roc_auc"] is None
    assert result["per_concept"]["always"]["average_precision"] == pytest.approx(1.0)
    assert result["roc_auc"] == pytest.approx(1.0)  # only "some" counts


def test_compute_metrics_uses_per_concept_thresholds():
    result = compute_metrics(P, Y, [0.5, 0.5, 0.3, 0.7], list("abcd"))
    predictions = (P >= np.array([0.5, 0.5, 0.3, 0.7])).astype(int)
    assert result["micro_f1"] == pytest.approx(f1_score(Y, predictions, average="micro"))
    assert result["per_concept"]["c"]["threshold"] == 0.3
    assert result["roc_auc"] == pytest.approx(roc_auc_score(Y[:, :3], P[:, :3]))


def test_metrics_load_with_evaluate_from_their_path():
    import evaluate

    from mm_classifier.metrics import METRICS_DIR

    metric = evaluate.load(str(METRICS_DIR / "multilabel_classification.py"))
    assert metric.compute(predictions=[[1, 0], [1, 1]], references=[[1, 0], [0, 1]])["micro_f1"] == pytest.approx(0.8)


def test_single_label_metrics_take_the_most_probable_class():
    classes = np.array([0, 1, 2, 3, 0, 2])
    references = np.eye(4, dtype=int)[classes]
    scores = np.array([[0.7, 0.1, 0.1, 0.1], [0.2, 0.5, 0.2, 0.1], [0.5, 0.1, 0.3, 0.1], [0.1, 0.2, 0.3, 0.4],
                       [0.05, 0.3, 0.25, 0.4], [0.1, 0.1, 0.2, 0.6]])
    result = compute_metrics(scores, references, None, list("abcd"), single_label=True)
    predicted = scores.argmax(1)
    assert result["accuracy"] == result["micro_f1"] == pytest.approx(accuracy_score(classes, predicted))
    assert result["macro_f1"] == pytest.approx(f1_score(classes, predicted, average="macro"))
    # The true class among the three most probable: every row but the fifth (a is its fourth).
    assert result["top_k"] == 3 and result["top_k_accuracy"] == pytest.approx(5 / 6)
    assert result["confusion_matrix"][2] == [1, 0, 0, 1]  # c: once taken for a, once for d
    assert "threshold" not in result["per_concept"]["a"] and result["per_concept"]["c"]["recall"] == 0.0
    assert result["mAP"] == pytest.approx(np.mean([average_precision_score(references[:, i], scores[:, i])
                                                   for i in range(4)]))
    assert "subset_accuracy" not in result  # a multi-label metric
    # Three classes or fewer: top-3 accuracy would always be 1, so it is left undefined.
    three = compute_metrics(scores[:, :3], np.eye(3, dtype=int)[[0, 1, 2, 2, 0, 2]], None, single_label=True)
    assert three["top_k_accuracy"] is None
