import json

import numpy as np

from mm_classifier.evaluation import main as evaluation_cli
from mm_classifier.evaluation import SHRINKAGE_STRENGTHS, select_threshold_shrinkage, tune_thresholds


def test_tuned_thresholds_maximise_f1_on_separable_scores():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    p = np.array([[0.40, 0.9], [0.35, 0.2], [0.1, 0.8], [0.2, 0.1]])
    thresholds = tune_thresholds(p, y, shrinkage=0)  # each concept's own threshold
    assert 0.2 < thresholds[0] <= 0.35  # between the best negative and the lowest positive
    assert ((p[:, 0] >= thresholds[0]) == y[:, 0]).all()
    assert tune_thresholds(p, np.zeros_like(y)) == [0.5, 0.5]  # no positive at all: the default stays
    no_second = y * [1, 0]  # a concept without positives takes the shared threshold, whatever the strength
    for strength in (0, 10, float("inf")):
        thresholds = tune_thresholds(p, no_second, shrinkage=strength)
        assert np.isfinite(thresholds).all() and thresholds[1] == tune_thresholds(p, no_second, shrinkage=float("inf"))[1]


def test_shrinkage_pulls_thresholds_toward_the_shared_one():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [1, 1], [0, 0]])
    p = np.array([[0.9, 0.30], [0.8, 0.1], [0.2, 0.35], [0.3, 0.05], [0.7, 0.4], [0.1, 0.2]])
    own = np.array(tune_thresholds(p, y, shrinkage=0))
    shared = np.array(tune_thresholds(p, y, shrinkage=float("inf")))
    assert shared[0] == shared[1] and own[0] != own[1]
    middle = np.array(tune_thresholds(p, y, shrinkage=3))  # 3 positives each: halfway
    assert np.allclose(middle, (own + shared) / 2)


def test_shrinkage_is_chosen_on_held_out_photos():
    # Concept 1 is rare and its scores are noise: its own threshold fits that noise, so cross-validation
    # prefers thresholds close to the shared one. Concept 0's scores are informative and calibrated.
    rng = np.random.default_rng(0)
    photos = np.repeat(np.arange(300), 5)
    y = np.stack([rng.random(300) < 0.4, rng.random(300) < 0.05], 1)[photos].astype(int)
    p = np.stack([np.clip(y[:, 0] * 0.5 + rng.random(1500) * 0.5, 0, 1), rng.random(1500) * 0.6], 1)
    strength, scores = select_threshold_shrinkage(p, y, groups=photos)
    assert set(scores) == set(SHRINKAGE_STRENGTHS)
    assert strength >= 30 and scores[strength] == max(scores.values())
    assert scores[strength] > scores[0.0]
    # Too few photos for the folds: the shared threshold, without cross-validation.
    assert select_threshold_shrinkage(p[:15], y[:15], groups=photos[:15]) == (float("inf"), {})


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
