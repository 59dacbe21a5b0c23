"""A saved model folder: self-contained for programs without mm_classifier, and safe for our own loaders."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor

from conftest import CAPTIONS, save_tiny_model
from mm_classifier import (
    PIPELINE_TASK,
    MMClassifierError,
    MultiModalClassifier,
    MultiModalConfig,
    MultiModalImageProcessor,
    MultiModalProcessor,
    Predictor,
)
from mm_classifier.hub import push_folder

CODE_FILES = ["configuration.py", "errors.py", "fusion.py", "images.py", "modeling.py", "pipeline.py", "processing.py",
              "text_encoders.py", "tokens.py"]
DATA_FILES = ["config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json"]


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.effect_mandelbrot((64, 48), (-2, -1.5, 1, 1.5), 40).convert("RGB").save(path)
    return path


def test_saving_writes_code_files_auto_map_and_pipeline(tmp_path):
    folder = tmp_path / "model"
    save_tiny_model(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(CODE_FILES + DATA_FILES)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration.MultiModalConfig", "AutoModel": "modeling.MultiModalClassifier"}
    assert config["custom_pipelines"] == {
        PIPELINE_TASK: {"impl": "pipeline.MultiModalClassificationPipeline", "pt": ["AutoModel"], "type": "multimodal"}
    }
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing.MultiModalProcessor"}
    image_auto_map = processor_config["image_processor"]["auto_map"]
    assert image_auto_map["AutoImageProcessor"] == "processing.MultiModalImageProcessor"
    # The copied code needs no training dependency.
    code = "\n".join((folder / name).read_text() for name in CODE_FILES)
    for heavy in ("accelerate", "datasets", "gradio", "matplotlib", "evaluate", "sklearn"):
        assert f"import {heavy}" not in code and f"from {heavy}" not in code


CHILD = """
import importlib.util, json, sys
# The package is installed (editable) in this virtual environment: hide it, as if only public packages were there.
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
assert importlib.util.find_spec("mm_classifier") is None
import torch
from transformers import AutoConfig, AutoModel, AutoProcessor, pipeline

folder, cases, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
errors = {}
for name, load in (("AutoModel", AutoModel.from_pretrained), ("pipeline", lambda f: pipeline(model=f))):
    try:
        load(folder)
    except Exception as err:
        errors[name] = str(err)
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    logits = [model(**processor(**case)).logits[0].tolist() for case in cases]
pipe = pipeline(model=folder, trust_remote_code=True)
scores = pipe([{"image": case.get("images"), "text": case.get("text")} for case in cases], batch_size=2)
classes = [type(part).__name__ for part in (config, model, processor, pipe)]
loaded = [name for name in sys.modules if name.startswith("mm_classifier")]
with open(out, "w") as file:
    json.dump({"classes": classes, "loaded": loaded, "logits": logits, "pipeline": scores, "errors": errors}, file)
"""


@pytest.mark.parametrize("text_encoder", ["lstm", "bag", "transformers"])
def test_folder_loads_without_mm_classifier(tmp_path, photo, text_encoder):
    folder = tmp_path / "model"
    model, processor = save_tiny_model(folder, text_encoder=text_encoder)
    cases = [{"images": str(photo), "text": CAPTIONS[0]}, {"images": str(photo)}, {"text": CAPTIONS[0]}]
    out = tmp_path / "child.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-I", "-c", CHILD, str(folder), json.dumps(cases), str(out)], cwd=tmp_path,
                         env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    child = json.loads(out.read_text())
    assert child["classes"] == ["MultiModalConfig", "MultiModalClassifier", "MultiModalProcessor",
                                "MultiModalClassificationPipeline"]
    assert child["loaded"] == []
    # Without trust_remote_code, transformers says what to do (and runs nothing).
    assert set(child["errors"]) == {"AutoModel", "pipeline"}
    for message in child["errors"].values():
        assert "contains custom code" in message and "trust_remote_code=True" in message
    # The same logits, and pipeline scores, as the package's.
    for case, logits, results in zip(cases, child["logits"], child["pipeline"], strict=True):
        with torch.no_grad():
            expected = model(**processor(**case)).logits[0]
        torch.testing.assert_close(torch.tensor(logits), expected, rtol=0, atol=1e-5)
        scores = {result["label"]: result["score"] for result in results}
        assert [scores[c] for c in model.config.concepts] == pytest.approx(torch.sigmoid(expected).tolist(), abs=1e-5)


def test_auto_classes_in_our_process_use_the_package_classes(tmp_path):
    folder = tmp_path / "model"
    save_tiny_model(folder)
    for path in CODE_FILES:  # whatever the folder's code says, this process never runs it
        (folder / path).write_text("raise SystemExit('the folder code ran')\n")
    for trust in (None, True):  # even when told to trust it
        assert type(AutoConfig.from_pretrained(folder, trust_remote_code=trust)) is MultiModalConfig
        assert type(AutoModel.from_pretrained(folder, trust_remote_code=trust)) is MultiModalClassifier
        assert type(AutoProcessor.from_pretrained(folder, trust_remote_code=trust)) is MultiModalProcessor
        assert type(AutoImageProcessor.from_pretrained(folder, trust_remote_code=trust)) is MultiModalImageProcessor


def test_predictor_reads_only_json_and_safetensors(tmp_path, photo):
    folder = tmp_path / "model"
    model, processor = save_tiny_model(folder)
    expected = torch.sigmoid(model(**processor(images=photo, text="a dog")).logits)[0].tolist()
    for path in CODE_FILES:
        (folder / path).write_text("raise SystemExit('the folder code ran')\n")
    probabilities = Predictor.from_pretrained(folder, device="cpu").predict(photo, "a dog")[0].probabilities
    assert list(probabilities.values()) == pytest.approx(expected, abs=1e-5)
    # Weights only as a pickle: refused, never unpickled.
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(MMClassifierError, match="model.safetensors"):
        Predictor.from_pretrained(folder)


@pytest.mark.parametrize("name, damage, message", [
    ("model.safetensors", b"not safetensors", "Cannot load the model"),
    ("config.json", b"{ not json", "Cannot load the model"),
    ("processor_config.json", b"{ not json", "not a valid processor configuration"),
    ("processor_config.json", b'{"max_length": 32}', "not a valid processor configuration"),
    ("tokenizer.json", b"{ not json", "Cannot load the model"),
])
def test_damaged_folder_gives_a_clear_error(tmp_path, name, damage, message):
    folder = tmp_path / "model"
    save_tiny_model(folder)
    (folder / name).write_bytes(damage)
    with pytest.raises(MMClassifierError, match=message):
        Predictor.from_pretrained(folder)


def test_folder_saved_by_the_previous_version_loads_and_resaves(tmp_path, photo):
    folder = tmp_path / "old"
    model, processor = save_tiny_model(folder)
    # What the previous version wrote: no code files, no auto_map, a flat processor_config.json.
    for path in CODE_FILES:
        (folder / path).unlink()
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"], config["custom_pipelines"]
    (folder / "config.json").write_text(json.dumps(config))
    image = processor.image_processor
    (folder / "processor_config.json").write_text(json.dumps({
        "processor_class": "MultiModalProcessor", "image_size": image.image_size, "image_mean": image.image_mean,
        "image_std": image.image_std, "max_length": processor.max_length}))
    with pytest.raises(MMClassifierError, match="older mm_classifier.*save_pretrained"):
        push_folder(folder, "me/model")  # refused before any hub access
    predictor = Predictor.from_pretrained(folder, device="cpu")
    expected = torch.sigmoid(model(**processor(images=photo, text="a dog")).logits)[0].tolist()
    assert list(predictor.predict(photo, "a dog")[0].probabilities.values()) == pytest.approx(expected, abs=1e-5)
    predictor.save_pretrained(folder)  # the conversion: the folder is now self-contained
    assert sorted(p.name for p in folder.iterdir()) == sorted(CODE_FILES + DATA_FILES)
