"""A ready Hugging Face Space: ``python -m mm_classifier.space MODEL_DIR --output DIR``.

The folder holds the app (``app.py``, ``app_assets/``), this package's code, the model as an ONNX model folder in
``outputs/fusion`` (the app's default model), example photos, a ``requirements.txt`` without torch (the app serves
the ONNX backend where torch is not installed) and the Space card. Upload it with
``hf upload USER/SPACE DIR . --repo-type space``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import MMClassifierError

REPOSITORY = Path(__file__).resolve().parents[1]  # app.py and app_assets/ sit beside the package in a clone
APP_FILES = ("app.py", "app_assets")
# What the Space installs: the ONNX runtime and the page, at the versions installed here (the tested ones).
RUNTIME_REQUIREMENTS = ("gradio", "onnxruntime", "tokenizers", "pillow", "numpy")
MODEL_FOLDER = Path("outputs") / "fusion"
EXAMPLES_FOLDER = "examples"


def requirements() -> str:
    """The Space's requirements.txt: the runtime's packages pinned to the versions installed here."""
    lines = ["# The ONNX runtime and the page: no torch, transformers or timm (mm_classifier.space wrote this)."]
    for name in RUNTIME_REQUIREMENTS:
        try:
            lines.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            raise MMClassifierError(f"{name} is not installed here; install requirements.txt first.") from None
    return "\n".join(lines) + "\n"


def space_card(config, dataset: str | None) -> str:
    """README.md with the Space's front matter (Gradio, its version, app.py) and what the demo shows."""
    trained = f"trained on `{dataset}`" if dataset else "of unrecorded training data"
    kind = "which class a photo and its caption belong to" if config.single_label else (
        "which concepts are in a photo and its caption")
    return f"""---
title: mm_classifier
emoji: 🐕
colorFrom: indigo
colorTo: green
sdk: gradio
sdk_version: {version("gradio")}
app_file: app.py
pinned: false
short_description: Which concepts are in a photo and its caption
---

# mm_classifier demo

Upload a photo, optionally type a caption, and see {kind}: every concept's probability, or predict a batch of
photos with a captions CSV. The served model ({config.modality}, {trained}) runs on ONNX Runtime, without torch;
its card is `outputs/fusion/README.md`. Explanations (heat maps) need the PyTorch backend, which this Space does
not install.

Built with `python -m mm_classifier.space` from the mm_classifier repository (docs/app.md).
"""


def build_space(model_dir: str | Path, output: str | Path, examples: str | Path | None = None,
                quantize: str | None = None) -> Path:
    """Write the Space folder and return it.

    Args:
        examples: a folder of example photos (and an optional captions.csv); default: for a model of the built-in
            sample, a few scenes of its test split; none for any other.
        quantize: ``"int8"`` for smaller graphs (see docs/app.md for what it costs).

    Raises:
        MMClassifierError: no model, no app files (run from a clone of the repository), or an existing non-empty
            output folder.
    """
    from .export import export
    from .onnx_runtime import OnnxPredictor
    from .serving import describe_model, folder_examples, sample_examples

    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise MMClassifierError(f"{output} exists and is not an empty folder: give a new folder.")
    missing = [name for name in APP_FILES if not (REPOSITORY / name).exists()]
    if missing:
        raise MMClassifierError(f"{', '.join(missing)} not found beside the package in {REPOSITORY}: build the "
                                "Space from a clone of the mm_classifier repository.")
    model = export(model_dir, output / MODEL_FOLDER, quantize)
    for name in APP_FILES:
        source = REPOSITORY / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, output / name)
    shutil.copytree(Path(__file__).resolve().parent, output / "mm_classifier",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (output / "requirements.txt").write_text(requirements())
    predictor = OnnxPredictor.from_pretrained(model)
    info = describe_model(predictor)
    (output / "README.md").write_text(space_card(predictor.config, info.dataset))
    if examples is not None:
        chosen = folder_examples(examples)
    else:
        chosen = sample_examples() if info.synthetic else []
    _copy_examples(chosen, output / EXAMPLES_FOLDER)
    return output


def _copy_examples(examples: list[list], folder: Path) -> None:
    """The example photos and a captions.csv naming their captions, for app.py's examples folder."""
    import csv

    if not examples:
        return
    folder.mkdir(parents=True)
    with open(folder / "captions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "caption"])
        for photo, caption in examples:
            shutil.copy2(photo, folder / Path(photo).name)
            writer.writerow([Path(photo).name, caption or ""])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mm_classifier.space", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a model folder written by train.py")
    parser.add_argument("--output", type=Path, required=True, help="the Space folder to write (new or empty)")
    parser.add_argument("--examples", type=Path, default=None,
                        help="example photos (and an optional captions.csv: file_name,caption); default: the "
                             "built-in sample's scenes for a model trained on them, none for any other")
    parser.add_argument("--quantize", choices=("int8",), default=None, help="dynamic int8 quantization")
    args = parser.parse_args(argv)
    try:
        folder = build_space(args.model, args.output, args.examples, args.quantize)
    except MMClassifierError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Wrote the Space to {folder}. Try it: cd {folder} && pip install -r requirements.txt && python app.py")
    print(f"Publish it: hf upload USER/SPACE_NAME {folder} . --repo-type space")
    return 0


if __name__ == "__main__":
    sys.exit(main())
