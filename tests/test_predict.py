"""The prediction API (Predictor) and the prediction CLI, on the tiny trained model."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel

from mm_classifier import MMClassifierError, MultiModalProcessor, Predictor
from mm_classifier.predict import main as predict_cli
from mm_classifier.prediction import BasePredictor

RUN_RECORDS = ("all_results.json", "training_args.json", "README.md", "*.png")  # about the run, not the model


def test_model_folder_holds_everything_needed_to_predict(tiny_model, predictor, photo, tmp_path):
    # Moved elsewhere without the run's records, the folder still gives the very same predictions.
    alone = shutil.copytree(tiny_model, tmp_path / "moved", ignore=shutil.ignore_patterns(*RUN_RECORDS))
    caption = "a man and a dog on the grass"
    assert Predictor.from_pretrained(alone).predict(photo, caption) == predictor.predict(photo, caption)
    config = json.loads((tiny_model / "config.json").read_text())
    assert len(config["thresholds"]) == len(config["id2label"])
    assert sorted(config["concept_words"]) == sorted(predictor.concepts)
    assert all(concept in words for concept, words in config["concept_words"].items())
    # The run's records: the model card quotes the test scores and names every concept.
    results = json.loads((tiny_model / "all_results.json").read_text())
    card = (tiny_model / "README.md").read_text()
    assert f"{results['test_micro_f1']:.3f}" in card and f"{results['test_mAP']:.3f}" in card
    assert all(f"`{concept}`" in card for concept in predictor.concepts)
    with Image.open(tiny_model / "learning_curves.png") as curves:
        assert curves.format == "PNG"
        curves.verify()


def test_loading_shows_no_progress_bar_and_keeps_the_callers_setting(tiny_model, capsys):
    from transformers.utils import logging as transformers_logging

    for enabled in (True, False):
        (transformers_logging.enable_progress_bar if enabled else transformers_logging.disable_progress_bar)()
        Predictor.from_pretrained(tiny_model)
        assert "Loading weights" not in capsys.readouterr().err
        assert transformers_logging.is_progress_bar_enabled() is enabled
    transformers_logging.enable_progress_bar()


def test_predictions_for_photo_caption_and_both(predictor, tiny_model, photo):
    caption = "a man and a dog on the grass"
    both, = predictor.predict(photo, caption)
    photo_only, = predictor.predict(photo)
    caption_only, = predictor.predict(None, caption)
    # The probabilities are the calibrated sigmoids of the logits of the model and processor loaded the transformers
    # way (train.py fitted a temperature and a bias per concept on the validation split).
    assert predictor.model.config.calibration_temperatures is not None
    model = AutoModel.from_pretrained(tiny_model).eval()
    processor = MultiModalProcessor.from_pretrained(tiny_model)
    thresholds = dict(zip(predictor.concepts, predictor.model.config.thresholds, strict=True))
    for prediction, inputs in ((both, {"images": photo, "text": caption}), (photo_only, {"images": photo}),
                               (caption_only, {"text": caption})):
        assert list(prediction.probabilities) == predictor.concepts
        with torch.no_grad():
            logits = model(**processor(**inputs)).logits
            calibrated = logits / torch.tensor(model.config.calibration_temperatures)
            expected = torch.sigmoid(calibrated + torch.tensor(model.config.calibration_biases))[0]
        assert list(prediction.probabilities.values()) == pytest.approx(expected.tolist(), abs=1e-5)
        assert set(prediction.predicted) == {c for c, p in prediction.probabilities.items() if p >= thresholds[c]}
    # Each input counts: the photo alone, the caption alone and both give three different answers.
    assert both.probabilities != photo_only.probabilities != caption_only.probabilities != both.probabilities
    assert len(predictor.predict(photo, "x", thresholds=0.0)[0].predicted) == len(predictor.concepts)
    assert predictor.predict(photo, "x", thresholds=1.0 + 1e-9)[0].predicted == []


def test_predicted_concepts_come_most_probable_first_and_ties_in_the_concepts_order():
    class Fixed(BasePredictor):
        config = SimpleNamespace(concepts=["a", "b", "c", "d"], single_label=False, thresholds=[0.5] * 4)

        def probability_rows(self, images=None, captions=None):
            return np.array([[0.6, 0.9, 0.6, 0.1]])

    assert Fixed().predict(None, "x")[0].predicted == ["b", "a", "c"]
    assert Fixed().predict(None, "x", top_k=2)[0].predicted == ["b", "a"]
    assert Fixed().predict(None, "x", thresholds=[0.0, 0.0, 0.0, 0.0])[0].predicted == ["b", "a", "c", "d"]


def test_batch_equals_single_and_inputs_can_be_pil_or_numpy(predictor, photo):
    image = Image.open(photo)
    single = predictor.predict(photo, "a dog")[0].probabilities
    batch = predictor.predict([photo, image, np.asarray(image)], ["a dog"] * 3)
    for prediction in batch:
        assert prediction.probabilities == pytest.approx(single, abs=1e-5)


def test_predictor_errors(predictor, tmp_path, photo):
    with pytest.raises(MMClassifierError, match="No model at"):
        Predictor.from_pretrained(tmp_path / "missing")
    with pytest.raises(MMClassifierError, match="not a saved mm_classifier model"):
        Predictor.from_pretrained(tmp_path)
    with pytest.raises(MMClassifierError, match="2 photos but 3 captions"):
        predictor.predict([photo, photo], ["a", "b", "c"])
    with pytest.raises(MMClassifierError, match="none was given"):
        predictor.predict()


def test_cli_good_and_bad_photos(tiny_model, photo, tmp_path, capsys):
    (tmp_path / "bad.jpg").write_text("nope")
    out_json = tmp_path / "out.json"
    code = predict_cli(["--model", str(tiny_model), photo, str(tmp_path / "bad.jpg"), "--caption", "a dog",
                        "--json", str(out_json), "--plot-dir", str(tmp_path / "plots")])
    captured = capsys.readouterr()
    assert code == 0
    assert "bad.jpg: skipped" in captured.err and "scene_00000.png:" in captured.out
    records = json.loads(out_json.read_text())
    assert len(records) == 1 and records[0]["caption"] == "a dog"
    assert set(records[0]) == {"image", "caption", "probabilities", "predicted"}
    expected, = Predictor.from_pretrained(tiny_model).predict(photo, "a dog")
    assert records[0]["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    assert records[0]["predicted"] == expected.predicted
    # One figure per photo that could be read.
    assert [path.name for path in (tmp_path / "plots").iterdir()] == ["scene_00000.png"]
    with Image.open(tmp_path / "plots" / "scene_00000.png") as figure:
        assert figure.format == "PNG" and figure.width > figure.height  # the photo beside the bar chart
    assert predict_cli(["--model", str(tmp_path / "nothing"), photo]) == 2
    assert "No model at" in capsys.readouterr().err


def test_cli_on_the_onnx_backend(tiny_model, photo, tmp_path, capsys):
    from mm_classifier.export import export

    folder = export(tiny_model, tmp_path / "onnx_model")
    out_json = tmp_path / "out.json"
    assert predict_cli(["--model", str(folder), "--backend", "onnx", photo, "--caption", "a dog",
                        "--json", str(out_json)]) == 0
    record, = json.loads(out_json.read_text())
    expected, = Predictor.from_pretrained(tiny_model).predict(photo, "a dog")
    assert record["probabilities"] == pytest.approx(expected.probabilities, abs=1e-4)
    assert record["predicted"] == expected.predicted
    assert predict_cli(["--model", str(folder), "--backend", "onnx", "--caption", "a dog"]) == 0
    assert "(caption only): " in capsys.readouterr().out
    assert predict_cli(["--model", str(folder), "--backend", "onnx", photo, "--explain", str(tmp_path / "x")]) == 2
    assert "--explain needs gradients" in capsys.readouterr().err
