import json
import re

import datasets
import numpy as np
from PIL import Image

from mm_classifier import plots
from mm_classifier.metrics import compute_metrics
from mm_classifier.reporting import (
    SUMMARY_KEYS,
    format_metric,
    render_report,
    training_time_section,
    write_figures,
    write_report,
)

CONCEPTS = ["dog", "cat"]
THRESHOLDS = [0.5, 0.45]
# Dog: predicted for rows 0, 1 and 3, true for rows 0 and 1. Cat: never true, never predicted.
PROBABILITIES = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.3], [0.6, 0.4]])
TARGETS = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])


def evaluation_result():
    metrics = compute_metrics(PROBABILITIES, TARGETS, THRESHOLDS, CONCEPTS)
    result = {
        "model": "outputs/fusion", "dataset": "sample", "split": "test", "num_pairs": 4, "num_photos": 2,
        "metrics": metrics, "ablation": {}, "compare": {},
    }
    return result, metrics


def test_metrics_are_shown_with_three_decimals_or_as_not_available():
    assert format_metric(0.12345) == "0.123"
    assert format_metric(1) == "1.000"
    assert format_metric(None) == "n/a"


def test_report_has_a_summary_row_per_model_and_a_row_per_concept():
    result, metrics = evaluation_result()
    report = render_report(result, {"fusion model (fusion)": metrics, "older model": {"micro_f1": 0.5}}, title="T")
    lines = report.splitlines()
    assert lines[0] == "# T"
    assert "`outputs/fusion` on `sample`, split `test`: 4 (photo, caption) pairs from 2 photos" in report
    header = "| model | " + " | ".join(label for _, label in SUMMARY_KEYS) + " |"
    assert lines[lines.index(header) + 2] == (
        "| fusion model (fusion) | 0.800 | 0.800 | 0.750 | 0.667 | 1.000 | 1.000 | 1.000 | 1.000 | 0.750 | 0.125 |"
    )
    # A row without a metric shows n/a for it.
    assert lines[lines.index(header) + 3] == "| older model | 0.500 |" + " n/a |" * (len(SUMMARY_KEYS) - 1)
    assert "| dog | 2 | 0.50 | 0.667 | 1.000 | 0.800 | 1.000 | 1.000 |" in lines
    assert "| cat | 0 | 0.45 | n/a | n/a | n/a | n/a | n/a |" in lines
    assert "- precision (never predicted): cat" in lines
    assert "- roc_auc (no positive or no negative example): cat" in lines
    assert render_report(result, {}).startswith("# Evaluation report\n")


def test_report_without_undefined_metrics_has_no_such_section():
    result, _ = evaluation_result()
    both_defined = np.array([[1, 1], [1, 0], [0, 0], [0, 1]])  # each concept has positives and negatives
    result["metrics"] = compute_metrics(PROBABILITIES, both_defined, [0.5, 0.3], CONCEPTS)  # both predicted
    assert not any(result["metrics"]["undefined"].values())
    assert "Undefined metrics" not in render_report(result, {})


def test_write_report_writes_the_result_and_its_markdown(tmp_path):
    result, metrics = evaluation_result()
    write_report(tmp_path, result, {"a model": metrics}, title="Compared")
    assert json.loads((tmp_path / "metrics.json").read_text()) == result
    assert (tmp_path / "report.md").read_text() == render_report(result, {"a model": metrics}, title="Compared")


def pair_rows():
    """Three photos with two captions each, as the pair columns the figures read."""
    colours = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255)}
    image_ids = ["a", "a", "b", "b", "c", "c"]
    return datasets.Dataset.from_dict(
        {
            "image_id": image_ids,
            "image": [Image.new("RGB", (8, 8), colours[i]) for i in image_ids],
            "caption": [f"caption {n} of {i}" for n, i in enumerate(image_ids)],
        },
        features=datasets.Features(
            {"image_id": datasets.Value("string"), "image": datasets.Image(), "caption": datasets.Value("string")}
        ),
    )


def test_figures_are_the_ones_the_report_links_to(tmp_path):
    result, _ = evaluation_result()
    pairs = pair_rows()
    probabilities, targets = np.tile(PROBABILITIES, (2, 1))[:6], np.tile(TARGETS, (2, 1))[:6]
    write_figures(tmp_path, pairs, probabilities, targets, THRESHOLDS, CONCEPTS, num_examples=2)
    linked = re.findall(r"\]\(([^)]+\.png)\)", render_report(result, {}))
    assert sorted(linked) == ["examples.png", "pr_curves.png", "reliability.png", "roc_curves.png"]
    for name in linked:
        with Image.open(tmp_path / name) as figure:
            figure.verify()  # a readable PNG


def test_examples_show_one_pair_per_photo_with_true_and_predicted_concepts(tmp_path, monkeypatch):
    shown = []

    def spy(examples):
        shown.append(examples)
        return real(examples)

    real = plots.plot_examples
    monkeypatch.setattr(plots, "plot_examples", spy)
    pairs = pair_rows()
    probabilities = np.array([[0.9, 0.1], [0.2, 0.9], [0.3, 0.5], [0.6, 0.4], [0.7, 0.2], [0.1, 0.1]])
    targets = np.array([[1, 0], [1, 1], [0, 1], [1, 0], [1, 0], [0, 0]])
    write_figures(tmp_path, pairs, probabilities, targets, THRESHOLDS, CONCEPTS, num_examples=2)
    # Spread over the split: rows 0 and 3 (photos a and b).
    assert [(e["caption"], e["true"], e["predicted"]) for e in shown[0]] == [
        ("caption 0 of a", ["dog"], ["dog"]), ("caption 3 of b", ["dog"], ["dog"]),
    ]
    write_figures(tmp_path, pairs, probabilities, targets, THRESHOLDS, CONCEPTS, num_examples=5)
    # More examples asked for than there are photos: one per photo, never two of the same photo.
    assert [(e["caption"], e["true"], e["predicted"]) for e in shown[1]] == [
        ("caption 0 of a", ["dog"], ["dog"]), ("caption 2 of b", ["cat"], ["cat"]),
        ("caption 4 of c", ["dog"], ["dog"]),
    ]
    assert shown[1][0]["image"].size == (8, 8)  # decoded photos


def test_training_time_section_has_a_row_per_stage_with_results(tmp_path):
    for stage in ("fusion", "text"):
        (tmp_path / stage).mkdir()
    results = {"best_epoch": 4, "epochs_run": 6, "train_seconds": 12.5, "stage_seconds": 20.0}
    (tmp_path / "fusion" / "all_results.json").write_text(json.dumps(results))
    section = training_time_section({"fusion": tmp_path / "fusion", "text": tmp_path / "text"})
    assert section.startswith("\n## Training time\n")
    assert section.endswith("|---|---:|---:|---:|---:|\n| fusion | 4 | 6 | 12.5 | 20.0 |\n")
