"""The Gradio app (its pure predict / explain / predict_batch, what the page says about the model, upload checks),
the prediction CLI's captions and explanations, and, marked slow, a live server over HTTP and in a browser."""

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import app
from mm_classifier import MMClassifierError, serving
from mm_classifier.predict import main as predict_cli

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CAPTION = "a man and a dog on the grass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary_concepts(summary: str) -> list[str]:
    """The concepts the app's summary names, in order: "Found: dog (91%), grass (55%)." -> ["dog", "grass"]."""
    if summary == "No concept above its threshold.":
        return []
    assert summary.startswith("Found: ") and summary.endswith("."), summary
    return [part.rsplit(" (", 1)[0] for part in summary.removeprefix("Found: ").removesuffix(".").split(", ")]


def assert_view(view: dict, prediction, thresholds) -> None:
    """The result view lists every concept, most probable first, with its probability and threshold."""
    ranked = sorted(prediction.probabilities, key=prediction.probabilities.get, reverse=True)
    assert [c["concept"] for c in view["concepts"]] == ranked
    assert [c["probability"] for c in view["concepts"]] == pytest.approx(
        [prediction.probabilities[c] for c in ranked], abs=1e-6)
    assert [c["threshold"] for c in view["concepts"]] == pytest.approx([thresholds[c] for c in ranked])
    assert view["predicted"] == prediction.predicted
    assert [c["concept"] for c in view["concepts"] if c["predicted"]] == prediction.predicted


@pytest.fixture(scope="module")
def photos(tiny_folder, tmp_path_factory):
    """Three scenes of the tiny folder, a file that is not a photo, and a captions CSV for two of the photos."""
    folder = tmp_path_factory.mktemp("upload")
    paths = []
    for index in (1, 2, 3):
        paths.append(shutil.copy(tiny_folder / "images" / f"scene_{index:05d}.png", folder))
    (folder / "broken.jpg").write_text("not an image at all")
    with open(folder / "captions.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["file_name", "caption"], ["scene_00001.png", "a dog on the beach"],
                                      ["scene_00003.png", "a woman in the snow"], ["broken.jpg", "a car"]])
    return folder, [Path(p) for p in paths]


# ------------------------------------------------------------------------------------------------ pure core


def test_predict_is_pure_and_equals_the_python_api(predictor, photo):
    result = serving.predict(predictor, photo, CAPTION)
    assert result.probabilities == predictor.predict(photo, CAPTION)[0].probabilities
    assert serving.predict(predictor, None, "a dog").probabilities == predictor.predict(None, "a dog")[0].probabilities
    assert serving.predict(predictor, photo, "   ").probabilities == predictor.predict(photo)[0].probabilities
    assert serving.predict(predictor, None, "dog " * 5000).probabilities == predictor.predict(
        None, ("dog " * 5000)[: serving.MAX_CAPTION_CHARS].strip())[0].probabilities
    with pytest.raises(MMClassifierError, match="Upload a photo or type a caption"):
        serving.predict(predictor, None, "  ")


def test_result_view_puts_every_concept_against_its_threshold(predictor, photo):
    prediction = predictor.predict(photo, CAPTION)[0]
    tuned = dict(zip(predictor.concepts, predictor.model.config.thresholds, strict=True))
    assert_view(serving.concept_view(predictor, prediction), prediction, tuned)
    low = predictor.predict(photo, CAPTION, thresholds=0.05)[0]
    assert_view(serving.concept_view(predictor, low, 0.05), low, dict.fromkeys(predictor.concepts, 0.05))
    assert summary_concepts(serving.summary(prediction)) == prediction.predicted


def test_explain_shows_the_predictors_three_probabilities_heat_map_and_words(predictor, photo):
    result = serving.explain(predictor, photo, CAPTION)
    both, photo_only, caption_only = (predictor.predict(photo, CAPTION)[0], predictor.predict(photo)[0],
                                      predictor.predict(None, CAPTION)[0])
    top = max(both.probabilities, key=both.probabilities.get)
    # One explain() result gives the three: Predict's probabilities, up to float rounding (other batches).
    assert result.concept == top and result.prediction.predicted == both.predicted
    assert result.prediction.probabilities == pytest.approx(both.probabilities, abs=1e-6)
    ranked = sorted(both.probabilities, key=both.probabilities.get, reverse=True)
    assert [bar["concept"] for bar in result.bars["concepts"]] == ranked[: serving.EXPLAIN_BARS]
    for bar in result.bars["concepts"]:
        name = bar["concept"]
        assert (bar["both"], bar["photo_only"], bar["caption_only"]) == pytest.approx((
            both.probabilities[name], photo_only.probabilities[name], caption_only.probabilities[name]), abs=1e-6)
    expected = predictor.explain(photo, CAPTION, concepts=[top])[top]
    np.testing.assert_allclose(result.heatmap, expected.heatmap, atol=1e-6)
    assert result.heatmap.shape == Image.open(photo).size[::-1]
    assert [w for w, _ in result.words] == [w for w, _ in expected.words] == CAPTION.split()
    assert [v for _, v in result.words] == pytest.approx([v for _, v in expected.words], abs=1e-6)
    # Words as gr.HighlightedText shows them: the strongest at +-1, the others in proportion, spaces between.
    shown = serving.highlighted_words(result.words)
    assert [t for t, _ in shown] == [t for word in CAPTION.split() for t in (word, " ")][:-1]
    strongest = max(abs(v) for _, v in result.words)
    assert [s for _, s in shown[::2]] == pytest.approx([v / strongest for _, v in result.words])

    # A chosen concept outside the top ones is explained and shown; caption only: no heat map, no photo bars.
    last = ranked[-1]
    chosen = serving.explain(predictor, photo, CAPTION, concept=last)
    assert chosen.concept == last and chosen.bars["concepts"][-1]["concept"] == last
    text_only = serving.explain(predictor, None, CAPTION)
    assert text_only.heatmap is None and text_only.image is None
    assert all(bar["photo_only"] is None and bar["both"] is None for bar in text_only.bars["concepts"])
    with pytest.raises(MMClassifierError, match="Unknown concept 'unicorn'"):
        serving.explain(predictor, photo, CAPTION, concept="unicorn")


def test_upload_check_says_what_is_wrong_without_the_server_path(photo, tmp_path):
    assert serving.upload_problem(photo) is None
    (tmp_path / "notes.jpg").write_text("not an image")
    message = serving.upload_problem(str(tmp_path / "notes.jpg"))
    assert "not an image" in message.lower() and str(tmp_path) not in message
    Image.new("RGB", (60, 60)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert "corrupt or truncated" in serving.upload_problem(str(tmp_path / "cut.jpg"))


def test_batch_table_and_downloads_with_a_captions_csv(predictor, photos, tmp_path):
    folder, good = photos
    uploads = [good[0], folder / "broken.jpg", good[1], good[2]]
    result = serving.predict_batch(predictor, uploads, caption="a boy", captions_csv=folder / "captions.csv")
    # Captions: from the CSV by file name; scene_00002 is not listed there and takes the caption for all.
    captions = {"scene_00001.png": "a dog on the beach", "scene_00002.png": "a boy",
                "scene_00003.png": "a woman in the snow", "broken.jpg": "a car"}
    assert [(row.photo, row.caption) for row in result.rows] == [(p.name, captions[p.name]) for p in uploads]
    broken = result.rows[1]
    assert broken.prediction is None and "broken.jpg" in broken.error and str(folder) not in broken.error
    for row, path in zip(result.rows, uploads, strict=True):
        if row.prediction is not None:
            assert row.prediction == predictor.predict(str(path), captions[path.name])[0]
    assert result.unmatched == []

    table = serving.batch_table(result)
    assert [r[0] for r in table] == [p.name for p in uploads] and table[1][2] == f"⚠ {broken.error}"
    assert summary_concepts(f"Found: {table[0][2]}.") == result.rows[0].prediction.predicted

    csv_path, json_path = serving.write_batch_files(result, predictor.concepts, tmp_path / "out")
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["photo"] for r in rows] == [p.name for p in uploads] and rows[1]["error"] == broken.error
    first = result.rows[0].prediction
    assert {c: float(rows[0][c]) for c in predictor.concepts} == pytest.approx(first.probabilities, abs=1e-6)
    assert rows[0]["predicted"].split(";") == first.predicted and rows[1]["dog"] == ""
    records = json.loads(json_path.read_text())
    assert records[2]["probabilities"] == result.rows[2].prediction.probabilities
    assert records[1]["predicted"] is None and records[1]["error"] == broken.error

    # Photos the CSV lists but nobody uploaded are reported; a CSV without the columns is refused clearly.
    assert serving.predict_batch(predictor, good[:1], captions_csv=folder / "captions.csv").unmatched == [
        "scene_00003.png", "broken.jpg"]
    (tmp_path / "bad.csv").write_text("name,text\nscene_00001.png,a dog\n")
    with pytest.raises(MMClassifierError, match="file_name,caption"):
        serving.predict_batch(predictor, good, captions_csv=tmp_path / "bad.csv")
    with pytest.raises(MMClassifierError, match="at most"):
        serving.predict_batch(predictor, good * 20)


def copy_model(tiny_model, tmp_path, name, dataset) -> Path:
    folder = Path(shutil.copytree(tiny_model, tmp_path / name))
    args = json.loads((folder / "training_args.json").read_text())
    (folder / "training_args.json").write_text(json.dumps({**args, "dataset": dataset}))
    return folder


def page_text(demo) -> str:
    return " ".join(str(c.get("props", {}).get("value")) for c in demo.config["components"])


def test_page_says_what_the_model_was_trained_on_and_warns_for_a_sample_model(tiny_model, tiny_folder, tmp_path):
    from mm_classifier import Predictor

    sample = Predictor.from_pretrained(copy_model(tiny_model, tmp_path, "sample", "sample"))
    real = Predictor.from_pretrained(copy_model(tiny_model, tmp_path, "real", "/data/flickr8k"))
    assert serving.describe_model(sample).synthetic and not serving.describe_model(real).synthetic
    # The tiny model itself was trained on a folder the sample's generator wrote: also synthetic.
    assert serving.describe_model(Predictor.from_pretrained(tiny_model)).synthetic

    sample_page, real_page = page_text(app.build_demo(sample)), page_text(app.build_demo(real))
    assert "trained on synthetic scenes" in sample_page and "python train.py --dataset" in sample_page
    assert "32-px cartoon scenes" in sample_page  # the served model's own image size (the tiny one's)
    assert "trained on the built-in synthetic sample" in sample_page
    assert "synthetic" not in real_page and "trained on `/data/flickr8k`" in real_page
    # Without training_args.json the page says so: the card's prose is for people, not read back.
    bare = tmp_path / "real"
    (bare / "training_args.json").unlink()
    unrecorded = Predictor.from_pretrained(bare)
    assert serving.describe_model(unrecorded).dataset is None and not serving.describe_model(unrecorded).synthetic
    assert "trained on unrecorded data (no training_args.json)" in page_text(app.build_demo(unrecorded))


def test_examples_from_a_folder_with_captions(photos, tmp_path):
    folder, good = photos
    examples = serving.folder_examples(folder)
    assert [Path(p).name for p, _ in examples] == ["broken.jpg", *[p.name for p in good]]  # sorted; checked on use
    assert dict((Path(p).name, c) for p, c in examples)["scene_00002.png"] == ""
    assert dict((Path(p).name, c) for p, c in examples)["scene_00003.png"] == "a woman in the snow"
    with pytest.raises(MMClassifierError, match="no photos"):
        serving.folder_examples(tmp_path)


def test_build_demo_without_launching(predictor):
    demo = app.build_demo(predictor)
    names = {dep.get("api_name") for dep in demo.config["dependencies"] if dep.get("api_visibility") != "private"}
    assert {"predict", "explain", "predict_batch"} <= names


def test_share_offline_says_it_needs_internet(tiny_model, monkeypatch, capsys):
    monkeypatch.setattr(app, "internet_reachable", lambda *a, **k: False)
    assert app.main(["--model", str(tiny_model), "--share", "--no-examples"]) == 2
    assert "needs internet" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ prediction CLI
# (The CLI lives in mm_classifier/predict.py; these tests of its captions and explanations sit here for now.)


def test_cli_captions_csv_gives_each_photo_its_caption(tiny_model, predictor, photos, tmp_path, capsys):
    folder, good = photos
    out = tmp_path / "out.json"
    code = predict_cli(["--model", str(tiny_model), *map(str, good), "--captions-csv", str(folder / "captions.csv"),
                        "--caption", "a boy", "--json", str(out)])
    assert code == 0
    records = json.loads(out.read_text())
    assert [r["caption"] for r in records] == ["a dog on the beach", "a boy", "a woman in the snow"]
    for record, path in zip(records, good, strict=True):
        expected = predictor.predict(str(path), record["caption"])[0]
        assert record["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    # Without photo arguments, the photos the CSV lists are read from its folder; the broken one is skipped.
    assert predict_cli(["--model", str(tiny_model), "--captions-csv", str(folder / "captions.csv"),
                        "--json", str(out)]) == 0
    assert [Path(r["image"]).name for r in json.loads(out.read_text())] == ["scene_00001.png", "scene_00003.png"]
    assert "broken.jpg: skipped" in capsys.readouterr().err


def test_cli_explain_writes_one_figure_per_readable_photo(tiny_model, photos, tmp_path, capsys):
    folder, good = photos
    code = predict_cli(["--model", str(tiny_model), str(good[0]), str(folder / "broken.jpg"), str(good[1]),
                        "--caption", CAPTION, "--explain", str(tmp_path / "why")])
    assert code == 0 and "broken.jpg: skipped" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "why").iterdir()) == ["scene_00001.png", "scene_00002.png"]
    with Image.open(tmp_path / "why" / "scene_00001.png") as figure:
        assert figure.format == "PNG" and figure.width >= 1200 and figure.height >= 800


def test_cli_prints_no_warnings_or_progress_bars(tiny_model, photo):
    result = subprocess.run([sys.executable, "-m", "mm_classifier.predict", "--model", str(tiny_model), photo,
                             "--caption", "a dog"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "scene_00000.png:" in result.stdout
    assert "RuntimeWarning" not in result.stderr and "Loading weights" not in result.stderr
    assert result.stderr.strip() == ""


# ------------------------------------------------------------------------------------------------ live server


@pytest.fixture(scope="module")
def onnx_predictor(tiny_model, tmp_path_factory):
    """The tiny model exported to ONNX, on one thread per prediction as app.py loads it."""
    from mm_classifier.export import export

    return app.load_predictor(str(export(tiny_model, tmp_path_factory.mktemp("onnx") / "model")), "onnx")


@pytest.fixture(scope="module", params=["pytorch", "onnx"])
def served(request, predictor, onnx_predictor, photo):
    """A live server of the tiny model on each backend: its address and its predictor."""
    backend_predictor = predictor if request.param == "pytorch" else onnx_predictor
    demo = app.build_demo(backend_predictor, [[photo, "a man on the grass"]])
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **app.LAUNCH_OPTIONS)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", predictor=backend_predictor)
    demo.close()


@pytest.mark.slow
def test_live_server_over_http(served, photo, photos, tmp_path):
    from gradio_client import Client, handle_file

    server, predictor = served.url, served.predictor
    client = Client(server, verbose=False)
    tuned = dict(zip(predictor.concepts, predictor.config.thresholds, strict=True))
    view, summary = client.predict(handle_file(photo), CAPTION, 0, api_name="/predict")
    expected = predictor.predict(photo, CAPTION)[0]
    assert_view(view, expected, tuned)
    assert summary_concepts(summary) == expected.predicted
    # The slider's threshold replaces the tuned ones; photo only and caption only; a huge caption is cut.
    low = predictor.predict(photo, CAPTION, thresholds=0.05)[0]
    assert_view(client.predict(handle_file(photo), CAPTION, 0.05, api_name="/predict")[0], low,
                dict.fromkeys(predictor.concepts, 0.05))
    assert_view(client.predict(handle_file(photo), "", api_name="/predict")[0], predictor.predict(photo)[0], tuned)
    assert_view(client.predict(None, "dog " * 2500, api_name="/predict")[0],
                serving.predict(predictor, None, "dog " * 2500), tuned)

    if predictor.explains:
        concept, heatmap, words, bars, _ = client.predict(handle_file(photo), CAPTION, 0, api_name="/explain")
        local = serving.explain(predictor, photo, CAPTION)
        assert concept == local.concept and bars == local.bars
        assert Image.open(heatmap).size == (app.SHOWN_SIDE[0],) * 2  # the 32-px photo enlarged, pixels as blocks
        assert "".join(item["token"] for item in words) == CAPTION
    else:  # the ONNX backend has no gradients: no Explain endpoint
        assert "/explain" not in client.view_api(print_info=False, return_format="dict")["named_endpoints"]

    folder, good = photos
    table, files, status = client.predict([handle_file(str(p)) for p in (*good, folder / "broken.jpg")], "",
                                          handle_file(str(folder / "captions.csv")), 0, api_name="/predict_batch")
    assert [row[0] for row in table["data"]] == [p.name for p in good] + ["broken.jpg"]
    assert "not an image" in table["data"][-1][2] and status.startswith("3 of 4 photos answered")
    assert sorted(Path(f).name for f in files) == ["predictions.csv", "predictions.json"]

    (tmp_path / "text.jpg").write_text("not an image")
    Image.new("L", (12_000, 12_000)).save(tmp_path / "bomb.png")  # 144 Mpx, 140 KB on disk
    for path, message in [("text.jpg", "not an image"), ("bomb.png", "too large")]:
        with pytest.raises(Exception, match=message):
            client.predict(handle_file(str(tmp_path / path)), "", api_name="/predict")
    with pytest.raises(Exception, match="Upload a photo or type a caption"):
        client.predict(None, "", api_name="/predict")
    # The server survived all of it.
    assert_view(client.predict(None, "a dog", api_name="/predict")[0], predictor.predict(None, "a dog")[0], tuned)


@pytest.mark.slow
def test_twenty_concurrent_requests_all_succeed(served, photo):
    from gradio_client import Client, handle_file

    server, predictor = served.url, served.predictor
    captions = [f"a dog number {i} on the grass" if i % 2 else f"a man number {i}" for i in range(20)]

    def one(caption):
        return Client(server, verbose=False).predict(handle_file(photo), caption, api_name="/predict")[0]

    with ThreadPoolExecutor(max_workers=20) as pool:
        views = list(pool.map(one, captions))
    for view, caption in zip(views, captions, strict=True):
        expected = predictor.predict(photo, caption)[0]  # each answer belongs to its own request
        assert {c["concept"]: c["probability"] for c in view["concepts"]} == pytest.approx(expected.probabilities)


def explain_view(page, predictor, expected, top):
    """The Explain view in a browser: the top concept's heat map, the caption's words, the three-way bars."""
    from playwright.sync_api import expect

    page.get_by_role("button", name="Explain").click()
    groups = page.locator("#three-way-bars li")
    expect(groups.first).to_be_visible(timeout=60_000)
    expect(groups).to_have_count(min(serving.EXPLAIN_BARS, len(predictor.concepts)))
    expect(page.locator("#three-way-bars li.explained .name")).to_have_text(top)
    expect(page.locator("#three-way-bars .legend")).to_contain_text("caption alone")
    expect(page.get_by_label("Concept to explain")).to_have_value(top)
    for word in CAPTION.split():
        expect(page.locator("#caption-words")).to_contain_text(word)
    expect(page.locator(".heatmap img")).to_be_visible()
    expect(page.get_by_label("Summary")).to_have_value(serving.summary(expected))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (.ci/run installs it)")
@pytest.mark.parametrize("width, height", [(1280, 800), (390, 844)], ids=["desktop", "phone"])
def test_browser_explain_view_and_batch_tab(served, photo, photos, tmp_path, width, height):
    from playwright.sync_api import expect, sync_playwright

    server, predictor = served.url, served.predictor
    shots = Path(os.environ.get("APP_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    name = ("desktop" if width > 600 else "phone") + ("" if predictor.explains else "_onnx")
    expected = predictor.predict(photo, CAPTION)[0]
    top = max(expected.probabilities, key=expected.probabilities.get)
    folder, good = photos
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(server)
        expect(page.locator("#examples")).to_be_visible(timeout=30_000)

        # An example click runs the prediction: every concept's bar, the found ones marked.
        page.locator("#examples").get_by_text("a man on the grass").first.click()
        bars = page.locator("#concept-bars li")
        expect(bars).to_have_count(len(predictor.concepts), timeout=60_000)
        example = predictor.predict(photo, "a man on the grass")[0]
        expect(page.locator("#concept-bars li.found .name")).to_have_text(example.predicted)
        font = page.locator("#concept-bars li .name").first.evaluate("e => parseFloat(getComputedStyle(e).fontSize)")
        assert font >= 14
        page.screenshot(path=str(shots / f"{name}_1_example.png"), full_page=True)

        # A file that is not a photo is refused on upload, before Predict; the last photo's results go.
        (tmp_path / "notes.jpg").write_text("not an image")
        page.locator(".photo-input input[type=file]").set_input_files(str(tmp_path / "notes.jpg"))
        expect(page.locator("#upload-notice")).to_contain_text("Not a usable photo", timeout=30_000)
        expect(bars).to_have_count(0)
        expect(page.get_by_label("Summary")).to_have_value("")
        page.screenshot(path=str(shots / f"{name}_2_bad_upload.png"), full_page=True)

        # Explain: the top concept's heat map, the caption's words, the three-way bars.
        page.locator(".photo-input input[type=file]").set_input_files(photo)
        expect(page.locator("#upload-notice")).to_be_hidden(timeout=30_000)
        page.get_by_label("Caption (optional)").fill(CAPTION)
        if predictor.explains:
            explain_view(page, predictor, expected, top)
        else:  # the ONNX backend: no Explain button, a note says why; Predict answers
            expect(page.get_by_role("button", name="Explain")).to_have_count(0)
            expect(page.locator("#no-explain-note")).to_contain_text("need the PyTorch backend")
            page.get_by_role("button", name="Predict", exact=True).click()
            expect(page.get_by_label("Summary")).to_have_value(serving.summary(expected), timeout=60_000)
        page.screenshot(path=str(shots / f"{name}_3_explain.png"), full_page=True)

        # Batch: three photos and a bad file with a captions CSV -> a row per photo, downloads.
        page.get_by_role("tab", name="Batch").click()
        page.locator("#batch-photos input[type=file]").set_input_files([str(p) for p in (*good, folder / "broken.jpg")])
        page.locator("#batch-captions input[type=file]").set_input_files(str(folder / "captions.csv"))
        expect(page.locator("#batch-photos a[href$='broken.jpg']")).to_be_visible(timeout=30_000)  # uploaded
        expect(page.locator("#batch-captions a[href$='captions.csv']")).to_be_visible(timeout=30_000)
        page.get_by_role("button", name="Predict all").click()
        expect(page.locator("#batch-status")).to_contain_text("3 of 4 photos answered", timeout=60_000)
        table = page.locator("#batch-table")
        for path in (*good, folder / "broken.jpg"):
            expect(table).to_contain_text(path.name)
        expect(table).to_contain_text("a woman in the snow")
        # The downloads hold the table: the CSV has a row per photo (the broken one with its error).
        link = page.locator("#batch-downloads a[href$='predictions.csv']")
        expect(link).to_be_visible()
        rows = list(csv.DictReader(page.request.get(link.get_attribute("href")).text().splitlines()))
        assert [r["photo"] for r in rows] == [p.name for p in (*good, folder / "broken.jpg")]
        assert rows[2]["caption"] == "a woman in the snow" and "not an image" in rows[3]["error"]
        expect(page.locator("#batch-downloads a[href$='predictions.json']")).to_be_visible()
        page.screenshot(path=str(shots / f"{name}_4_batch.png"), full_page=True)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a {width}-px screen"
        browser.close()


@pytest.mark.slow
def test_app_starts_quietly_and_names_its_own_share_option(tiny_model, tmp_path):
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", str(tiny_model), "--server-port",
                                str(port), "--no-examples"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        time.sleep(1)
    finally:
        process.terminate()
        out, err = process.communicate(timeout=60)
    assert f"http://127.0.0.1:{port}" in out and "python app.py --share" in out
    assert "share=True" not in out + err and "launch()" not in out + err
    assert "Loading weights" not in err and "Warning" not in err, err


@pytest.mark.slow
def test_app_without_a_model_says_to_train_first(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "app.py")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "python train.py" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------------ single-label


@pytest.fixture(scope="module")
def single_label_model(tiny_model, tmp_path_factory):
    """The tiny model's folder made single-label (a softmax over its concepts as classes) with a calibration
    temperature, its run recorded as on a local folder with a test accuracy."""
    folder = Path(shutil.copytree(tiny_model, tmp_path_factory.mktemp("single") / "model"))
    config = json.loads((folder / "config.json").read_text())
    config.update(problem_type="single_label_classification", pos_weight=None, calibration_biases=None,
                  calibration_temperatures=[2.0] * len(config["id2label"]))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "all_results.json").write_text(json.dumps({"test_accuracy": 0.8312, "test_micro_f1": 0.8312}))
    return folder


@pytest.fixture(scope="module")
def single_label(single_label_model):
    from mm_classifier import Predictor

    return Predictor.from_pretrained(single_label_model)


def test_a_single_label_model_predicts_exactly_its_most_probable_class(single_label, photo):
    assert single_label.model.config.single_label
    for inputs in ((photo, CAPTION), (photo, None), (None, CAPTION)):
        result = serving.predict(single_label, *inputs)
        assert result == single_label.predict(*inputs)[0]  # calibrated softmax, from the Predictor
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert result.predicted == [max(result.probabilities, key=result.probabilities.get)]
        view = serving.concept_view(single_label, result)
        ranked = sorted(result.probabilities, key=result.probabilities.get, reverse=True)
        assert view["single_label"] and view["predicted"] == ranked[:1]
        assert [c["concept"] for c in view["concepts"]] == ranked
        assert [c["predicted"] for c in view["concepts"]] == [True] + [False] * (len(ranked) - 1)
        assert all(c["threshold"] is None for c in view["concepts"])
        top = ranked[0]
        expected = f"Most probable class: {top} ({result.probabilities[top]:.0%})."
        assert serving.summary(result, single_label=True) == expected
    # Handlers without a threshold (the page has no slider) give the same; a threshold is refused clearly.
    view, summary = app.Handlers(single_label).predict(photo, CAPTION)
    assert view == serving.concept_view(single_label, serving.predict(single_label, photo, CAPTION))
    assert summary.startswith("Most probable class: ")
    with pytest.raises(MMClassifierError, match="thresholds do not apply"):
        serving.predict(single_label, photo, CAPTION, threshold=0.3)


def test_a_single_label_models_explanation_and_batch(single_label, photo, photos):
    result = serving.explain(single_label, photo, CAPTION)
    expected = single_label.predict(photo, CAPTION)[0]
    assert result.prediction.predicted == expected.predicted and result.concept == expected.predicted[0]
    assert result.prediction.probabilities == pytest.approx(expected.probabilities, abs=1e-6)
    assert all(bar["threshold"] is None for bar in result.bars["concepts"])
    assert [bar["both"] for bar in result.bars["concepts"]] == pytest.approx(
        [expected.probabilities[bar["concept"]] for bar in result.bars["concepts"]], abs=1e-6)
    handlers = app.Handlers(single_label)
    last = result.bars["concepts"][-1]["concept"]
    concept, _, _, bars, summary = handlers.explain_concept(photo, CAPTION, last)
    assert concept == last and bars["explained"] == last and summary == serving.summary(expected, single_label=True)

    folder, good = photos
    batch = serving.predict_batch(single_label, [*good, folder / "broken.jpg"], caption=CAPTION)
    assert [len(row.prediction.predicted) for row in batch.rows[:-1]] == [1, 1, 1]
    assert batch.rows[-1].prediction is None


def test_cli_of_a_single_label_model_prints_one_class_and_draws_it(single_label_model, single_label, photo, tmp_path,
                                                                    capsys):
    out = tmp_path / "out.json"
    assert predict_cli(["--model", str(single_label_model), photo, "--caption", CAPTION, "--json", str(out),
                        "--plot-dir", str(tmp_path / "plots"), "--explain", str(tmp_path / "why")]) == 0
    expected = single_label.predict(photo, CAPTION)[0]
    (record,) = json.loads(out.read_text())
    assert record["predicted"] == expected.predicted and len(expected.predicted) == 1
    for folder in ("plots", "why"):
        assert [p.name for p in (tmp_path / folder).iterdir()] == ["scene_00000.png"]
    capsys.readouterr()
    assert predict_cli(["--model", str(single_label_model), photo, "--threshold", "0.3"]) == 2
    assert "thresholds do not apply" in capsys.readouterr().err


def sliders(demo) -> list[dict]:
    return [c for c in demo.config["components"] if c.get("type") == "slider"]


def api_inputs(demo, name: str) -> int:
    (dependency,) = [d for d in demo.config["dependencies"] if d.get("api_name") == name]
    return len(dependency["inputs"])


def test_a_single_label_page_has_no_threshold_slider_and_says_what_it_predicts(single_label, predictor):
    single_page, multi_page = app.build_demo(single_label), app.build_demo(predictor)
    assert sliders(single_page) == [] and len(sliders(multi_page)) == 1
    # The API of a single-label page takes no threshold: photo and caption (batch: photos, caption, captions CSV).
    assert (api_inputs(single_page, "predict"), api_inputs(single_page, "explain")) == (2, 2)
    assert api_inputs(single_page, "predict_batch") == 3
    assert (api_inputs(multi_page, "predict"), api_inputs(multi_page, "predict_batch")) == (3, 4)
    text = page_text(single_page)
    assert "Single-label: it predicts exactly one of its" in text and "accuracy 0.83 on its own test split" in text
    assert "Which class is it?" in text and "at or above its" not in text
    assert "Multi-label: it finds any number of its" in page_text(multi_page)


@pytest.mark.slow
def test_live_single_label_page_over_http_and_in_a_browser(single_label, photo):
    from gradio_client import Client, handle_file

    demo = app.build_demo(single_label)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **app.LAUNCH_OPTIONS)
    try:
        url = f"http://127.0.0.1:{port}/"
        expected = single_label.predict(photo, CAPTION)[0]
        view, summary = Client(url, verbose=False).predict(handle_file(photo), CAPTION, api_name="/predict")
        assert view["predicted"] == expected.predicted and summary == serving.summary(expected, single_label=True)
        if not os.path.exists(CHROMIUM):
            return
        from playwright.sync_api import expect, sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url)
            # A caption alone: an upload's own events (which clear the last results) cannot race the prediction.
            page.get_by_label("Caption (optional)").fill(CAPTION)
            page.get_by_role("button", name="Predict", exact=True).click()
            expect(page.locator("#concept-bars li")).to_have_count(len(single_label.concepts), timeout=60_000)
            # The chosen class is the one marked; no threshold ticks, and the legend says why it was chosen.
            expect(page.locator("#concept-bars li.found .name")).to_have_text(
                single_label.predict(None, CAPTION)[0].predicted)
            expect(page.locator("#concept-bars .tick")).to_have_count(0)
            expect(page.locator("#concept-bars .legend")).to_contain_text("chosen (the most probable class)")
            page.get_by_role("button", name="Explain").click()
            expect(page.locator("#three-way-bars li").first).to_be_visible(timeout=60_000)
            expect(page.locator("#three-way-bars .tick")).to_have_count(0)
            expect(page.locator("#three-way-bars .legend")).not_to_contain_text("threshold")
            browser.close()
    finally:
        demo.close()
