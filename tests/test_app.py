"""The Gradio app: its pure predict(), the UI wiring and, marked slow, a live server over HTTP and in a browser."""

import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

import app
from mm_classifier import MMClassifierError

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_served(label: dict, prediction) -> None:
    """The served gr.Label shows the prediction's top concept and its TOP_K highest probabilities."""
    ranked = sorted(prediction.probabilities, key=prediction.probabilities.get, reverse=True)
    assert label["label"] == ranked[0]
    served = {item["label"]: item["confidence"] for item in label["confidences"]}
    assert served == pytest.approx({c: prediction.probabilities[c] for c in ranked[: app.TOP_K]}, abs=1e-6)


def summary_concepts(summary: str) -> list[str]:
    """The concepts the app's summary names, in order: "Found: dog (91%), grass (55%)." -> ["dog", "grass"]."""
    if summary == "No concept above its threshold.":
        return []
    assert summary.startswith("Found: ") and summary.endswith("."), summary
    return [part.rsplit(" (", 1)[0] for part in summary.removeprefix("Found: ").removesuffix(".").split(", ")]


@pytest.fixture(scope="module")
def server(predictor, photo):
    demo = app.build_demo(predictor, [[photo, "a man on the grass"]])
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                max_file_size=app.MAX_FILE_SIZE, show_error=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_predict_is_pure_and_equals_the_python_api(predictor, photo):
    result = app.predict(predictor, photo, "a man and a dog")
    assert result.probabilities == predictor.predict(photo, "a man and a dog")[0].probabilities
    assert app.predict(predictor, None, "a dog").probabilities == predictor.predict(None, "a dog")[0].probabilities
    assert app.predict(predictor, photo, "   ").probabilities == predictor.predict(photo)[0].probabilities
    with pytest.raises(MMClassifierError, match="Upload a photo or type a caption"):
        app.predict(predictor, None, "  ")


def test_build_demo_without_launching(predictor):
    demo = app.build_demo(predictor)
    assert "predict" in {dep.get("api_name") for dep in demo.config["dependencies"]}


@pytest.mark.slow
def test_live_server_over_http(server, predictor, photo, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    label, _, summary = client.predict(handle_file(photo), "a man and a dog", 0, api_name="/predict")
    expected = predictor.predict(photo, "a man and a dog")[0]
    assert_served(label, expected)
    assert summary_concepts(summary) == expected.predicted  # threshold 0: each concept's tuned threshold
    # The slider's threshold replaces the tuned ones.
    summary = client.predict(handle_file(photo), "a man and a dog", 0.05, api_name="/predict")[2]
    assert summary_concepts(summary) == predictor.predict(photo, "a man and a dog", thresholds=0.05)[0].predicted
    # Photo only and caption only; the threshold argument may be left out. A huge caption is cut, not refused.
    assert_served(client.predict(handle_file(photo), "", api_name="/predict")[0], predictor.predict(photo)[0])
    assert_served(client.predict(None, "a dog on the beach", api_name="/predict")[0],
                  predictor.predict(None, "a dog on the beach")[0])
    assert_served(client.predict(None, "dog " * 2500, api_name="/predict")[0],
                  app.predict(predictor, None, "dog " * 2500))

    (tmp_path / "text.jpg").write_text("not an image")
    Image.new("RGB", (60, 60)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    Image.new("L", (12_000, 12_000)).save(tmp_path / "bomb.png")  # 144 Mpx, 140 KB on disk
    for path, message in [("text.jpg", "not an image"), ("cut.jpg", "corrupt or truncated"),
                          ("bomb.png", "too large")]:
        with pytest.raises(Exception, match=message):
            client.predict(handle_file(str(tmp_path / path)), "", api_name="/predict")
    with pytest.raises(Exception, match="Upload a photo or type a caption"):
        client.predict(None, "", api_name="/predict")
    # The server survived all of it.
    assert_served(client.predict(None, "a dog", api_name="/predict")[0], predictor.predict(None, "a dog")[0])


@pytest.mark.slow
def test_twenty_concurrent_requests_all_succeed(server, predictor, photo):
    from gradio_client import Client, handle_file

    captions = [f"a dog number {i} on the grass" if i % 2 else f"a man number {i}" for i in range(20)]

    def one(caption):
        client = Client(server, verbose=False)
        return client.predict(handle_file(photo), caption, api_name="/predict")[0]

    with ThreadPoolExecutor(max_workers=20) as pool:
        labels = list(pool.map(one, captions))
    for label, caption in zip(labels, captions, strict=True):
        assert_served(label, predictor.predict(photo, caption)[0])  # each answer belongs to its own request


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_upload_caption_submit_and_read_concepts(server, photo, predictor):
    from playwright.sync_api import sync_playwright

    expected = predictor.predict(photo, "a man and a dog")[0]
    top = max(expected.probabilities, key=expected.probabilities.get)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page()
        page.goto(server)
        page.locator("input[type=file]").first.set_input_files(photo)
        page.get_by_label("Caption (optional)").fill("a man and a dog")
        page.get_by_role("button", name="Predict").click()
        summary = page.get_by_label("Summary")
        page.wait_for_function(
            "el => el.value && el.value.length > 0", arg=summary.element_handle(), timeout=60_000
        )
        assert summary_concepts(summary.input_value()) == expected.predicted
        page.get_by_text(top, exact=True).first.wait_for(timeout=30_000)  # the Label shows the top concept
        browser.close()


@pytest.mark.slow
def test_app_without_a_model_says_to_train_first(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "app.py")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "python train.py" in result.stderr and "Traceback" not in result.stderr


def test_share_offline_says_it_needs_internet(tiny_model, monkeypatch, capsys):
    monkeypatch.setattr(app, "internet_reachable", lambda *a, **k: False)
    assert app.main(["--model", str(tiny_model), "--share", "--no-examples"]) == 2
    assert "needs internet" in capsys.readouterr().err
