"""What both prediction backends share, without torch: the :class:`Prediction` result, finding a model folder, and
:class:`BasePredictor`'s ``predict`` (batches, thresholds, ``top_k``) over a backend's probabilities."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MMClassifierError

SINGLE_LABEL = "single_label_classification"


@dataclass
class Prediction:
    """One input's result: every concept's probability, and the concepts predicted, most probable first: those at or
    above their thresholds (multi-label), or the most probable class (single-label)."""

    probabilities: dict[str, float]
    predicted: list[str]


def resolve_model_dir(model: str | os.PathLike, patterns: Sequence[str] = ("*.json", "*.safetensors")) -> Path:
    """A local model folder, or a hub id downloaded to the local cache (only the files ``patterns`` match); clear
    errors for both."""
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
        # Data files only: the folder's code files are for other programs, never run here.
        return Path(huggingface_hub.snapshot_download(str(model), allow_patterns=list(patterns)))
    except Exception as err:
        raise MMClassifierError(
            f"No local folder {model} and it could not be downloaded from the hub ({type(err).__name__}: {err}). "
            "Offline, pass a local model folder."
        ) from err


class SavedConfig:
    """A model folder's ``config.json`` read as plain JSON (no transformers), with the few properties of
    :class:`~mm_classifier.MultiModalConfig` that serving reads: a fallback for the ONNX backend."""

    # What a folder written before these fields existed meant (its config.json lacks them).
    problem_type = "multi_label_classification"
    text_encoder_type = "lstm"
    text_model_name = text_model_config = None
    text_trainable_layers = 0

    def __init__(self, values: dict, name_or_path: str = ""):
        self.__dict__.update(values)
        self.name_or_path = name_or_path

    @classmethod
    def from_folder(cls, folder: Path) -> SavedConfig:
        try:
            return cls(json.loads((folder / "config.json").read_text()), str(folder))
        except (OSError, ValueError) as err:
            raise MMClassifierError(f"Cannot read {folder / 'config.json'}: {err}") from None

    def __getattr__(self, name):  # a field an older folder does not have
        raise AttributeError(f"{name!r} is not in this model's config.json")

    @property
    def concepts(self) -> list[str]:
        return [self.id2label[str(i)] for i in range(len(self.id2label))]

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def single_label(self) -> bool:
        return self.problem_type == SINGLE_LABEL

    @property
    def uses_image(self) -> bool:
        return self.modality in ("image", "fusion")

    @property
    def uses_text(self) -> bool:
        return self.modality in ("text", "fusion")


class BasePredictor:
    """``predict`` for a backend that gives each input's probabilities (:meth:`probability_rows`)."""

    config: object  # the model's configuration: MultiModalConfig, or SavedConfig
    explains = False  # whether explain() works: it needs gradients (the PyTorch backend)

    @property
    def concepts(self) -> list[str]:
        return self.config.concepts

    def probability_rows(self, images=None, captions=None) -> np.ndarray:
        """(B, num_concepts) calibrated probabilities of one batch; the backend's part."""
        raise NotImplementedError

    def explain(self, photo=None, caption: str | None = None, concepts=None, max_heatmap_side=None):
        raise MMClassifierError("Explanations need gradients, which only the PyTorch backend has: load the model "
                                "with backend='pytorch' (the app and CLI: --backend pytorch).")

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
        concepts = self.concepts  # read once: a transformers config's attributes are slow to read
        cutoffs = self._thresholds(thresholds)
        cutoffs = None if cutoffs is None else dict(zip(concepts, cutoffs, strict=True))
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise MMClassifierError(f"top_k must be a positive number of classes, not {top_k!r}.")
        count = len(images if images is not None else captions or [])
        results: list[Prediction] = []
        for start in range(0, count, batch_size):
            end = start + batch_size
            rows = self.probability_rows(
                images[start:end] if images is not None else None,
                captions[start:end] if captions is not None else None,
            )
            for row in np.asarray(rows, dtype=np.float64).tolist():
                probabilities = dict(zip(concepts, row, strict=True))
                ranked = sorted(concepts, key=probabilities.get, reverse=True)  # ties keep the concepts' order
                if cutoffs is None:  # single-label: the most probable class(es)
                    predicted = ranked[: top_k or 1]
                else:
                    predicted = [c for c in ranked if probabilities[c] >= cutoffs[c]][:top_k]
                results.append(Prediction(probabilities, predicted))
        return results

    def _inputs_read(self, images, captions):
        """The inputs this model reads (a photo-only model ignores captions, and the reverse); an error if none."""
        config = self.config
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
        return images, captions

    def _thresholds(self, thresholds) -> list[float] | None:
        """The cut-offs a prediction uses (None for a single-label model, which takes its most probable class)."""
        if self.config.single_label:
            if thresholds is not None:
                raise MMClassifierError("This single-label model predicts its most probable class: thresholds do not "
                                        "apply to it (top_k asks for more classes).")
            return None
        if thresholds is None:
            return list(self.config.thresholds)
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
