"""ONNX export and the torch-free runtime: the same probabilities as PyTorch, for every kind of model and input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import CAPTIONS, save_tiny_model
from mm_classifier import MMClassifierError, Predictor
from mm_classifier.export import export
from mm_classifier.export import main as export_cli
from mm_classifier.onnx_runtime import OnnxPredictor

TOLERANCE = 1e-4  # the parity bound on probabilities


def photos(count: int):
    """Photos of several sizes and kinds: paths are tested elsewhere, here arrays and PIL images."""
    generator = np.random.default_rng(count)
    arrays = [generator.integers(0, 256, (24 + i % 5 * 9, 40 + i % 3 * 7, 3), dtype=np.uint8) for i in range(count)]
    return [Image.fromarray(a) if i % 2 else a for i, a in enumerate(arrays)]


def captions(count: int):
    return [(CAPTIONS[i % 3] + " and more words" * (i % 4)) if i % 7 else "" for i in range(count)]


def assert_same(torch_predictor, onnx_predictor, images, texts):
    expected = torch_predictor.probability_rows(images, texts)
    got = onnx_predictor.probability_rows(images, texts)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < TOLERANCE


@pytest.mark.parametrize("settings", [
    {"text_encoder": "lstm"},
    {"text_encoder": "bag"},
    {"text_encoder": "transformers"},
    {"modality": "image", "backbone": "test_resnet"},
    {"modality": "text", "text_encoder": "bag"},
    {"backbone": "test_convnext", "image_feature_blocks": [1, 2], "image_local_projection": True,
     "image_mirror_average": True},
    {"backbone": "test_vit", "image_size": 160, "image_feature_blocks": [1]},  # at its own size (no resampling)
    {"problem_type": "single_label_classification", "thresholds": None, "calibration_temperatures": [2.0] * 3},
    {"calibration_temperatures": [1.5, 0.8, 2.0], "calibration_biases": [0.1, -0.2, 0.3]},
], ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_onnx_probabilities_equal_pytorch_s_for_each_input_and_batch_size(tmp_path, settings):
    settings = dict(settings)
    modality, encoder = settings.pop("modality", "fusion"), settings.pop("text_encoder", "lstm")
    save_tiny_model(tmp_path / "model", modality, encoder, **settings)
    torch_predictor = Predictor.from_pretrained(tmp_path / "model", device="cpu")
    onnx_predictor = OnnxPredictor.from_pretrained(export(tmp_path / "model"))
    config = torch_predictor.config
    for batch in (1, 32):
        if config.uses_image:
            assert_same(torch_predictor, onnx_predictor, photos(batch), None)
        if config.uses_text:
            assert_same(torch_predictor, onnx_predictor, None, captions(batch))
        if config.modality == "fusion":
            assert_same(torch_predictor, onnx_predictor, photos(batch), captions(batch))
    # Same Prediction objects: the same concepts found, with the same thresholds.
    images = photos(4) if config.uses_image else None
    texts = captions(4) if config.uses_text else None
    for ours, theirs in zip(onnx_predictor.predict(images, texts), torch_predictor.predict(images, texts), strict=True):
        assert ours.predicted == theirs.predicted


def test_export_writes_a_separate_model_folder_and_int8_graphs(tmp_path, capsys):
    save_tiny_model(tmp_path / "model")
    assert export_cli([str(tmp_path / "model"), "--output", str(tmp_path / "int8"), "--quantize", "int8"]) == 0
    assert "differ from PyTorch's by at most" in capsys.readouterr().out
    files = {p.name for p in (tmp_path / "int8").iterdir()}
    assert {"config.json", "processor_config.json", "tokenizer.json", "onnx"} <= files
    assert not files & {"model.safetensors", "modeling.py"}  # the runtime reads neither
    manifest = json.loads((tmp_path / "int8" / "onnx" / "export.json").read_text())
    assert manifest["quantization"] == "int8" and manifest["opset"] == 17
    assert set(manifest["graphs"]) == {"image", "text", "classifier"}
    quantized = OnnxPredictor.from_pretrained(tmp_path / "int8")
    reference = Predictor.from_pretrained(tmp_path / "model", device="cpu")
    difference = np.abs(quantized.probability_rows(photos(8), captions(8))
                        - reference.probability_rows(photos(8), captions(8))).max()
    assert 0 < difference < 0.1  # quantized: close, not equal


def test_the_onnx_backend_imports_no_torch_transformers_or_timm(tmp_path, photo):
    save_tiny_model(tmp_path / "model")
    export(tmp_path / "model")
    script = (
        "import sys\n"
        "from mm_classifier import Predictor\n"
        f"predictor = Predictor.from_pretrained({str(tmp_path / 'model')!r}, backend='onnx')\n"
        f"result = predictor.predict({photo!r}, 'a dog on the beach')[0]\n"
        "assert set(result.probabilities) == {'dog', 'beach', 'man'}, result\n"
        "print(sorted(m for m in ('torch', 'transformers', 'timm') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_onnx_backend_errors_are_clear(tmp_path):
    save_tiny_model(tmp_path / "model")
    with pytest.raises(MMClassifierError, match="python -m mm_classifier.export"):
        Predictor.from_pretrained(tmp_path / "model", backend="onnx")
    with pytest.raises(MMClassifierError, match="Unknown backend 'tf'"):
        Predictor.from_pretrained(tmp_path / "model", backend="tf")
    predictor = OnnxPredictor.from_pretrained(export(tmp_path / "model"))
    with pytest.raises(MMClassifierError, match="PyTorch backend"):
        predictor.explain(photos(1)[0], "a dog")
    with pytest.raises(MMClassifierError, match="2 photos but 3 captions"):
        predictor.predict(photos(2), captions(3))
    with pytest.raises(MMClassifierError, match="Captions must be strings"):
        predictor.predict(None, [3])
    with pytest.raises(MMClassifierError, match="too small"):
        predictor.predict(np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(MMClassifierError, match="Unknown quantization"):
        export(tmp_path / "model", quantize="int4")
    graph = tmp_path / "model" / "onnx" / "classifier.onnx"
    graph.write_bytes(graph.read_bytes()[:100])  # cut short, as by a full disk
    with pytest.raises(MMClassifierError, match="Cannot load the ONNX graphs"):
        OnnxPredictor.from_pretrained(tmp_path / "model")


def test_a_folder_from_before_the_newer_config_fields_exports_and_is_described(tmp_path):
    from mm_classifier.serving import describe_model, model_description

    save_tiny_model(tmp_path / "model")
    path = tmp_path / "model" / "config.json"
    config = json.loads(path.read_text())
    for field in ("problem_type", "text_encoder_type", "text_model_name", "text_model_config", "text_trainable_layers",
                  "calibration_temperatures", "calibration_biases"):
        config.pop(field, None)
    path.write_text(json.dumps(config))
    predictor = OnnxPredictor.from_pretrained(export(tmp_path / "model"))
    assert not predictor.config.single_label and len(predictor.predict(photos(2), captions(2))) == 2
    assert "word-level BiLSTM caption encoder" in model_description(predictor, describe_model(predictor))
