import json

import numpy as np
import pytest
from PIL import Image

from mm_classifier import MMClassifierError, Predictor
from mm_classifier.predict import main as predict_cli



def test_model_folder_holds_everything_needed_to_predict(tiny_model):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "all_results.json",
                 "README.md", "learning_curves.png"):
        assert (tiny_model / name).is_file(), name
    config = json.loads((tiny_model / "config.json").read_text())
    assert len(config["thresholds"]) == len(config["id2label"]) and config["concept_words"]


def test_predictions_for_photo_caption_and_both(predictor, photo):
    both, = predictor.predict(photo, "a man and a dog on the grass")
    photo_only, = predictor.predict(photo)
    caption_only, = predictor.predict(None, "a man and a dog on the grass")
    for prediction in (both, photo_only, caption_only):
        assert list(prediction.probabilities) == predictor.concepts
        assert all(0 <= p <= 1 for p in prediction.probabilities.values())
        thresholds = dict(zip(predictor.concepts, predictor.model.config.thresholds))
        assert set(prediction.predicted) == {c for c, p in prediction.probabilities.items() if p >= thresholds[c]}
    assert predictor.predict(photo, "x", thresholds=0.0)[0].predicted.__len__() == len(predictor.concepts)
    assert predictor.predict(photo, "x", thresholds=1.0 + 1e-9)[0].predicted == []


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
    assert (tmp_path / "plots" / "scene_00000.png").stat().st_size > 0
    assert predict_cli(["--model", str(tmp_path / "nothing"), photo]) == 2
    assert "No model at" in capsys.readouterr().err
