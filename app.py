"""Gradio app: which concepts a trained model finds in a photo and its caption, why, and for many photos at once.

    python app.py                         # serves outputs/fusion on http://127.0.0.1:7860
    python app.py --model DIR_OR_HUB_ID --examples DIR --share
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import re
import socket
import sys
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from mm_classifier import MMClassifierError, Prediction, Predictor
from mm_classifier.images import load_image
from mm_classifier.modelcard import text_encoder_description
from mm_classifier.plots import heatmap_overlay
from mm_classifier.predict import caption_for, read_captions_csv
from mm_classifier.sample import BUILT_IN

DEFAULT_MODEL = "outputs/fusion"
MAX_CAPTION_CHARS = 10_000  # longer texts are cut (a product description runs to a few thousand characters)
MAX_FILE_SIZE = "10mb"
MAX_BATCH_PHOTOS = 50
EXPLAIN_MAX_SIDE = 1024  # photos are explained at most this large: a heat map has the photo's own size
SHOWN_SIDE = (320, 512)  # heat maps are sent at least and at most this large (small photos: pixels enlarged)
EXPLAIN_BARS = 8  # concepts in the Explain view's bars: the most probable ones (and the explained one)
EXAMPLES_SHOWN = 6
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
# Predictions waiting beyond QUEUE_SIZE get Gradio's "queue is full" at once instead of a long wait; CONCURRENCY
# predictions run at a time, each in its own worker thread on one CPU core (main() gives torch one thread per
# prediction), so the server keeps answering while they run.
QUEUE_SIZE = 64
CONCURRENCY = min(4, os.cpu_count() or 1)
BATCH_COLUMNS = ["photo", "caption", "concepts found (or the error)"]
SINGLE_LABEL_BATCH_COLUMNS = ["photo", "caption", "class (or the error)"]

# ------------------------------------------------------------------------------------------------ the model


@dataclass
class ModelInfo:
    """What the page says about the served model: where it came from and what it was trained on.

    Attributes:
        source: the folder or hub id it was loaded from.
        dataset: the training data as train.py recorded it (``sample``, a folder, a hub id), or None if unknown.
        synthetic: trained on the built-in synthetic sample (or a folder the sample's generator wrote).
        test_micro_f1: micro-F1 on the run's own test split, when the run recorded it.
        test_accuracy: a single-label model's accuracy on the run's own test split, when the run recorded it.
    """

    source: str
    dataset: str | None
    synthetic: bool
    test_micro_f1: float | None = None
    test_accuracy: float | None = None


def describe_model(predictor: Predictor) -> ModelInfo:
    """Read the training records a model folder carries (training_args.json, else the model card; all_results.json)."""
    source = predictor.model.config.name_or_path or ""
    folder = Path(source)
    dataset = None
    try:
        dataset = json.loads((folder / "training_args.json").read_text()).get("dataset")
    except (OSError, ValueError):
        card = folder / "README.md"
        found = re.search(r"Trained on `([^`]+)`", card.read_text()) if card.is_file() else None
        dataset = found.group(1) if found else None
    results = {}
    try:
        results = json.loads((folder / "all_results.json").read_text())
    except (OSError, ValueError):
        pass
    # The sample's generator leaves regions.json beside its scenes; real Flickr8k folders have none.
    synthetic = dataset in BUILT_IN or (dataset is not None and (Path(dataset) / "regions.json").is_file())
    return ModelInfo(source, dataset, synthetic, results.get("test_micro_f1"), results.get("test_accuracy"))


def model_description(predictor: Predictor, info: ModelInfo) -> str:
    """One paragraph of Markdown: the model, what it reads, what it was trained on."""
    config = predictor.model.config
    reads = {"image": "a photo", "text": "a caption", "fusion": "a photo, a caption, or both"}[config.modality]
    parts = [f"**Served model:** `{info.source}`, {config.modality} (reads {reads})"]
    if config.uses_image:
        parts.append(f"backbone `{config.backbone}` at {config.image_size} px")
    if config.uses_text:
        parts.append(text_encoder_description(config))
    trained = f"`{info.dataset}`" if info.dataset else "unrecorded data (no training_args.json)"
    if info.dataset in BUILT_IN:
        trained = "the built-in synthetic sample" + ("" if info.dataset == "sample" else f" (`{info.dataset}`)")
    text = ", ".join(parts) + f"; trained on {trained}"
    if config.single_label and info.test_accuracy is not None:
        text += f" (accuracy {info.test_accuracy:.2f} on its own test split)"
    elif not config.single_label and info.test_micro_f1 is not None:
        text += f" (micro-F1 {info.test_micro_f1:.2f} on its own test split)"
    if config.single_label:
        return text + (f". Single-label: it predicts exactly one of its {config.num_labels} classes, the most "
                       f"probable one: {', '.join(config.concepts)}.")
    return text + (f". Multi-label: it finds any number of its {config.num_labels} concepts, each at or above its own "
                   f"threshold: {', '.join(config.concepts)}.")


def sample_note(predictor: Predictor, info: ModelInfo) -> str | None:
    """The warning a model trained on synthetic scenes carries; None for any other model."""
    if not info.synthetic:
        return None
    config = predictor.model.config
    seen = [f"{config.image_size}-px cartoon scenes"] if config.uses_image else []
    if config.uses_text:
        seen.append("captions of its few words")
    return (
        f"⚠️ **This is a demo model trained on synthetic scenes** ({' with '.join(seen)}). It knows only those "
        "scenes: on a real photo it still answers, confidently and wrongly. For a model of real photos, download "
        "Flickr8k and train on it: `python train.py --dataset PATH/TO/flickr8k`, then "
        "`python app.py --model outputs/fusion` (docs/data.md)."
    )


# ------------------------------------------------------------------------------------------------ one photo


def _clean_caption(caption: str | None) -> str | None:
    return (caption or "").strip()[:MAX_CAPTION_CHARS] or None


def _check_inputs(predictor: Predictor, has_photo: bool, has_caption: bool) -> None:
    config = predictor.model.config
    if not has_photo and not has_caption:
        raise MMClassifierError("Upload a photo or type a caption (or both).")
    if not has_photo and not config.uses_text:
        raise MMClassifierError("This model reads photos only: upload a photo.")
    if not has_caption and not config.uses_image:
        raise MMClassifierError("This model reads captions only: type a caption.")


def _thresholds(predictor: Predictor, threshold: float | None) -> dict[str, float | None]:
    """Each concept's cut-off: ``threshold`` for all, else the tuned ones; None each for a single-label model, which
    takes its most probable class."""
    cutoffs = predictor._thresholds(threshold or None)
    return dict(zip(predictor.concepts, cutoffs or [None] * len(predictor.concepts), strict=True))


def predict(predictor: Predictor, photo=None, caption: str | None = None, threshold: float | None = None
            ) -> Prediction:
    """Every concept's probability for a photo (path, PIL or numpy) and/or a caption; the app's pure core.

    Raises:
        MMClassifierError: nothing given, the photo cannot be read, or a threshold for a single-label model.
    """
    caption = _clean_caption(caption)
    _check_inputs(predictor, photo is not None, caption is not None)
    # The photo as given: a file is decoded once, by the processor (a JPEG at the scale the model needs).
    return predictor.predict(photo, caption, thresholds=threshold)[0]


def concept_view(predictor: Predictor, prediction: Prediction, threshold: float | None = None) -> dict:
    """The result as the page draws it and the API returns it: the found concepts (a single-label model's one
    class), and every concept's probability and threshold (None for a single-label model), most probable first."""
    thresholds = _thresholds(predictor, threshold)
    ranked = sorted(prediction.probabilities, key=prediction.probabilities.get, reverse=True)
    return {
        "single_label": predictor.model.config.single_label,
        "predicted": list(prediction.predicted),
        "concepts": [{"concept": c, "probability": prediction.probabilities[c], "threshold": thresholds[c],
                      "predicted": c in prediction.predicted} for c in ranked],
    }


def summary(prediction: Prediction, single_label: bool = False) -> str:
    """One line: "Found: dog (91%), grass (55%)." or "No concept above its threshold."; for a single-label model
    "Most probable class: snow (91%)."."""
    found = ", ".join(f"{c} ({prediction.probabilities[c]:.0%})" for c in prediction.predicted)
    if single_label:
        return f"Most probable class: {found}."
    return f"Found: {found}." if found else "No concept above its threshold."


@dataclass
class AppExplanation:
    """What the Explain view shows.

    Attributes:
        concept: the explained concept.
        prediction: the prediction from everything the model read.
        bars: each concept's probability from photo + caption, the photo alone and the caption alone (None
            where that input was not given or the model does not read it), and its threshold (None for a
            single-label model), most probable first.
        heatmap: (H, W) in [0, 1], where the photo shows the concept; None without a photo.
        image: the photo as explained (at most EXPLAIN_MAX_SIDE pixels on its longer side), or None.
        words: (word, contribution) per caption word: how much hiding the word lowers the concept's probability.
    """

    concept: str
    prediction: Prediction
    bars: dict
    heatmap: object | None
    image: object | None
    words: list[tuple[str, float]]


def explain(predictor: Predictor, photo=None, caption: str | None = None, concept: str | None = None,
            threshold: float | None = None) -> AppExplanation:
    """Explain one concept (default: the most probable one) for a photo and/or a caption; the app's pure core.

    Raises:
        MMClassifierError: nothing given, an unreadable photo, or an unknown concept.
    """
    caption = _clean_caption(caption)
    _check_inputs(predictor, photo is not None, caption is not None)
    config = predictor.model.config
    image = load_image(photo) if photo is not None else None
    if image is not None and max(image.size) > EXPLAIN_MAX_SIDE:
        image = image.copy()
        image.thumbnail((EXPLAIN_MAX_SIDE, EXPLAIN_MAX_SIDE))
    reads_photo, reads_caption = image is not None and config.uses_image, caption is not None and config.uses_text
    # One prediction per combination of the inputs given: the three-way bars, from the photo as given, so that
    # they equal what Predict shows (the heat map needs the decoded photo, below).
    both = predictor.predict(photo, caption, thresholds=threshold)[0] if reads_photo and reads_caption else None
    photo_only = predictor.predict(photo, None, thresholds=threshold)[0] if reads_photo else None
    caption_only = predictor.predict(None, caption, thresholds=threshold)[0] if reads_caption else None
    prediction = both or photo_only or caption_only
    ranked = sorted(prediction.probabilities, key=prediction.probabilities.get, reverse=True)
    concept = concept or ranked[0]
    if concept not in prediction.probabilities:
        raise MMClassifierError(f"Unknown concept {concept!r}: the model knows {', '.join(predictor.concepts)}.")
    explained = predictor.explain(image if reads_photo else None, caption if reads_caption else None,
                                  concepts=[concept])[concept]
    thresholds = _thresholds(predictor, threshold)
    shown = ranked[:EXPLAIN_BARS] + ([concept] if concept not in ranked[:EXPLAIN_BARS] else [])

    def probability(result, name):
        return None if result is None else result.probabilities[name]

    bars = {
        "explained": concept,
        "concepts": [{"concept": c, "both": probability(both, c), "photo_only": probability(photo_only, c),
                      "caption_only": probability(caption_only, c), "threshold": thresholds[c]} for c in shown],
    }
    return AppExplanation(concept, prediction, bars, explained.heatmap, image if reads_photo else None,
                          list(explained.words))


def highlighted_words(words: list[tuple[str, float]]) -> list[tuple[str, float | None]]:
    """gr.HighlightedText's value: each word with its contribution scaled to [-1, 1] (the strongest word at
    ±1), spaces between them."""
    strongest = max((abs(value) for _, value in words), default=0.0) or 1.0
    shown: list[tuple[str, float | None]] = []
    for word, value in words:
        shown += [(word, value / strongest), (" ", None)]
    return shown[:-1]


def upload_problem(path) -> str | None:
    """Why an uploaded file cannot be used as a photo, or None when it can (checked on upload, before Predict)."""
    if path is None:
        return None
    try:
        load_image(path)
    except MMClassifierError as err:
        return str(err).replace(str(path), "The uploaded file")
    return None


# ------------------------------------------------------------------------------------------------ many photos


@dataclass
class BatchRow:
    """One photo of a batch: its prediction, or why there is none."""

    photo: str
    caption: str | None
    prediction: Prediction | None = None
    error: str | None = None


@dataclass
class BatchResult:
    rows: list[BatchRow]
    unmatched: list[str]  # names the captions CSV lists that were not among the photos


def predict_batch(predictor: Predictor, photos: list, caption: str | None = None, captions_csv=None,
                  threshold: float | None = None) -> BatchResult:
    """Predict several photos; each takes its caption from ``captions_csv`` (file_name,caption; matched by file
    name), else ``caption``. A photo that cannot be read gets an error in its row; the others are answered.

    Raises:
        MMClassifierError: no photos, too many, or an unreadable captions file.
    """
    photos = [str(p) for p in photos or []]
    if not photos:
        raise MMClassifierError("Upload one or more photos.")
    if len(photos) > MAX_BATCH_PHOTOS:
        raise MMClassifierError(f"{len(photos)} photos: at most {MAX_BATCH_PHOTOS} at a time.")
    captions = read_captions_csv(captions_csv) if captions_csv else {}
    default = _clean_caption(caption)
    rows = []
    for path in photos:
        name = Path(path).name
        row = BatchRow(name, _clean_caption(caption_for(path, captions, default)))
        try:
            row.prediction = predict(predictor, path, row.caption, threshold)
        except MMClassifierError as err:
            row.error = str(err).replace(path, name)
        rows.append(row)
    names = {Path(p).name for p in photos}
    return BatchResult(rows, [n for n in captions if Path(n).name not in names])


def batch_table(result: BatchResult) -> list[list[str]]:
    """The rows of the batch table (columns BATCH_COLUMNS, or SINGLE_LABEL_BATCH_COLUMNS)."""
    def found(row: BatchRow) -> str:
        if row.prediction is None:
            return f"⚠ {row.error}"
        return ", ".join(f"{c} ({row.prediction.probabilities[c]:.0%})" for c in row.prediction.predicted) or "(none)"

    return [[row.photo, row.caption or "", found(row)] for row in result.rows]


def write_batch_files(result: BatchResult, concepts: list[str], folder: Path) -> tuple[Path, Path]:
    """predictions.csv (one column per concept's probability) and predictions.json in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = folder / "predictions.csv", folder / "predictions.json"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["photo", "caption", "predicted", "error", *concepts])
        for row in result.rows:
            probabilities = row.prediction.probabilities if row.prediction else {}
            writer.writerow([row.photo, row.caption or "", ";".join(row.prediction.predicted if row.prediction else []),
                             row.error or "", *[f"{probabilities[c]:.6f}" if probabilities else "" for c in concepts]])
    records = [{"photo": row.photo, "caption": row.caption, "error": row.error,
                "predicted": row.prediction.predicted if row.prediction else None,
                "probabilities": row.prediction.probabilities if row.prediction else None} for row in result.rows]
    json_path.write_text(json.dumps(records, indent=2) + "\n")
    return csv_path, json_path


# ------------------------------------------------------------------------------------------------ the page

# gr.HTML templates (JavaScript template literals) and the page's styles, files beside app.py: the server sends
# numbers (the API returns the same dict), the browser draws the bars. A single-label model's classes have no
# threshold (null): no tick, and the chosen class is the one marked.
ASSETS = Path(__file__).resolve().parent / "app_assets"
CONCEPT_BARS = (ASSETS / "concept_bars.html").read_text()
THREE_WAY_BARS = (ASSETS / "three_way_bars.html").read_text()
BARS_CSS = (ASSETS / "bars.css").read_text()
CSS = (ASSETS / "page.css").read_text()
LAUNCH_OPTIONS = {"max_file_size": MAX_FILE_SIZE, "show_error": True, "css": CSS}


class PhotoInput(gr.Image):
    """gr.Image that hands unreadable uploads to our code, which says what is wrong, instead of failing inside
    Gradio's own PIL preprocessing with a generic server error."""

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except Exception:
            return None if payload is None else payload.path

    @classmethod
    def get_block_name(cls) -> str:
        return "image"  # the same front end as gr.Image


class Handlers:
    """The page's event handlers: the pure core's results as Gradio values, user mistakes as ``gr.Error``."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.single_label = predictor.model.config.single_label
        self.downloads = Path(tempfile.mkdtemp(prefix="mm_classifier_batch_"))

    @staticmethod
    def user_error(err: MMClassifierError, photo=None) -> gr.Error:
        message = str(err).replace(str(photo), "The uploaded photo") if photo else str(err)
        return gr.Error(message, print_exception=False)

    @staticmethod
    def threshold_or_none(threshold):  # the slider's 0 keeps each concept's tuned threshold
        return threshold if threshold and threshold > 0 else None

    def predict(self, photo, caption, threshold=0):
        try:
            prediction = predict(self.predictor, photo, caption, self.threshold_or_none(threshold))
        except MMClassifierError as err:
            raise self.user_error(err, photo) from None
        return (concept_view(self.predictor, prediction, self.threshold_or_none(threshold)),
                summary(prediction, self.single_label))

    def explain(self, photo, caption, threshold=0, concept=None):
        try:
            result = explain(self.predictor, photo, caption, concept or None, self.threshold_or_none(threshold))
        except MMClassifierError as err:
            raise self.user_error(err, photo) from None
        overlay = None if result.heatmap is None else heatmap_overlay(result.image, result.heatmap, *SHOWN_SIDE)
        # Plain values, no gr.update: the API returns them as they are.
        return (result.concept, overlay, highlighted_words(result.words), result.bars,
                summary(result.prediction, self.single_label))

    def explain_concept(self, photo, caption, concept, threshold=0):
        """:meth:`explain` with the concept before the threshold, which a single-label page does not have."""
        return self.explain(photo, caption, threshold, concept)

    def batch(self, files, caption, captions_file, threshold=0):
        try:
            result = predict_batch(self.predictor, files, caption, captions_file, self.threshold_or_none(threshold))
        except MMClassifierError as err:
            raise gr.Error(str(err), print_exception=False) from None
        csv_path, json_path = write_batch_files(result, self.predictor.concepts, self.downloads / uuid.uuid4().hex)
        answered = sum(row.prediction is not None for row in result.rows)
        status = f"{answered} of {len(result.rows)} photos answered."
        if answered < len(result.rows):
            status += " The rows with an error say what was wrong."
        if result.unmatched:
            status += f" The captions file also lists photos not uploaded: {', '.join(result.unmatched[:5])}"
            status += "…" if len(result.unmatched) > 5 else "."
        return batch_table(result), [str(csv_path), str(json_path)], status

    @staticmethod
    def check_upload(photo):
        problem = upload_problem(photo)
        if problem is None:
            return gr.Image(), gr.Markdown(visible=False)
        return gr.Image(value=None), gr.Markdown(f"**Not a usable photo.** {problem}", visible=True)


def one_photo_tab(concepts: list[str], examples, examples_label: str, single_label: bool = False
                  ) -> SimpleNamespace:
    """The "One photo" tab's components: inputs on the left, concepts and their explanation on the right. A
    single-label model's page has no threshold slider (``threshold`` is None): it takes the most probable class."""
    ui = SimpleNamespace()
    with gr.Row(equal_height=False):
        with gr.Column(min_width=300):
            ui.photo = PhotoInput(type="filepath", sources=["upload", "webcam", "clipboard"],
                                  label="Photo (JPEG, PNG, WebP)", elem_classes="photo-input", height=320,
                                  image_mode=None)  # our load_image converts; no second decode
            ui.notice = gr.Markdown(visible=False, elem_id="upload-notice", elem_classes="upload-notice")
            ui.caption = gr.Textbox(label="Caption (optional)", placeholder="a dog runs through the snow",
                                    lines=2, max_length=MAX_CAPTION_CHARS)
            ui.threshold = None if single_label else gr.Slider(
                0, 1, value=0, step=0.05, label="Threshold (0 = each concept's tuned threshold)")
            with gr.Row():
                ui.submit = gr.Button("Predict", variant="primary")
                ui.explain_button = gr.Button("Explain")
        with gr.Column(min_width=300):
            ui.summary = gr.Textbox(label="Summary", interactive=False)
            with gr.Tabs(selected="concepts") as ui.result_tabs:
                with gr.Tab("Concepts", id="concepts"):
                    ui.bars = gr.HTML(None, html_template=CONCEPT_BARS, css_template=BARS_CSS, js_on_load=None,
                                      elem_id="concept-bars")
                with gr.Tab("Explain", id="explain"):
                    ui.concept = gr.Dropdown(concepts, value=None,
                                             label="Class to explain" if single_label else "Concept to explain",
                                             info="Default: the most probable one")
                    ui.heatmap = gr.Image(label="Where the photo shows it (red: strongest)", type="pil",
                                          interactive=False, elem_classes="heatmap", height=320)
                    ui.words = gr.HighlightedText(label="Caption words: red ones raise the concept's probability, "
                                                        "purple ones lower it", show_legend=False,
                                                  elem_id="caption-words")
                    ui.three_way = gr.HTML(None, html_template=THREE_WAY_BARS, css_template=BARS_CSS,
                                           js_on_load=None, elem_id="three-way-bars")
    ui.examples = None
    if examples:
        ui.examples = gr.Examples(examples, [ui.photo, ui.caption], label=examples_label,
                                  examples_per_page=EXAMPLES_SHOWN, elem_id="examples")
    return ui


def batch_tab(single_label: bool = False) -> SimpleNamespace:
    """The "Batch" tab's components: photos and captions in, a table and its downloads out."""
    ui = SimpleNamespace()
    gr.Markdown(f"Up to {MAX_BATCH_PHOTOS} photos. Captions: one for all, or a CSV with the header "
                "`file_name,caption` (photos it does not list take the one for all, or none).")
    with gr.Row(equal_height=False):
        with gr.Column(min_width=300):
            ui.photos = gr.File(label="Photos", file_count="multiple", file_types=["image"], elem_id="batch-photos")
            ui.caption = gr.Textbox(label="Caption for all (optional)", lines=1, max_length=MAX_CAPTION_CHARS)
            ui.captions = gr.File(label="Captions CSV (optional): file_name,caption", file_types=[".csv", ".txt"],
                                  elem_id="batch-captions")
            ui.button = gr.Button("Predict all", variant="primary")
        with gr.Column(min_width=300):
            ui.status = gr.Markdown(elem_id="batch-status")
            ui.table = gr.Dataframe(headers=SINGLE_LABEL_BATCH_COLUMNS if single_label else BATCH_COLUMNS,
                                    interactive=False, wrap=True,
                                    label="Class per photo" if single_label else "Concepts per photo",
                                    elem_id="batch-table", column_widths=["28%", "28%", "44%"])
            ui.files = gr.File(label="Download (CSV, JSON)", file_count="multiple", interactive=False,
                               elem_id="batch-downloads")
    return ui


def wire_events(handlers: Handlers, one: SimpleNamespace, batch: SimpleNamespace) -> None:
    """Connect the components to the handlers; the named ones are the app's API."""
    # Every event that runs the model shares one concurrency group: CONCURRENCY model runs at a time in all.
    model = {"concurrency_id": "model"}
    one.photo.upload(handlers.check_upload, one.photo, [one.photo, one.notice], api_visibility="private", **model)
    one.photo.clear(lambda: gr.Markdown(visible=False), None, one.notice, api_visibility="private", queue=False)
    stale = [one.bars, one.summary, one.heatmap, one.words, one.three_way]  # results of the photo before
    for event in (one.photo.upload, one.photo.clear):
        event(lambda: [None, "", None, None, None], None, stale, api_visibility="private", queue=False)
    # A single-label page has no slider: its events leave the threshold out (the handlers' default).
    threshold = [] if one.threshold is None else [one.threshold]
    predicted = [one.photo, one.caption, *threshold], [one.bars, one.summary]
    one.submit.click(handlers.predict, *predicted, api_name="predict", **model)
    one.caption.submit(handlers.predict, *predicted, api_visibility="private", **model)
    if one.examples is not None:  # an example click runs the prediction at once
        one.examples.load_input_event.then(handlers.predict, *predicted, api_visibility="private", **model)
    explained = [one.concept, one.heatmap, one.words, one.three_way, one.summary]
    one.explain_button.click(handlers.explain, [one.photo, one.caption, *threshold], explained,
                             api_name="explain", **model)
    one.concept.input(handlers.explain_concept, [one.photo, one.caption, one.concept, *threshold], explained,
                      api_visibility="private", **model)
    for button, tab in ((one.submit, "concepts"), (one.explain_button, "explain")):
        button.click(lambda tab=tab: gr.Tabs(selected=tab), None, one.result_tabs, api_visibility="private",
                     queue=False)
    batch.button.click(handlers.batch, [batch.photos, batch.caption, batch.captions, *threshold],
                       [batch.table, batch.files, batch.status], api_name="predict_batch", **model)


def build_demo(predictor: Predictor, examples: list[list] | None = None, info: ModelInfo | None = None,
               examples_label: str = "Examples") -> gr.Blocks:
    """The page wired to :func:`predict`, :func:`explain` and :func:`predict_batch`; launch it yourself
    (``build_demo(p).launch(**LAUNCH_OPTIONS)``)."""
    info = info or describe_model(predictor)
    single_label = predictor.model.config.single_label
    intro = ("Which class is it? Give a photo, a caption, or both: each class gets a probability, and the most "
             "probable one is the answer (exactly one)." if single_label else
             "Which concepts are in the scene? Give a photo, a caption, or both: each concept gets a probability, "
             "and every concept at or above its threshold is found (a scene can have several).")
    with gr.Blocks(title="mm_classifier", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# mm_classifier\n{intro}\n\n{model_description(predictor, info)}")
        note = sample_note(predictor, info)
        if note:
            gr.Markdown(note, elem_id="sample-note", elem_classes="sample-note")
        with gr.Tabs():
            with gr.Tab("One photo", id="one"):
                one = one_photo_tab(predictor.model.config.concepts, examples, examples_label, single_label)
            with gr.Tab("Batch", id="batch"):
                batch = batch_tab(single_label)
        wire_events(Handlers(predictor), one, batch)
    return demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)


# ------------------------------------------------------------------------------------------------ examples


def sample_examples(count: int = EXAMPLES_SHOWN) -> list[list]:
    """Photos and captions of the built-in sample's test split (scenes a sample model never trained on)."""
    from mm_classifier import load_flickr8k

    # Loading the sample shows a "Checking photos" bar that datasets.disable_progress_bars() does not reach; a
    # second or two at start is no wait worth a bar in the server's log.
    with contextlib.redirect_stderr(io.StringIO()):
        test = load_flickr8k("sample")["test"]
    undecoded = test.cast_column("image", test.features["image"].__class__(decode=False))
    rows = undecoded.select(range(min(count, len(test))))
    return [[row["image"]["path"], row["captions"][0]] for row in rows]


def folder_examples(folder: str | os.PathLike, count: int = EXAMPLES_SHOWN) -> list[list]:
    """The photos of a folder, each with its caption from the folder's captions.csv (file_name,caption) if any.

    Raises:
        MMClassifierError: no such folder, or no photos in it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MMClassifierError(f"--examples {folder}: no such folder.")
    captions = read_captions_csv(folder / "captions.csv") if (folder / "captions.csv").is_file() else {}
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        raise MMClassifierError(f"--examples {folder}: no photos ({', '.join(sorted(PHOTO_SUFFIXES))}) in it.")
    return [[str(p), caption_for(p, captions, "")] for p in photos[:count]]


# ------------------------------------------------------------------------------------------------ the script


def internet_reachable(host: str = "api.gradio.app", port: int = 443, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default=os.environ.get("MM_CLASSIFIER_MODEL", DEFAULT_MODEL),
        help="model folder or hub id (default: $MM_CLASSIFIER_MODEL or %(default)s)",
    )
    parser.add_argument("--server-name", default="127.0.0.1", help="0.0.0.0 to serve your network")
    parser.add_argument("--server-port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="public share link (needs internet)")
    parser.add_argument("--examples", default=None, metavar="DIR",
                        help="example photos (and an optional captions.csv: file_name,caption); default: the "
                             "built-in sample's scenes for a model trained on them, none for any other")
    parser.add_argument("--no-examples", action="store_true", help="show no examples")
    return parser


def quiet_libraries() -> None:
    """No progress bars for loading the sample's examples: nobody waits on them long (loading a model shows none)."""
    import datasets

    datasets.disable_progress_bars()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        predictor = Predictor.from_pretrained(args.model)
        info = replace(describe_model(predictor), source=args.model)  # the hub id rather than its cache folder
        examples, label = None, "Examples"
        if args.examples and not args.no_examples:
            examples, label = folder_examples(args.examples), f"Examples from {args.examples}"
        elif info.synthetic and not args.no_examples:
            examples, label = sample_examples(), "Examples: scenes of the built-in sample's test split"
    except MMClassifierError as err:
        print(f"error: {err}", file=sys.stderr)
        if args.model == DEFAULT_MODEL:
            print("Run `python train.py` first: it trains a model into outputs/fusion.", file=sys.stderr)
        return 2
    if args.share and not internet_reachable():
        print("error: --share needs internet access (a tunnel through Gradio's share servers), and they cannot be "
              "reached. Run without --share to serve locally.", file=sys.stderr)
        return 2
    # Requests run side by side, one core each: torch's own threads inside each prediction would compete with the
    # other requests' for the same cores, and on a busy machine make every prediction several times slower.
    import torch

    torch.set_num_threads(1)
    demo = build_demo(predictor, examples, info, label)
    # quiet: Gradio's own hints name its launch() arguments; ours name this script's options.
    _, local_url, share_url = demo.launch(server_name=args.server_name, server_port=args.server_port,
                                          share=args.share, prevent_thread_lock=True, quiet=True, **LAUNCH_OPTIONS)
    print(f"Serving {args.model} on {local_url}")
    if not share_url:
        print("For a public link for others: python app.py --share (needs internet).")
    print("Press Ctrl+C to stop.")
    demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
