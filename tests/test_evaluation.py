import json
import re

import numpy as np
import pytest
import torch

from mm_classifier import (
    MMClassifierError,
    MultiModalClassifier,
    MultiModalConfig,
    MultiModalProcessor,
    Predictor,
    build_tokenizer,
    load_flickr8k,
)
from mm_classifier.baselines import TextBaseline
from mm_classifier.evaluation import (
    FUSION_BASELINE,
    PHOTO_BASELINE,
    TEXT_BASELINE,
    baseline_scores,
    evaluate_model,
    pairs_for_model,
    score_pairs,
    write_pipeline_report,
)
from mm_classifier.evaluation import main as evaluation_cli
from mm_classifier.metrics import compute_metrics
from mm_classifier.pairs import multi_hot
from mm_classifier.reporting import format_metric

CONCEPTS = ["dog", "beach", "man"]  # words the tiny folder's captions use


def save_untrained_model(directory, modality, concepts=CONCEPTS, thresholds=(0.5, 0.45, 0.55)):
    """A small untrained model folder: evaluation does not care whether a model is any good."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(["a dog runs on the beach", "a man in the snow"], min_frequency=1)
    config = MultiModalConfig(
        modality=modality, backbone="test_efficientnet", image_size=32, vocab_size=len(tokenizer),
        id2label=dict(enumerate(concepts)), thresholds=list(thresholds), image_embed_dim=16, text_embed_dim=16,
        word_embed_dim=8, lstm_hidden_size=8, fusion_hidden_sizes=[16],
    )
    MultiModalClassifier(config).save_pretrained(directory)
    MultiModalProcessor.from_config(config, tokenizer).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    folders = {m: save_untrained_model(root / m, m) for m in ("fusion", "image")}
    folders["text"] = save_untrained_model(root / "text", "text", thresholds=(0.4, 0.5, 0.6))
    folders["other concepts"] = save_untrained_model(root / "other", "text", ["dog", "snow"], (0.5, 0.5))
    return folders


def as_json(value):
    return json.loads(json.dumps(value))


def test_cli_reports_a_model_its_ablations_and_comparisons(models, tiny_folder, tmp_path, capsys):
    out = tmp_path / "report"
    assert evaluation_cli(["--model", str(models["fusion"]), "--dataset", str(tiny_folder), "--split", "test",
                           "--output-dir", str(out), "--compare", str(models["text"]), "--num-examples", "4"]) == 0
    result = json.loads((out / "metrics.json").read_text())

    fusion, text = Predictor.from_pretrained(models["fusion"]), Predictor.from_pretrained(models["text"])
    pairs = pairs_for_model(fusion.model.config, str(tiny_folder), "test")
    targets = multi_hot(list(pairs["labels"]), len(CONCEPTS))
    scores = score_pairs(fusion, pairs)
    thresholds = [0.5, 0.45, 0.55]
    assert (result["num_pairs"], result["num_photos"]) == (len(pairs), len(set(pairs["image_id"])))
    assert result["metrics"] == as_json(compute_metrics(scores["both"], targets, thresholds, CONCEPTS))
    assert result["ablation"] == as_json({
        "caption removed (photo only)": compute_metrics(scores["image_only"], targets, thresholds, CONCEPTS),
        "photo removed (caption only)": compute_metrics(scores["text_only"], targets, thresholds, CONCEPTS),
    })
    assert result["compare"] == as_json(
        # Each model decides with its own thresholds.
        {"text model (text)": compute_metrics(score_pairs(text, pairs)["both"], targets, [0.4, 0.5, 0.6], CONCEPTS)}
    )

    report = (out / "report.md").read_text()
    summary = [line.split(" | ")[0] for line in report.splitlines() if line.startswith("| ") and "model |" not in line]
    assert summary[:4] == [
        "| text model (text)", "| fusion model (fusion)", "| caption removed (photo only)",
        "| photo removed (caption only)",
    ]
    for figure in ("roc_curves.png", "pr_curves.png", "examples.png"):
        assert f"]({figure})" in report and (out / figure).is_file()
    m = result["metrics"]
    assert capsys.readouterr().out == (
        f"micro-F1 {format_metric(m['micro_f1'])}, macro-F1 {format_metric(m['macro_f1'])}, "
        f"mAP {format_metric(m['mAP'])}, ROC-AUC {format_metric(m['roc_auc'])} on {len(pairs)} pairs "
        f"-> {out}/report.md\n"
    )


def test_baselines_are_fitted_on_the_training_pairs_and_decide_as_the_model_does(models, tiny_folder, tmp_path):
    predictor = Predictor.from_pretrained(models["fusion"])
    config = predictor.model.config
    pairs = pairs_for_model(config, str(tiny_folder), "test")
    targets = multi_hot(list(pairs["labels"]), len(CONCEPTS))
    found = baseline_scores(predictor, load_flickr8k(str(tiny_folder)), "test", pairs)
    assert set(found) == {TEXT_BASELINE, PHOTO_BASELINE, FUSION_BASELINE, "thresholds"}
    assert all(found[name].shape == (len(pairs), len(CONCEPTS)) for name in found["thresholds"])
    np.testing.assert_allclose(found[FUSION_BASELINE], (found[TEXT_BASELINE] + found[PHOTO_BASELINE]) / 2)
    # The text regression: TF-IDF of the training pairs' captions, labelled as the model's pairs are.
    train_pairs = pairs_for_model(config, str(tiny_folder), "train")
    text = TextBaseline(single_label=False).fit(list(train_pairs["caption"]), multi_hot(list(train_pairs["labels"]),
                                                                                        len(CONCEPTS)))
    np.testing.assert_allclose(found[TEXT_BASELINE], text.predict(list(pairs["caption"])))
    # The photo regression gives every pair of a photo the same scores.
    first = {}
    for row, image_id in enumerate(pairs["image_id"]):
        np.testing.assert_allclose(found[PHOTO_BASELINE][row], found[PHOTO_BASELINE][first.setdefault(image_id, row)])
    result = evaluate_model(models["fusion"], str(tiny_folder), output_dir=tmp_path / "with", num_examples=2)
    for name in found["thresholds"]:
        assert result["baselines"][f"{name} (baseline)"] == as_json(
            compute_metrics(found[name], targets, found["thresholds"][name], CONCEPTS))
    report = (tmp_path / "with" / "report.md").read_text()
    assert "Labels are mined leave-one-out" in report and re.search(r"Best by mAP: .*ahead of", report)
    without = evaluate_model(models["fusion"], str(tiny_folder), output_dir=tmp_path / "without", num_examples=2,
                             baselines=False)
    assert without["baselines"] == {} and "(baseline)" not in (tmp_path / "without" / "report.md").read_text()


def test_pair_scores_equal_predictions_pair_by_pair(models, tiny_folder):
    predictor = Predictor.from_pretrained(models["fusion"])
    pairs = pairs_for_model(predictor.model.config, str(tiny_folder), "validation").select(range(12))
    scores = score_pairs(predictor, pairs, batch_size=2)  # photos encoded once, in several batches
    photos, captions = list(pairs["image"]), list(pairs["caption"])
    expected = {
        "both": predictor.predict_logits(photos, captions), "image_only": predictor.predict_logits(photos),
        "text_only": predictor.predict_logits(captions=captions),
    }
    assert set(scores) == set(expected)
    for view, logits in expected.items():
        assert scores[view].shape == (12, len(CONCEPTS))
        np.testing.assert_allclose(scores[view], torch.sigmoid(logits).numpy(), atol=1e-5, err_msg=view)


def test_a_single_modality_model_has_no_ablation_and_a_default_output_folder(tiny_folder, tmp_path):
    model_dir = save_untrained_model(tmp_path / "text", "text")
    result = evaluate_model(model_dir, str(tiny_folder), split="validation", num_examples=2)
    assert (result["split"], result["ablation"], result["compare"]) == ("validation", {}, {})
    assert json.loads((model_dir / "eval_validation" / "metrics.json").read_text()) == as_json(result)
    predictor = Predictor.from_pretrained(model_dir)
    assert list(score_pairs(predictor, pairs_for_model(predictor.model.config, str(tiny_folder), "test"))) == ["both"]


def test_evaluation_errors_a_user_can_cause(models, tiny_folder, tmp_path):
    with pytest.raises(MMClassifierError, match="predicts other concepts"):
        evaluate_model(models["text"], str(tiny_folder), output_dir=tmp_path, compare=[models["other concepts"]])
    with pytest.raises(MMClassifierError, match="Unknown split 'dev'"):
        evaluate_model(models["text"], str(tiny_folder), split="dev", output_dir=tmp_path)


def test_cli_reports_a_missing_model(tmp_path, capsys):
    assert evaluation_cli(["--model", str(tmp_path / "nope"), "--dataset", "sample"]) == 2
    assert "No model at" in capsys.readouterr().err


def test_pipeline_report_puts_the_stages_side_by_side_with_their_training_time(models, tiny_folder, tmp_path):
    text_dir = save_untrained_model(tmp_path / "text", "text")
    stage_results = {"best_epoch": 2, "epochs_run": 4, "train_seconds": 3.5, "stage_seconds": 5.0}
    (text_dir / "all_results.json").write_text(json.dumps(stage_results))
    out = tmp_path / "report"
    report_file = write_pipeline_report(out, {"text": text_dir, "image": models["image"]}, str(tiny_folder),
                                        split="validation")
    assert report_file == out / "report.md"
    result = json.loads((out / "metrics.json").read_text())
    # Without a fusion model, the image-only model is the main one and the text-only one is compared with it.
    assert (result["model"], list(result["compare"]), result["split"]) == (
        str(models["image"]), ["text model (text)"], "validation",
    )
    report = report_file.read_text()
    assert report.startswith("# Image-only, text-only and fusion models compared, with the plain baselines\n")
    # Only a stage whose folder has all_results.json gets a row.
    assert report.endswith("## Training time\n\n| model | best epoch | epochs run | training s | stage s |\n"
                           "|---|---:|---:|---:|---:|\n| text | 2 | 4 | 3.5 | 5.0 |\n")


def test_a_photo_gone_since_loading_is_left_out_with_a_warning(models, tiny_folder, tmp_path):
    import shutil

    from mm_classifier import DataWarning
    from mm_classifier.evaluation import readable_pairs

    copy = shutil.copytree(tiny_folder, tmp_path / "copy")
    pairs = pairs_for_model(Predictor.from_pretrained(models["fusion"]).model.config, str(copy), "test")
    gone = pairs[0]["image_id"]
    next(p for p in (copy / "images").iterdir() if p.name == gone).unlink()
    with pytest.warns(DataWarning, match=f"Left out 1 photo.*{gone}"):
        kept, bad = readable_pairs(pairs)
    assert bad == [gone] and gone not in set(kept["image_id"])
    assert len(kept) == sum(1 for image_id in pairs["image_id"] if image_id != gone)
