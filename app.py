"""Gradio app: which concepts a trained model finds in a photo and its caption, why, and for many photos at once.

    python app.py                         # serves outputs/fusion on http://127.0.0.1:7860
    python app.py --model DIR_OR_HUB_ID --examples DIR --share
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from mm_classifier import MMClassifierError
from mm_classifier.predict import BACKENDS, Predictor
from mm_classifier.prediction import BasePredictor
from mm_classifier.serving import (
    EXAMPLES_SHOWN,
    MAX_BATCH_PHOTOS,
    MAX_CAPTION_CHARS,
    ModelInfo,
    batch_table,
    concept_view,
    describe_model,
    explain,
    folder_examples,
    highlighted_words,
    model_description,
    predict,
    predict_batch,
    sample_examples,
    sample_note,
    summary,
    upload_problem,
    write_batch_files,
)

DEFAULT_MODEL = "outputs/fusion"
DEFAULT_BACKEND = "pytorch" if importlib.util.find_spec("torch") else "onnx"
EXAMPLES = Path(__file__).resolve().parent / "examples"  # a Space's example photos (python -m mm_classifier.space)
MAX_FILE_SIZE = "10mb"
SHOWN_SIDE = (320, 512)  # heat maps are sent at least and at most this large (small photos: pixels enlarged)
# Predictions waiting beyond QUEUE_SIZE get Gradio's "queue is full" at once instead of a long wait; CONCURRENCY
# predictions run at a time, each in its own worker thread on one CPU core (main() gives each backend one thread
# per prediction), so the server keeps answering while they run.
QUEUE_SIZE = 64
CONCURRENCY = min(4, os.cpu_count() or 1)
BATCH_COLUMNS = ["photo", "caption", "concepts found (or the error)"]
SINGLE_LABEL_BATCH_COLUMNS = ["photo", "caption", "class (or the error)"]

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

    def __init__(self, predictor: BasePredictor):
        self.predictor = predictor
        self.single_label = predictor.config.single_label
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
        from mm_classifier.plots import heatmap_overlay  # matplotlib: only where there are explanations

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


def one_photo_tab(concepts: list[str], examples, examples_label: str, single_label: bool = False,
                  explains: bool = True) -> SimpleNamespace:
    """The "One photo" tab's components: inputs on the left, concepts and their explanation on the right. A
    single-label model's page has no threshold slider (``threshold`` is None): it takes the most probable class.
    Without ``explains`` (the ONNX backend, which has no gradients) there is no Explain button and view."""
    ui = SimpleNamespace(explain_button=None, concept=None, heatmap=None, words=None, three_way=None)
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
                if explains:
                    ui.explain_button = gr.Button("Explain")
        with gr.Column(min_width=300):
            ui.summary = gr.Textbox(label="Summary", interactive=False)
            with gr.Tabs(selected="concepts") as ui.result_tabs:
                with gr.Tab("Concepts", id="concepts"):
                    ui.bars = gr.HTML(None, html_template=CONCEPT_BARS, css_template=BARS_CSS, js_on_load=None,
                                      elem_id="concept-bars")
                with gr.Tab("Explain", id="explain", visible=explains):
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
    stale = [c for c in (one.bars, one.summary, one.heatmap, one.words, one.three_way) if c is not None]
    for event in (one.photo.upload, one.photo.clear):  # results of the photo before go
        event(lambda: [None, "", None, None, None][: len(stale)], None, stale, api_visibility="private", queue=False)
    # A single-label page has no slider: its events leave the threshold out (the handlers' default).
    threshold = [] if one.threshold is None else [one.threshold]
    predicted = [one.photo, one.caption, *threshold], [one.bars, one.summary]
    one.submit.click(handlers.predict, *predicted, api_name="predict", **model)
    one.caption.submit(handlers.predict, *predicted, api_visibility="private", **model)
    if one.examples is not None:  # an example click runs the prediction at once
        one.examples.load_input_event.then(handlers.predict, *predicted, api_visibility="private", **model)
    if one.explain_button is not None:
        explained = [one.concept, one.heatmap, one.words, one.three_way, one.summary]
        one.explain_button.click(handlers.explain, [one.photo, one.caption, *threshold], explained,
                                 api_name="explain", **model)
        one.concept.input(handlers.explain_concept, [one.photo, one.caption, one.concept, *threshold], explained,
                          api_visibility="private", **model)
    for button, tab in ((one.submit, "concepts"), (one.explain_button, "explain")):
        if button is not None:
                button.click(lambda tab=tab: gr.Tabs(selected=tab), None, one.result_tabs, api_visibility="private",
                         queue=False)
    batch.button.click(handlers.batch, [batch.photos, batch.caption, batch.captions, *threshold],
                       [batch.table, batch.files, batch.status], api_name="predict_batch", **model)


def build_demo(predictor: BasePredictor, examples: list[list] | None = None, info: ModelInfo | None = None,
               examples_label: str = "Examples") -> gr.Blocks:
    """The page wired to mm_classifier.serving's :func:`predict`, :func:`explain` and :func:`predict_batch`, for
    either backend; launch it yourself (``build_demo(p).launch(**LAUNCH_OPTIONS)``)."""
    info = info or describe_model(predictor)
    single_label = predictor.config.single_label
    intro = ("Which class is it? Give a photo, a caption, or both: each class gets a probability, and the most "
             "probable one is the answer (exactly one)." if single_label else
             "Which concepts are in the scene? Give a photo, a caption, or both: each concept gets a probability, "
             "and every concept at or above its threshold is found (a scene can have several).")
    with gr.Blocks(title="mm_classifier", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# mm_classifier\n{intro}\n\n{model_description(predictor, info)}")
        note = sample_note(predictor, info)
        if note:
            gr.Markdown(note, elem_id="sample-note", elem_classes="sample-note")
        if not predictor.explains:
            gr.Markdown("Explanations (heat maps, word contributions) need the PyTorch backend: this page serves "
                        "the ONNX one (`python app.py --backend pytorch` has them).", elem_id="no-explain-note")
        with gr.Tabs():
            with gr.Tab("One photo", id="one"):
                one = one_photo_tab(predictor.concepts, examples, examples_label, single_label, predictor.explains)
            with gr.Tab("Batch", id="batch"):
                batch = batch_tab(single_label)
        wire_events(Handlers(predictor), one, batch)
    return demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)


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
                             "examples/ folder beside app.py (a Space's), else the built-in sample's scenes for a "
                             "model trained on them, none for any other")
    parser.add_argument("--no-examples", action="store_true", help="show no examples")
    parser.add_argument("--backend", choices=BACKENDS, default=os.environ.get("MM_CLASSIFIER_BACKEND", DEFAULT_BACKEND),
                        help="onnx: the graphs python -m mm_classifier.export wrote, on onnxruntime, without torch "
                             "(no explanations); default: $MM_CLASSIFIER_BACKEND, else pytorch where torch is "
                             "installed and onnx where it is not (a Space); here %(default)s")
    return parser


def load_predictor(model: str, backend: str) -> BasePredictor:
    """The served model. Requests run side by side, one core each: a backend's own threads inside each prediction
    would compete with the other requests' for the same cores (on a busy machine every prediction several times
    slower), so the ONNX graphs run on one thread each, and main() gives torch one thread once serving starts."""
    if backend == "onnx":
        from mm_classifier.onnx_runtime import OnnxPredictor

        return OnnxPredictor.from_pretrained(model, threads=1)
    return Predictor.from_pretrained(model)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        predictor = load_predictor(args.model, args.backend)
        info = describe_model(predictor, source=args.model)  # the hub id rather than its cache folder
        examples, label = None, "Examples"
        if args.examples and not args.no_examples:
            examples, label = folder_examples(args.examples), f"Examples from {args.examples}"
        elif EXAMPLES.is_dir() and not args.no_examples:
            examples = folder_examples(EXAMPLES)
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
    if args.backend == "pytorch":
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
