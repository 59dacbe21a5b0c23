import json

import numpy as np

from mm_classifier.evaluation import main as evaluation_cli
from mm_classifier.evaluation import tune_thresholds


def test_tuned_thresholds_maximise_f1_on_separable_scores():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    p = np.array([[0.40, 0.9], [0.35, 0.2], [0.1, 0.8], [0.2, 0.1]])
    thresholds = tune_thresholds(p, y)
    assert 0.2 < thresholds[0] <= 0.35  # between the best negative and the lowest positive
    assert ((p >= thresholds) == y).all() or ((p[:, 0] >= thresholds[0]) == y[:, 0]).all()
    assert tune_thresholds(p, np.zeros_like(y)) == [0.5, 0.5]  # no positive: the default stays


def test_report_end_to_end_for_a_tiny_model(tiny_model, tiny_folder, tmp_path, capsys):
    out = tmp_path / "report"
    assert evaluation_cli(["--model", str(tiny_model), "--dataset", str(tiny_folder), "--split", "test",
                           "--output-dir", str(out), "--compare", str(tiny_model), "--num-examples", "4"]) == 0
    for name in ("metrics.json", "report.md", "roc_curves.png", "pr_curves.png", "examples.png"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("micro_f1", "macro_f1", "samples_f1", "micro_precision", "micro_recall", "mAP", "roc_auc",
                "roc_auc_micro", "subset_accuracy", "hamming_loss"):
        assert key in metrics["metrics"], key
    assert set(metrics["ablation"]) == {"caption removed (photo only)", "photo removed (caption only)"}
    assert len(metrics["compare"]) == 1
    report = (out / "report.md").read_text()
    assert "| concept | support |" in report and "caption removed" in report
    assert "micro-F1" in capsys.readouterr().out


def test_cli_reports_a_missing_model(tmp_path, capsys):
    assert evaluation_cli(["--model", str(tmp_path / "nope"), "--dataset", "sample"]) == 2
    assert "No model at" in capsys.readouterr().err
