"""Prediction API (:class:`Predictor`) and CLI: ``python -m mm_classifier.predict --model DIR PHOTO ...``."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers.utils import logging as transformers_logging

from .errors import MMClassifierError
from .modeling import MultiModalClassifier
from .processing import MultiModalProcessor, load_image

if TYPE_CHECKING:
    from .explain import Explanation

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """One input's result: every concept's probability, and the concepts predicted, most probable first: those at or
    above their thresholds (multi-label), or the most probable class (single-label)."""

    probabilities: dict[str, float]
    predicted: list[str]


def resolve_model_dir(model: str | os.PathLike) -> Path:
    """A local model folder, or a hub id downloaded to the local cache; clear errors for both."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MMClassifierError(
                f"{path} is not a saved mm_classifier model (no config.json). Train one with `python train.py` "
                "and point at its output, e.g. outputs/fusion."
            )
        return path
    parts = str(model).split("/")
    if path.exists() or len(parts) != 2 or str(model).startswith((".", "/", "~")):
        raise MMClassifierError(
            f"No model at {model}. Train one first with `python train.py` (it writes outputs/fusion), "
            "or pass a model folder or a hub id."
        )
    import huggingface_hub

    try:
        # JSON and safetensors only: the folder's code files are for other programs, never run here.
        return Path(huggingface_hub.snapshot_download(str(model), allow_patterns=["*.json", "*.safetensors"]))
    except Exception as err:
        raise MMClassifierError(
            f"No local folder {model} and it could not be downloaded from the hub ({type(err).__name__}: {err}). "
            "Offline, pass a local model folder."
        ) from err


class Predictor:
    """Model + processor, ready to predict concepts for photos and/or captions.

    >>> predictor = Predictor.from_pretrained("outputs/fusion")
    >>> predictor.predict(["dog.jpg"], ["a dog in the snow"])[0].predicted
    """

    def __init__(self, model: MultiModalClassifier, processor: MultiModalProcessor, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        # channels_last doubles MobileNetV2's CPU throughput (benchmarks/inference.py).
        if model.image_encoder is not None:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.processor = processor

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, device: str | None = None) -> Predictor:
        """Load from a folder written by ``train.py`` / :meth:`save_pretrained`, or a hub id.

        Only ``config.json``, ``processor_config.json``, the tokenizer's JSON and ``model.safetensors`` are read,
        with this package's classes: the code files a folder carries (for other programs) are never run, and
        no pickle is ever loaded.
        """
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
    def concepts(self) -> list[str]:
        return self.model.config.concepts

    @torch.inference_mode()
    def predict_logits(self, images=None, captions=None) -> torch.Tensor:
        """(B, num_concepts) logits for a batch; the model's own inputs are used, missing ones left out."""
        config = self.model.config
        if not config.uses_image:
            images = None
        if not config.uses_text:
            captions = None
        if images is None and captions is None:
            raise MMClassifierError(
                f"This {config.modality} model needs a "
                + ({"image": "photo", "text": "caption"}.get(config.modality, "photo or a caption"))
                + "; none was given."
            )
        batch = self.processor(images=images, text=captions).to(self.device)
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
        return self.model(**batch).logits.float()

    def predict(
        self,
        images: Sequence | object | None = None,
        captions: Sequence[str] | str | None = None,
        thresholds: Sequence[float] | float | None = None,
        batch_size: int = 32,
        top_k: int | None = None,
    ) -> list[Prediction]:
        """Predict concepts.

        Args:
            images: a photo or a list of photos (paths, PIL images, numpy arrays), or None.
            captions: a caption or a list (one per photo), or None. A single caption with several photos is
                used for each of them.
            thresholds: multi-label: one number for every concept, or one per concept; default: the model's tuned
                thresholds. A single-label model has none: it predicts its most probable class.
            top_k: single-label: how many of the most probable classes ``predicted`` holds (default 1);
                multi-label: at most this many of the concepts at or above their thresholds (default: all).

        Returns:
            One :class:`Prediction` per input, ``predicted`` most probable first.
        """
        images = _as_list(images)
        captions = _as_list(captions)
        if not images and not captions:
            raise MMClassifierError("Give a photo, a caption, or both: none was given.")
        if images is not None and captions is not None and len(captions) == 1 and len(images) > 1:
            captions = captions * len(images)
        if images is not None and captions is not None and len(images) != len(captions):
            raise MMClassifierError(f"Got {len(images)} photos but {len(captions)} captions.")
        cutoffs = self._thresholds(thresholds)
        cutoffs = None if cutoffs is None else dict(zip(self.concepts, cutoffs, strict=True))
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise MMClassifierError(f"top_k must be a positive number of classes, not {top_k!r}.")
        count = len(images if images is not None else captions or [])
        results: list[Prediction] = []
        for start in range(0, count, batch_size):
            end = start + batch_size
            logits = self.predict_logits(
                images[start:end] if images is not None else None,
                captions[start:end] if captions is not None else None,
            )
            for row in self.model.probabilities(logits).cpu().tolist():
                probabilities = dict(zip(self.concepts, row, strict=True))
                ranked = sorted(self.concepts, key=lambda c: -probabilities[c])
                if cutoffs is None:  # single-label: the most probable class(es)
                    predicted = ranked[: top_k or 1]
                else:
                    predicted = [c for c in ranked if probabilities[c] >= cutoffs[c]][:top_k]
                results.append(Prediction(probabilities, predicted))
        return results

    def explain(self, photo=None, caption: str | None = None, concepts: Sequence[str] | str | None = None
                ) -> Explanation:
        """Why the model predicts what it does: see :func:`mm_classifier.explain.explain` (same arguments)."""
        from .explain import explain  # explain.py needs Predictor only for its type hints

        return explain(self, photo, caption, concepts)

    def _thresholds(self, thresholds) -> list[float] | None:
        """The cut-offs a prediction uses (None for a single-label model, which takes its most probable class)."""
        if self.model.config.single_label:
            if thresholds is not None:
                raise MMClassifierError("This single-label model predicts its most probable class: thresholds do not "
                                        "apply to it (top_k asks for more classes).")
            return None
        if thresholds is None:
            return list(self.model.config.thresholds)
        if isinstance(thresholds, (int, float)):
            return [float(thresholds)] * len(self.concepts)
        if len(thresholds) != len(self.concepts):
            raise MMClassifierError(f"Need {len(self.concepts)} thresholds (one per concept), got {len(thresholds)}.")
        return [float(t) for t in thresholds]


def _as_list(value):
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


# ------------------------------------------------------------------------------------------------- CLI

EXPLAINED_CONCEPTS = 3  # heat maps per --explain figure: the most probable concepts
PHOTO_COLUMNS = ("file_name", "image")  # file_name: Hugging Face imagefolder's metadata.csv; image: Kaggle Flickr8k


def read_captions_csv(path: str | os.PathLike) -> dict[str, str]:
    """Photo file name -> caption from a CSV with a header: ``file_name,caption`` (``image,caption`` also works,
    so Kaggle Flickr8k's captions.txt can be given; a photo listed twice keeps its first caption).

    Raises:
        MMClassifierError: the file cannot be read or has no such columns.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [name.strip() for name in reader.fieldnames or []]
            photo_column = next((name for name in PHOTO_COLUMNS if name in columns), None)
            if photo_column is None or "caption" not in columns:
                raise MMClassifierError(
                    f"{path} needs a header line with the columns file_name,caption (found: "
                    f"{','.join(columns) or 'nothing'})."
                )
            reader.fieldnames = columns
            captions: dict[str, str] = {}
            for row in reader:
                name = (row.get(photo_column) or "").strip()
                if name:
                    captions.setdefault(name, (row.get("caption") or "").strip())
            return captions
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise MMClassifierError(f"Cannot read the captions file {path}: {err}") from err


def caption_for(photo: str | os.PathLike, captions: dict[str, str], default: str | None = None) -> str | None:
    """The caption a captions CSV gives a photo (matched by file name, or by the path as listed), else default."""
    photo = str(photo)
    for key in (photo, Path(photo).name):
        if captions.get(key):
            return captions[key]
    return default


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
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--plot-dir", type=Path, default=None, help="write one figure per photo here")
    parser.add_argument("--explain", type=Path, default=None, metavar="DIR",
                        help="write one explanation figure per photo here (heat maps, word contributions)")
    return parser


def _inputs(args) -> list[tuple[str | None, str | None]]:
    """(photo, caption) pairs to predict, from the photo arguments, --captions-csv and --caption."""
    if args.captions_csv is None:
        return [(p, args.caption) for p in args.photos] or [(None, args.caption)]
    captions = read_captions_csv(args.captions_csv)
    if args.photos:
        return [(p, caption_for(p, captions, args.caption)) for p in args.photos]
    folder = args.captions_csv.parent
    return [(str(folder / name), caption or args.caption) for name, caption in captions.items()]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.photos and args.caption is None and args.captions_csv is None:
        print("error: give at least one photo, --caption or --captions-csv", file=sys.stderr)
        return 2
    try:
        inputs = _inputs(args)
        predictor = Predictor.from_pretrained(args.model)
        predictor._thresholds(args.threshold)  # a --threshold that does not apply fails once, not per photo
    except MMClassifierError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    records, failures = [], 0
    for photo, caption in inputs:
        try:
            image = load_image(photo) if photo is not None else None
            prediction = predictor.predict(image, caption, thresholds=args.threshold, top_k=args.top_k)[0]
            explanation = None
            if args.explain is not None and image is not None:
                top = sorted(prediction.probabilities, key=prediction.probabilities.get, reverse=True)
                explanation = predictor.explain(image, caption, concepts=top[:EXPLAINED_CONCEPTS])
        except MMClassifierError as err:
            failures += 1
            print(f"{photo}: skipped: {err}", file=sys.stderr)
            continue
        shown = ", ".join(f"{c} {prediction.probabilities[c]:.2f}" for c in prediction.predicted) or "(none)"
        print(f"{photo if photo is not None else '(caption only)'}: {shown}")
        records.append({"image": photo, "caption": caption, **asdict(prediction)})
        if args.plot_dir is not None and image is not None:
            from .plots import plot_prediction

            _save_figure(plot_prediction(image, prediction, caption, thresholds=_cutoffs(predictor, args.threshold)),
                         args.plot_dir / f"{Path(photo).stem}.png")
        if explanation is not None:
            from .plots import plot_explanation

            _save_figure(plot_explanation(image, explanation, thresholds=_cutoffs(predictor, args.threshold)),
                         args.explain / f"{Path(photo).stem}.png")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    if failures and not records:
        return 1
    return 0


def _cutoffs(predictor: Predictor, threshold: float | None) -> dict[str, float] | None:
    cutoffs = predictor._thresholds(threshold)
    return None if cutoffs is None else dict(zip(predictor.concepts, cutoffs, strict=True))


def _save_figure(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
