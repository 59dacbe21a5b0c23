"""The Space folder (python -m mm_classifier.space): built here, installed into a fresh virtual environment without
torch, started, and answering /predict."""

import json
import shutil
import socket
import subprocess
import time
import venv

import pytest

from mm_classifier import MMClassifierError
from mm_classifier.space import build_space
from mm_classifier.space import main as space_cli

INSTALL_LIMIT_BYTES = 1 << 30  # the target: the Space installs in under 1 GB


def folder_size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def test_space_folder_holds_the_app_the_onnx_model_and_torch_free_requirements(tiny_model, tiny_folder, tmp_path,
                                                                                capsys):
    examples = tmp_path / "examples"
    examples.mkdir()
    shutil.copy(tiny_folder / "images" / "scene_00001.png", examples)
    (examples / "captions.csv").write_text("file_name,caption\nscene_00001.png,a dog on the grass\n")
    assert space_cli([str(tiny_model), "--output", str(tmp_path / "space"), "--examples", str(examples)]) == 0
    space = tmp_path / "space"
    assert "hf upload" in capsys.readouterr().out
    assert {p.name for p in space.iterdir()} == {"README.md", "app.py", "app_assets", "mm_classifier", "outputs",
                                                 "requirements.txt", "examples"}
    requirements = [line for line in (space / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert {line.split("==")[0] for line in requirements} == {"gradio", "onnxruntime", "tokenizers", "pillow", "numpy"}
    assert (space / "outputs" / "fusion" / "onnx" / "export.json").is_file()
    assert not (space / "outputs" / "fusion" / "model.safetensors").exists()
    assert "sdk: gradio" in (space / "README.md").read_text()
    assert (space / "examples" / "captions.csv").read_text().endswith("scene_00001.png,a dog on the grass\n")
    with pytest.raises(MMClassifierError, match="not an empty folder"):
        build_space(tiny_model, space)


@pytest.mark.slow
def test_space_installs_without_torch_starts_and_answers(tiny_model, photo, tmp_path):
    from gradio_client import Client, handle_file

    space = build_space(tiny_model, tmp_path / "space")
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    install = subprocess.run([python, "-m", "pip", "install", "-q", "-r", space / "requirements.txt"],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-2000:]
    assert folder_size(environment) < INSTALL_LIMIT_BYTES
    absent = subprocess.run([python, "-c", "import importlib.util as u; print([m for m in ('torch', 'transformers', "
                             "'timm') if u.find_spec(m)])"], capture_output=True, text=True, timeout=60)
    assert absent.stdout.strip() == "[]"

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([python, "app.py", "--server-port", str(port)], cwd=space, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                                   "PATH": "/usr/bin:/bin"})
    try:
        deadline = time.monotonic() + 120
        while server.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        assert server.poll() is None, server.communicate()[1][-2000:]
        view, summary = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            handle_file(photo), "a dog on the grass", 0, api_name="/predict")
    finally:
        server.terminate()
        out, err = server.communicate(timeout=60)
    concepts = json.loads((space / "outputs" / "fusion" / "config.json").read_text())["id2label"].values()
    assert sorted(c["concept"] for c in view["concepts"]) == sorted(concepts) and summary, err
    assert f"Serving outputs/fusion on http://127.0.0.1:{port}" in out
