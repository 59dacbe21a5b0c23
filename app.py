"""Gradio app: upload a photo (and optionally a caption) and see which concepts a trained model finds.

    python app.py                         # serves outputs/fusion on http://127.0.0.1:7860
    python app.py --model DIR_OR_HUB_ID --share
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

import gradio as gr

from mm_classifier import MMClassifierError, Predictor
from mm_classifier.plots import plot_prediction  # sets matplotlib's headless backend first
import matplotlib.pyplot as plt  # noqa: E402  (after plots)
from mm_classifier.processing import load_image

DEFAULT_MODEL = "outputs/fusion"
MAX_CAPTION_CHARS = 2000  # longer captions are cut (the model reads 32 words anyway)
MAX_FILE_SIZE = "10mb"
TOP_K = 10


def predict(predictor: Predictor, photo=None, caption: str | None = None, threshold: float | None = None) -> dict:
    """Concept -> probability for a photo (path, PIL or numpy) and/or a caption; the app's pure core.

    Raises:
        MMClassifierError: nothing given, or the photo cannot be read.
    """
    caption = (caption or "").strip()[:MAX_CAPTION_CHARS] or None
    if photo is None and caption is None:
        raise MMClassifierError("Upload a photo or type a caption (or both).")
    config = predictor.model.config
    if photo is None and not config.uses_text:
        raise MMClassifierError("This model reads photos only: upload a photo.")
    if caption is None and not config.uses_image:
        raise MMClassifierError("This model reads captions only: type a caption.")
    image = load_image(photo) if photo is not None else None
    return predictor.predict(image, caption, thresholds=threshold)[0]


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


def build_demo(predictor: Predictor, examples: list[list] | None = None) -> gr.Blocks:
    """The UI wired to :func:`predict`; launch it yourself (``build_demo(p).launch()``)."""
    config = predictor.model.config

    def run(photo, caption, threshold=0):
        try:
            image = load_image(photo) if photo is not None else None  # decoded once, for model and figure
            # A threshold of 0 (the slider's default) keeps each concept's tuned threshold.
            prediction = predict(predictor, image, caption, threshold if threshold and threshold > 0 else None)
        except MMClassifierError as err:
            message = str(err).replace(str(photo), "The uploaded photo") if photo else str(err)
            raise gr.Error(message, print_exception=False) from None
        figure = None
        if image is not None:
            figure = plot_prediction(image, prediction, caption)
            plt.close(figure)  # Gradio still renders it; pyplot must not keep every request's figure alive
        found = ", ".join(f"{c} ({prediction.probabilities[c]:.0%})" for c in prediction.predicted)
        summary = f"Found: {found}." if found else "No concept above its threshold."
        return prediction.probabilities, figure, summary

    with gr.Blocks(title="mm_classifier") as demo:
        gr.Markdown(
            f"# mm_classifier\nWhich of {config.num_labels} concepts are in the scene? Give a photo, a caption, or "
            f"both (`{config.modality}` model). Concepts: {', '.join(config.concepts)}."
        )
        with gr.Row():
            with gr.Column():
                photo = PhotoInput(
                    type="filepath", sources=["upload", "webcam", "clipboard"], label="Photo (JPEG, PNG, WebP)"
                )
                caption = gr.Textbox(label="Caption (optional)", placeholder="a dog runs through the snow", lines=2)
                threshold = gr.Slider(
                    0, 1, value=0, step=0.05,
                    label="Threshold (0 = each concept's tuned threshold)",
                )
                submit = gr.Button("Predict", variant="primary")
            with gr.Column():
                label = gr.Label(num_top_classes=TOP_K, label="Concepts")
                summary = gr.Textbox(label="Summary", interactive=False)
                plot = gr.Plot(label="Prediction")
        submit.click(run, [photo, caption, threshold], [label, plot, summary], api_name="predict")
        caption.submit(run, [photo, caption, threshold], [label, plot, summary], api_visibility="private")
        if examples:
            gr.Examples(examples, [photo, caption], label="Examples from the built-in sample")
    # A bounded queue: at most 4 predictions at once, the rest wait (or are refused past 64).
    return demo.queue(default_concurrency_limit=4, max_size=64)


def sample_examples(count: int = 4) -> list[list]:
    """A few photos and captions of the built-in sample (generated on first use, offline)."""
    from mm_classifier import load_flickr8k

    test = load_flickr8k("sample")["test"]
    rows = test.cast_column("image", test.features["image"].__class__(decode=False)).select(range(min(count, len(test))))
    return [[row["image"]["path"], row["captions"][0]] for row in rows]


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
    parser.add_argument("--no-examples", action="store_true", help="do not generate the sample's examples")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        predictor = Predictor.from_pretrained(args.model)
    except MMClassifierError as err:
        print(f"error: {err}", file=sys.stderr)
        if args.model == DEFAULT_MODEL:
            print("Run `python train.py` first: it trains a model into outputs/fusion.", file=sys.stderr)
        return 2
    if args.share and not internet_reachable():
        print("error: --share needs internet access (a tunnel through Gradio's share servers), and they cannot be "
              "reached. Run without --share to serve locally.", file=sys.stderr)
        return 2
    demo = build_demo(predictor, None if args.no_examples else sample_examples())
    demo.launch(server_name=args.server_name, server_port=args.server_port, share=args.share,
                max_file_size=MAX_FILE_SIZE, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
