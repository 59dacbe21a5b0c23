"""Prediction API (:class:`Predictor`) and CLI: ``python -m mm_classifier.predict --model DIR PHOTO ...``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import MMClassifierError
from .images import load_image
from .prediction import BasePredictor, Prediction, resolve_model_dir

if TYPE_CHECKING:
    import torch

    from .explain import Explanation
    from .modeling import MultiModalClassifier
    from .processing import MultiModalProcessor

logger = logging.getLogger(__name__)

BACKENDS = ("pytorch", "onnx")
__all__ = ["BACKENDS", "Prediction", "Predictor", "main", "resolve_model_dir"]


class Predictor(BasePredictor):
    """Model + processor, ready to predict concepts for photos and/or captions (the PyTorch backend; torch is
    imported when one is built, so that ``backend="onnx"`` runs without it).

    >>> predictor = Predictor.from_pretrained("outputs/fusion")
    >>> predictor.predict(["dog.jpg"], ["a dog in the snow"])[0].predicted
    """

    explains = True

    def __init__(self, model: MultiModalClassifier, processor: MultiModalProcessor, device: str | None = None):
        import torch

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        # channels_last doubles MobileNetV2's CPU throughput (benchmarks/inference.py).
        if model.image_encoder is not None:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.processor = processor

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, device: str | None = None, backend: str = "pytorch"):
        """Load from a folder written by ``train.py`` / :meth:`save_pretrained`, or a hub id.

        Only ``config.json``, ``processor_config.json``, the tokenizer's JSON and ``model.safetensors`` are read,
        with this package's classes: the code files a folder carries (for other programs) are never run, and
        no pickle is ever loaded.

        Args:
            backend: ``"pytorch"``, or ``"onnx"`` for the graphs ``python -m mm_classifier.export`` wrote: an
                :class:`~mm_classifier.onnx_runtime.OnnxPredictor` (onnxruntime; no torch, transformers or timm).
        """
        if backend not in BACKENDS:
            raise MMClassifierError(f"Unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}.")
        if backend == "onnx":
            from .onnx_runtime import OnnxPredictor

            return OnnxPredictor.from_pretrained(model)
        from transformers.utils import logging as transformers_logging

        from .modeling import MultiModalClassifier
        from .processing import MultiModalProcessor

        directory = resolve_model_dir(model)
        # Loading a folder takes a moment, not a progress bar's worth (transformers shows one per load); the
        # caller's setting is restored afterwards.
        bar_was_on = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()
        try:
            classifier = MultiModalClassifier.from_pretrained(str(directory), use_safetensors=True)
            processor = MultiModalProcessor.from_pretrained(directory)
        except MMClassifierError:
            raise
        except Exception as err:
            raise MMClassifierError(f"Cannot load the model in {directory}: {type(err).__name__}: {err}") from err
        finally:
            if bar_was_on:
                transformers_logging.enable_progress_bar()
        return cls(classifier, processor, device)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """One folder with everything needed to predict: config (concepts, thresholds), weights, processor."""
        self.model.save_pretrained(directory)
        self.processor.save_pretrained(directory)

    @property
    def config(self):
        return self.model.config

    def predict_logits(self, images=None, captions=None) -> torch.Tensor:
        """(B, num_concepts) logits for a batch; the model's own inputs are used, missing ones left out."""
        import torch

        images, captions = self._inputs_read(images, captions)
        with torch.inference_mode():
            # Each tensor moved by itself: BatchFeature.to checks its argument and each value in Python first.
            batch = {key: value.to(self.device) for key, value in self.processor(images=images, text=captions).items()}
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
            return self.model(**batch).logits.float()

    def probability_rows(self, images=None, captions=None):
        return self.model.probabilities(self.predict_logits(images, captions)).cpu().numpy()

    def explain(self, photo=None, caption: str | None = None, concepts: Sequence[str] | str | None = None,
                max_heatmap_side: int | None = None) -> Explanation:
        """Why the model predicts what it does: see :func:`mm_classifier.explain.explain` (same arguments)."""
        from .explain import explain  # explain.py needs Predictor only for its type hints

        return explain(self, photo, caption, concepts, max_heatmap_side)


# ------------------------------------------------------------------------------------------------- CLI

EXPLAINED_CONCEPTS = 3  # heat maps per --explain figure: the most probable concepts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mm_classifier.predict", description="Predict the concepts in photos (and captions)."
    )
    parser.add_argument("--model", default="outputs/fusion", help="model folder or hub id (default: %(default)s)")
    parser.add_argument("photos", nargs="*", help="photo files (default with --captions-csv: the photos it lists)")
    parser.add_argument("--caption", default=None,
                        help="a caption for every photo (with --captions-csv: for the photos it does not list)")
    parser.add_argument("--captions-csv", type=Path, default=None,
                        help="per-photo captions: a CSV with the header file_name,caption; photos are matched by "
                             "file name, and without photo arguments the listed photos are read from its folder")
    parser.add_argument("--threshold", type=float, default=None,
                        help="one threshold for all concepts (multi-label models)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="single-label: print the K most probable classes (default 1); multi-label: at most K")
    parser.add_argument("--backend", choices=BACKENDS, default="pytorch",
                        help="onnx: the graphs python -m mm_classifier.export wrote, on onnxruntime (no --explain)")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--plot-dir", type=Path, default=None, help="write one figure per photo here")
    parser.add_argument("--explain", type=Path, default=None, metavar="DIR",
                        help="write one explanation figure per photo here (heat maps, word contributions)")
    return parser


def _rows(predictor: BasePredictor, args) -> list:
    """Each photo's (or the lone caption's) prediction, or why there is none."""
    from .serving import BatchRow, predict, predict_batch

    if args.photos or args.captions_csv is not None:
        return predict_batch(predictor, args.photos, args.caption, args.captions_csv, args.threshold, args.top_k,
                             limit=None).rows
    prediction = predict(predictor, None, args.caption, args.threshold, args.top_k)
    return [BatchRow("(caption only)", args.caption, prediction)]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.photos and args.caption is None and args.captions_csv is None:
        print("error: give at least one photo, --caption or --captions-csv", file=sys.stderr)
        return 2
    try:
        if args.explain is not None and args.backend == "onnx":
            raise MMClassifierError("--explain needs gradients, which only the PyTorch backend has (--backend "
                                    "pytorch).")
        predictor = Predictor.from_pretrained(args.model, backend=args.backend)
        predictor._thresholds(args.threshold)  # a --threshold that does not apply fails once, not per photo
        rows = _rows(predictor, args)
    except MMClassifierError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    records = []
    for row in rows:
        if row.prediction is None:
            print(f"{row.path}: skipped: {row.error}", file=sys.stderr)
            continue
        prediction = row.prediction
        shown = ", ".join(f"{c} {prediction.probabilities[c]:.2f}" for c in prediction.predicted) or "(none)"
        print(f"{row.path or row.photo}: {shown}")
        records.append({"image": row.path or None, "caption": row.caption, **asdict(prediction)})
        if row.path and (args.plot_dir is not None or args.explain is not None):
            _figures(predictor, row, args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0 if records else 1


def _figures(predictor: BasePredictor, row, args) -> None:
    """--plot-dir's prediction figure and --explain's explanation figure of one photo."""
    from .plots import plot_explanation, plot_prediction

    image = load_image(row.path)
    cutoffs = _cutoffs(predictor, args.threshold)
    name = f"{Path(row.path).stem}.png"
    if args.plot_dir is not None:
        _save_figure(plot_prediction(image, row.prediction, row.caption, thresholds=cutoffs), args.plot_dir / name)
    if args.explain is not None:
        top = sorted(row.prediction.probabilities, key=row.prediction.probabilities.get, reverse=True)
        explanation = predictor.explain(image, row.caption, concepts=top[:EXPLAINED_CONCEPTS])
        _save_figure(plot_explanation(image, explanation, thresholds=cutoffs), args.explain / name)


def _cutoffs(predictor: BasePredictor, threshold: float | None) -> dict[str, float] | None:
    cutoffs = predictor._thresholds(threshold)
    return None if cutoffs is None else dict(zip(predictor.concepts, cutoffs, strict=True))


def _save_figure(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
