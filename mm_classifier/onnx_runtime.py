"""The ONNX backend: :class:`OnnxPredictor` predicts with the graphs ``python -m mm_classifier.export`` wrote, on
onnxruntime, reading photos with PIL and numpy and captions with ``tokenizers``: no torch, transformers or timm."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import MMClassifierError
from .images import normalized_pixels
from .prediction import BasePredictor, SavedConfig, resolve_model_dir
from .tokens import batch_encoder, check_captions, encode_captions

ONNX_FOLDER = "onnx"
MANIFEST = "export.json"
GRAPHS = {"image": "image_encoder.onnx", "text": "text_encoder.onnx", "classifier": "classifier.onnx"}


def load_sessions(folder: Path, threads: int | None = None) -> dict:
    """The folder's graphs as onnxruntime sessions, by part (``image``, ``text``, ``classifier``).

    Args:
        threads: threads each graph may use (onnxruntime's ``intra_op_num_threads``); default: onnxruntime's
            (one per core). A server that answers requests side by side gives each one thread.
    """
    import onnxruntime

    manifest_path = folder / ONNX_FOLDER / MANIFEST
    if not manifest_path.is_file():
        raise MMClassifierError(
            f"{folder} has no ONNX graphs ({ONNX_FOLDER}/{MANIFEST}). Export them first: "
            f"python -m mm_classifier.export {folder}"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        return {part: onnxruntime.InferenceSession(str(folder / ONNX_FOLDER / name), options,
                                                   providers=["CPUExecutionProvider"])
                for part, name in manifest["graphs"].items()}
    except Exception as err:  # onnxruntime's own errors (a truncated or missing graph) subclass Exception alone
        raise MMClassifierError(f"Cannot load the ONNX graphs in {folder / ONNX_FOLDER}: {err}") from err


class OnnxPredictor(BasePredictor):
    """A model's ONNX graphs, ready to predict: the same ``predict`` and :class:`Prediction` results as the PyTorch
    :class:`~mm_classifier.Predictor`, the same thresholds and calibration (in the classifier graph).

    >>> predictor = OnnxPredictor.from_pretrained("outputs/fusion")  # after python -m mm_classifier.export
    >>> predictor.predict("dog.jpg", "a dog in the snow")[0].predicted
    """

    def __init__(self, config: SavedConfig, sessions: dict, image_size: int, image_mean, image_std,
                 tokenizer=None, pad_token: str | None = None, max_length: int = 32):
        self.config = config
        self.sessions = sessions
        # The classifier graph's embedding inputs and their widths (batch is its one dynamic axis).
        self.classifier_inputs = {node.name: node.shape[1] for node in sessions["classifier"].get_inputs()}
        self.image_size = int(image_size)
        self.image_mean, self.image_std = image_mean, image_std
        self.encoder = None
        if tokenizer is not None:
            self.encoder = batch_encoder(tokenizer, max_length, tokenizer.token_to_id(pad_token), pad_token)

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, threads: int | None = None) -> OnnxPredictor:
        """Load a folder that holds ``onnx/`` (``python -m mm_classifier.export``), or a hub id of one."""
        folder = resolve_model_dir(model, patterns=("*.json", f"{ONNX_FOLDER}/*"))
        config = SavedConfig.from_folder(folder)
        sessions = load_sessions(folder, threads)
        try:
            processor = json.loads((folder / "processor_config.json").read_text())
            image = processor.get("image_processor", processor)
        except (OSError, ValueError) as err:
            raise MMClassifierError(f"Cannot read {folder / 'processor_config.json'}: {err}") from None
        tokenizer, pad_token = _tokenizer(folder) if config.uses_text else (None, None)
        return cls(config, sessions, image["image_size"], image["image_mean"], image["image_std"], tokenizer,
                   pad_token, processor["max_length"])

    def pixel_values(self, images) -> np.ndarray:
        """Photos -> (B, 3, S, S) float32, normalised, as :class:`~mm_classifier.MultiModalImageProcessor` does."""
        return normalized_pixels(images, self.image_size, self.image_mean, self.image_std)

    def predict_logits(self, images=None, captions=None) -> np.ndarray:
        """(B, num_concepts) uncalibrated logits of one batch."""
        return self._run(images, captions)[0]

    def probability_rows(self, images=None, captions=None) -> np.ndarray:
        return self._run(images, captions)[1]

    def _run(self, images, captions) -> list[np.ndarray]:
        images, captions = self._inputs_read(images, captions)
        embeds = {}
        if images is not None:
            embeds["image_embeds"] = self.sessions["image"].run(None, {"pixel_values": self.pixel_values(images)})[0]
        if captions is not None:
            ids, mask = encode_captions(self.encoder, check_captions(captions))
            embeds["text_embeds"] = self.sessions["text"].run(None, {"input_ids": ids, "attention_mask": mask})[0]
        if images is not None and captions is not None and len(embeds["image_embeds"]) != len(embeds["text_embeds"]):
            raise MMClassifierError(f"Got {len(embeds['image_embeds'])} images but {len(embeds['text_embeds'])} "
                                    "captions; give one caption per image.")
        batch = len(next(iter(embeds.values())))
        feeds = {}
        for name, width in self.classifier_inputs.items():
            # A fusion model reads a missing photo or caption as a zero embedding, as the PyTorch model does.
            feeds[name] = embeds.get(name, np.zeros((batch, width), dtype=np.float32))
        return self.sessions["classifier"].run(["logits", "probabilities"], feeds)


def _tokenizer(folder: Path):
    """The folder's caption tokenizer (``tokenizer.json``) and its padding token (``tokenizer_config.json``)."""
    from tokenizers import Tokenizer

    try:
        settings = json.loads((folder / "tokenizer_config.json").read_text())
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as err:  # tokenizers raises a bare Exception on a bad file; json a ValueError
        raise MMClassifierError(f"Cannot read the caption tokenizer in {folder}: {err}") from None
    pad_token = settings.get("pad_token")
    if isinstance(pad_token, dict):  # an AddedToken written out
        pad_token = pad_token.get("content")
    if pad_token is None or tokenizer.token_to_id(pad_token) is None:
        raise MMClassifierError(f"The tokenizer in {folder} has no padding token.")
    if settings.get("padding_side", "right") != "right" or settings.get("truncation_side", "right") != "right":
        raise MMClassifierError(f"The tokenizer in {folder} pads or truncates on the left, which the ONNX runtime "
                                "does not do: use the PyTorch backend.")
    return tokenizer, pad_token
