"""ONNX export: ``python -m mm_classifier.export MODEL_DIR [--output DIR] [--quantize int8]``.

A model becomes up to three graphs in its folder's ``onnx/``, one per part (:data:`GRAPHS`): the image encoder
(``pixel_values`` -> ``image_embeds``), the caption encoder (``input_ids``, ``attention_mask`` -> ``text_embeds``)
and the classifier (the embeddings -> ``logits`` and calibrated ``probabilities``). A model may get a photo, a
caption or both: the runtime runs only the encoders of what it was given and hands the classifier zeros for the
missing embedding, as the PyTorch model does. One graph per part rather than one per case keeps each weight once
and never runs an encoder on a dummy input. The batch size (and a caption's length) are dynamic; the photo's size
is the model's. :mod:`mm_classifier.onnx_runtime` reads the graphs without torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import MMClassifierError
from .onnx_runtime import GRAPHS, MANIFEST, ONNX_FOLDER
from .predict import Predictor

OPSET = 17  # onnxruntime 1.16 and later run it; LSTM, LayerNorm and every op our encoders use exist in it
QUANTIZATIONS = ("int8",)
# What --quantize int8 quantizes: the matrix products (linear layers, attention, the LSTM) and embedding tables.
# Convolutions stay fp32: dynamically quantized, MobileNetV2's cost 0.040 micro-F1 on Flickr8k and ran 6x slower
# (onnxruntime's ConvInteger; docs/performance.md).
INT8_OPERATORS = ["MatMul", "Attention", "LSTM", "Gather"]
# Files an ONNX model folder leaves out when it is written apart (--output): the runtime reads none of them.
PYTORCH_ONLY = ("model.safetensors", "*.py")


class _ImagePart(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.encode_image(pixel_values)  # (B, image_embed_dim)


class _TextPart(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.encode_text(input_ids, attention_mask)  # (B, text_output_dim)


class _ClassifierPart(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.inputs = [name for name, used in (("image_embeds", model.config.uses_image),
                                               ("text_embeds", model.config.uses_text)) if used]

    def forward(self, *embeds):
        given = dict(zip(self.inputs, embeds, strict=True))
        logits = self.model.classify(given.get("image_embeds"), given.get("text_embeds"))  # (B, C)
        return logits, self.model.probabilities(logits)


def export(model_dir: str | Path, output: str | Path | None = None, quantize: str | None = None) -> Path:
    """Write the ONNX graphs of the model in ``model_dir`` and return the folder that holds them (and its files).

    Args:
        output: a new model folder for the ONNX model (its config, processor files, card and ``onnx/``, without
            the PyTorch weights and code); default: the graphs go into ``model_dir/onnx/``.
        quantize: ``"int8"``: dynamic int8 quantization of the graphs' weights (onnxruntime's ``quantize_dynamic``).

    Raises:
        MMClassifierError: no model there, an unknown quantization, or a model ONNX cannot express.
    """
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise MMClassifierError(f"Unknown quantization {quantize!r}: choose {', '.join(QUANTIZATIONS)}.")
    predictor = Predictor.from_pretrained(model_dir, device="cpu")
    folder = Path(model_dir) if output is None else _copy_model_files(Path(model_dir), Path(output))
    target = folder / ONNX_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    parts = _parts(predictor)
    for name, (module, example, inputs, outputs) in parts.items():
        axes = {key: {0: "batch", **({1: "tokens"} if key in ("input_ids", "attention_mask") else {})}
                for key in inputs}
        axes.update({key: {0: "batch"} for key in outputs})
        with warnings.catch_warnings():  # the tracer's notes on Python values it keeps constant (the photo's size)
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(module.eval(), example, target / GRAPHS[name], input_names=inputs,
                                  output_names=outputs, dynamic_axes=axes, opset_version=OPSET, dynamo=False)
            except torch.onnx.errors.OnnxExporterError as err:
                raise MMClassifierError(
                    f"The {name} part of this model cannot be written as ONNX (opset {OPSET}): {err}. (A ViT used "
                    "below its own image size, for one, resamples its position embeddings with an operator ONNX "
                    "lacks.) Serve this model with the PyTorch backend."
                ) from None
    if quantize == "int8":
        _quantize(target, parts)
    manifest = {"opset": OPSET, "quantization": quantize, "graphs": {name: GRAPHS[name] for name in parts},
                "inputs": {name: part[2] for name, part in parts.items()},
                "outputs": {name: part[3] for name, part in parts.items()}}
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def _parts(predictor: Predictor) -> dict[str, tuple[nn.Module, tuple, list[str], list[str]]]:
    """Each graph's module, example inputs (a batch of two), input names and output names."""
    model, config = predictor.model, predictor.model.config
    parts = {}
    if config.uses_image:
        pixels = torch.zeros(2, 3, config.image_size, config.image_size)
        parts["image"] = (_ImagePart(model), (pixels,), ["pixel_values"], ["image_embeds"])
    if config.uses_text:
        tokens = predictor.processor(text=["a caption of some words", "another"])
        parts["text"] = (_TextPart(model), (tokens["input_ids"], tokens["attention_mask"]),
                         ["input_ids", "attention_mask"], ["text_embeds"])
    classifier = _ClassifierPart(model)
    embeds = tuple(torch.zeros(2, config.image_embed_dim if name == "image_embeds" else config.text_output_dim)
                   for name in classifier.inputs)
    parts["classifier"] = (classifier, embeds, classifier.inputs, ["logits", "probabilities"])
    return parts


def _quantize(target: Path, parts) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # onnxruntime's quantizer warns on its root logger for every tensor it skips
    try:
        for name in parts:
            path = target / GRAPHS[name]
            quantized = path.with_suffix(".int8.onnx")
            quantize_dynamic(path, quantized, weight_type=QuantType.QInt8, op_types_to_quantize=INT8_OPERATORS)
            quantized.replace(path)
    finally:
        logging.disable(logging.NOTSET)


def _copy_model_files(source: Path, output: Path) -> Path:
    if output.resolve() == source.resolve():
        raise MMClassifierError("--output is the model folder itself: leave it out to write the graphs into it.")
    output.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and not any(path.match(pattern) for pattern in PYTORCH_ONLY):
            shutil.copy2(path, output / path.name)
    return output


def largest_difference(predictor: Predictor, onnx_folder: str | Path, photos: Sequence | None = None,
                       captions: Sequence[str] | None = None) -> float:
    """The largest difference between the PyTorch model's probabilities and the ONNX graphs' (photo only, caption
    only and both, of the model's inputs), on the given photos and captions, or on a few made-up ones."""
    from .onnx_runtime import OnnxPredictor

    config = predictor.model.config
    if photos is None:
        generator = np.random.default_rng(0)
        photos = [generator.integers(0, 256, (48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(3)]
    if captions is None:
        captions = ["a dog runs on the grass", "", "two children play in the sand by the water"][: len(photos)]
    runtime = OnnxPredictor.from_pretrained(onnx_folder)
    cases = [(photos, None), (None, captions), (photos, captions)]
    differences = []
    for images, texts in cases:
        if (images is not None and not config.uses_image) or (texts is not None and not config.uses_text):
            continue
        expected = predictor.probability_rows(images, texts)
        differences.append(float(np.abs(runtime.probability_rows(images, texts) - expected).max()))
    return max(differences)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mm_classifier.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a model folder written by train.py")
    parser.add_argument("--output", type=Path, default=None,
                        help="write an ONNX model folder here (config, processor files, card and onnx/, without the "
                             "PyTorch weights); default: MODEL/onnx")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default=None,
                        help="dynamic int8 quantization of the weights (smaller; see docs/app.md for its cost)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        folder = export(args.model, args.output, args.quantize)
        predictor = Predictor.from_pretrained(args.model, device="cpu")
        difference = largest_difference(predictor, folder)
    except MMClassifierError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Wrote {folder / ONNX_FOLDER} (opset {OPSET}{', int8' if args.quantize else ''}); its probabilities differ "
          f"from PyTorch's by at most {difference:.1e} on a few test inputs.")
    print(f"Serve it without torch: python app.py --model {folder} --backend onnx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
