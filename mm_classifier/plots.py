"""Figures: a photo with its predictions, ROC and PR curves, a grid of examples (matplotlib, no display)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # never needs a display: servers, CI, headless laptops
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CORRECT, WRONG, MISSED = "#1a7f37", "#cf222e", "#9a6700"


def plot_prediction(image, prediction, caption: str | None = None, top_k: int = 10):
    """The photo titled with its predicted concepts, beside a bar chart of the top-k probabilities."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1, 1.2]})
    left.imshow(np.asarray(image))
    left.axis("off")
    title = ", ".join(prediction.predicted) or "no concept above threshold"
    left.set_title(_wrap(title, 40), fontsize=11)
    if caption:
        left.text(0.5, -0.04, _wrap(f"“{caption}”", 60), transform=left.transAxes, ha="center", va="top", fontsize=9)
    ranked = sorted(prediction.probabilities.items(), key=lambda item: -item[1])[:top_k][::-1]
    names, values = zip(*ranked) if ranked else ((), ())
    colours = [CORRECT if n in prediction.predicted else "#8c959f" for n in names]
    right.barh(names, values, color=colours)
    right.set_xlim(0, 1)
    right.set_xlabel("probability")
    right.set_title(f"top {len(names)} concepts")
    figure.tight_layout()
    return figure


def _wrap(text: str, width: int) -> str:
    import textwrap

    text = text if len(text) <= 4 * width else text[: 4 * width - 1] + "…"
    return "\n".join(textwrap.wrap(text, width)) or text


def plot_curves(curves: dict, kind: str, title: str):
    """One curve per concept plus the micro average.

    Args:
        curves: name -> (x, y, area) with x/y the curve points (FPR/TPR for ROC, recall/precision for PR).
        kind: ``"roc"`` or ``"pr"``.
    """
    figure, axis = plt.subplots(figsize=(8, 7))
    colours = plt.cm.tab20(np.linspace(0, 1, max(len(curves), 1)))
    for colour, (name, (x, y, area)) in zip(colours, curves.items()):
        micro = name == "micro average"
        axis.plot(
            x, y, color="black" if micro else colour, linewidth=2.5 if micro else 1.2,
            linestyle="--" if micro else "-", label=f"{name} ({area:.2f})",
        )
    if kind == "roc":
        axis.plot([0, 1], [0, 1], color="#8c959f", linewidth=0.8, linestyle=":")
        axis.set_xlabel("false positive rate")
        axis.set_ylabel("true positive rate")
    else:
        axis.set_xlabel("recall")
        axis.set_ylabel("precision")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_title(title)
    axis.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left", ncol=2)
    figure.tight_layout()
    return figure


def plot_examples(examples: list[dict], columns: int = 4):
    """A grid of photos, each titled with its caption and its true and predicted concepts.

    Each example: ``{"image": PIL, "caption": str, "true": [..], "predicted": [..]}``. Predicted concepts that
    are right are green, wrong ones red; missed true concepts are listed in amber.
    """
    rows = max(1, -(-len(examples) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 5.6 * rows))
    for axis in np.atleast_1d(axes).ravel():
        axis.axis("off")
    for axis, example in zip(np.atleast_1d(axes).ravel(), examples):
        axis.imshow(np.asarray(example["image"]))
        axis.set_title(_wrap(example["caption"], 45), fontsize=8)
        true, predicted = set(example["true"]), example["predicted"]
        lines = [(c, CORRECT if c in true else WRONG) for c in predicted]
        lines += [(f"missed: {c}", MISSED) for c in sorted(true - set(predicted))]
        for i, (text, colour) in enumerate(lines[:8]):
            axis.text(0.0, -0.04 - 0.06 * i, text, color=colour, fontsize=8, transform=axis.transAxes, va="top")
    # Room below each photo for its concept list and above it for its caption (tight_layout ignores both).
    figure.subplots_adjust(left=0.02, right=0.98, top=0.96, bottom=0.08, wspace=0.08, hspace=0.75)
    return figure


def plot_learning_curves(history: list[dict], path) -> None:
    """Training loss and validation micro-F1 / mAP per epoch, saved to ``path``."""
    epochs = [h["epoch"] for h in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    if all("validation_loss" in h for h in history):
        left.plot(epochs, [h["validation_loss"] for h in history], marker="o", label="validation")
    left.set_xlabel("epoch")
    left.set_ylabel("BCE loss")
    left.legend()
    for key in ("validation_micro_f1", "validation_mAP"):
        right.plot(epochs, [h[key] for h in history], marker="o", label=key.replace("validation_", ""))
    right.set_xlabel("epoch")
    right.set_ylim(0, 1)
    right.set_title("validation")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
