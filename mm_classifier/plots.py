"""Figures: a photo with its predictions, ROC and PR curves, reliability diagrams, confusion matrices, a grid of
examples (matplotlib, no display)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # never needs a display: servers, CI, headless laptops
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CORRECT, WRONG, MISSED = "#1a7f37", "#cf222e", "#9a6700"


FOUND, NOT_FOUND, THRESHOLD = CORRECT, "#8c959f", "#24292f"
# Explanations: one colour per input the model read (the app's HTML bars use the same three).
BOTH, PHOTO_ONLY, CAPTION_ONLY = "#0969da", "#bc4c00", "#1b7c83"


def plot_prediction(image, prediction, caption: str | None = None, top_k: int = 10,
                    thresholds: dict[str, float] | None = None):
    """The photo titled with its predicted concepts, beside a bar chart of the top-k probabilities.

    Args:
        thresholds: concept -> threshold of a multi-label model, marked on the bars; None for a single-label
            model (``Predictor._thresholds`` gives it none), whose predicted class is marked as the chosen one.
    """
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8), gridspec_kw={"width_ratios": [1, 1.2]})
    left.imshow(np.asarray(image))
    left.axis("off")
    title = ", ".join(prediction.predicted) or "no concept above its threshold"
    left.set_title(_wrap(title, 40), fontsize=13)
    if caption:
        left.text(0.5, -0.04, _wrap(f"“{caption}”", 60), transform=left.transAxes, ha="center", va="top",
                  fontsize=11)
    ranked = sorted(prediction.probabilities.items(), key=lambda item: -item[1])[:top_k][::-1]
    names, values = zip(*ranked, strict=True) if ranked else ((), ())
    colours = [FOUND if n in prediction.predicted else NOT_FOUND for n in names]
    right.barh(names, values, color=colours)
    if thresholds:
        right.scatter([thresholds[n] for n in names], range(len(names)), marker="|", s=300, color=THRESHOLD,
                      zorder=3)
    right.set_xlim(0, 1)
    right.set_xlabel("probability", fontsize=12)
    right.tick_params(labelsize=12)
    right.set_title(f"top {len(names)} {'concepts' if thresholds is not None else 'classes'}", fontsize=13)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if thresholds is None:
        legend = [Patch(color=FOUND, label="chosen (most probable)"), Patch(color=NOT_FOUND, label="other classes")]
    else:
        legend = [Patch(color=FOUND, label="found (at or above its threshold)"), Patch(color=NOT_FOUND, label="below")]
    if thresholds:
        legend.append(Line2D([], [], color=THRESHOLD, marker="|", linestyle="", markersize=14, label="threshold"))
    right.legend(handles=legend, loc="lower right", fontsize=10)
    figure.tight_layout()
    return figure


def heatmap_overlay(image, heatmap, min_side: int | None = None, max_side: int | None = None,
                    strength: float = 0.65):
    """The photo with a heat map laid over it (PIL RGB), for showing where a concept is seen.

    Args:
        image: the photo (PIL image).
        heatmap: (H, W) values in [0, 1] at the photo's resolution; 1 = strongest evidence.
        min_side: enlarge a smaller photo (its pixels as blocks, the heat map smooth) to this longer side.
        max_side: shrink the result so that its longer side is at most this many pixels.
        strength: how much colour covers the photo where the heat map is 1 (0 leaves the photo as it is).
    """
    from PIL import Image

    image = image.convert("RGB")
    heat = Image.fromarray(np.uint8(np.clip(heatmap, 0, 1) * 255), mode="L")
    longest = max(image.size)
    if min_side and longest < min_side:
        scale = -(-min_side // longest)  # a whole number: every photo pixel becomes an equal block
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    elif max_side and longest > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    heat = heat.resize(image.size, Image.Resampling.BILINEAR)
    weight = np.asarray(heat, dtype=np.float32)[..., None] / 255.0  # (H, W, 1)
    colours = plt.get_cmap("jet")(weight[..., 0])[..., :3] * 255.0  # (H, W, 3)
    # Colour in proportion to the evidence: where the model sees nothing the photo shows through unchanged.
    mixed = np.asarray(image, dtype=np.float32) * (1 - strength * weight) + colours * strength * weight
    return Image.fromarray(np.uint8(np.clip(mixed, 0, 255)))


def plot_explanation(image, explanation, thresholds: dict[str, float] | None = None, max_heatmaps: int = 3):
    """One photo's explanation: the photo and its explained concepts' heat maps (top row); each caption word's
    contribution to each concept, and each concept's probability from photo + caption, photo alone and caption
    alone (bottom row).

    Args:
        image: the photo (PIL image).
        explanation: a :class:`mm_classifier.explain.Explanation` of that photo (most probable concept first).
        thresholds: concept -> threshold of a multi-label model, drawn on the bars; None for a single-label model,
            whose predicted class (``explanation.predicted``) is marked as the chosen one.
        max_heatmaps: heat maps shown (the first concepts of the explanation).
    """
    entries = explanation.concepts
    shown = [e for e in entries if e.heatmap is not None][:max_heatmaps]
    columns = 1 + max(len(shown), 1)
    figure = plt.figure(figsize=(4.2 * columns, 9.2))
    grid = figure.add_gridspec(2, 1, height_ratios=[1.05, 1], hspace=0.32)
    top = grid[0].subgridspec(1, columns, wspace=0.05)
    axis = figure.add_subplot(top[0])
    axis.imshow(np.asarray(image))
    axis.set_title(_wrap(", ".join(explanation.predicted) or "no concept above its threshold", 34), fontsize=13)
    axis.axis("off")
    if explanation.caption:
        axis.text(0.5, -0.04, _wrap(f"“{explanation.caption}”", 40), transform=axis.transAxes, ha="center",
                  va="top", fontsize=11)
    for column, entry in enumerate(shown, start=1):
        axis = figure.add_subplot(top[column])
        axis.imshow(np.asarray(heatmap_overlay(image, entry.heatmap)))
        axis.set_title(f"where: {entry.concept} ({entry.probability:.0%})", fontsize=13)
        axis.axis("off")

    bottom = grid[1].subgridspec(1, 2, wspace=0.35, width_ratios=[1.25, 1])
    words_axis, bars_axis = figure.add_subplot(bottom[0]), figure.add_subplot(bottom[1])
    _plot_word_contributions(words_axis, entries, explanation.caption)
    _plot_three_way_bars(bars_axis, entries, thresholds, None if thresholds is not None else explanation.predicted)
    figure.subplots_adjust(left=0.06, right=0.98, top=0.93, bottom=0.16)
    return figure


def _plot_word_contributions(axis, entries, caption: str | None) -> None:
    """A concepts x words grid: how many percentage points each word adds to (red) or takes from (blue) each
    concept's probability."""
    words = entries[0].words if entries else []
    if not words:
        axis.axis("off")
        axis.text(0.5, 0.5, "no caption: nothing to attribute to words", ha="center", va="center", fontsize=12,
                  transform=axis.transAxes)
        return
    values = np.array([[value for _, value in entry.words] for entry in entries]) * 100  # (K, n) in points
    limit = max(float(np.abs(values).max()), 1.0)
    axis.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    axis.set_xticks(range(len(words)), [word for word, _ in words], rotation=45, ha="right", fontsize=12)
    axis.set_yticks(range(len(entries)), [entry.concept for entry in entries], fontsize=12)
    if values.size <= 60:  # numbers stay legible in the cells
        for (row, column), value in np.ndenumerate(values):
            axis.text(column, row, f"{value:+.0f}", ha="center", va="center", fontsize=10,
                      color="white" if abs(value) > 0.6 * limit else "black")
    axis.set_title("caption words: points added (red) or taken (blue)", fontsize=12)


def _plot_three_way_bars(axis, entries, thresholds: dict[str, float] | None, chosen: list[str] | None = None
                         ) -> None:
    """Grouped horizontal bars: each concept's probability from each input the model read; ``thresholds`` ticked
    on them, or the ``chosen`` classes' names marked."""
    series = [("photo + caption", "both", BOTH), ("photo alone", "photo_only", PHOTO_ONLY),
              ("caption alone", "caption_only", CAPTION_ONLY)]
    series = [s for s in series if any(getattr(e, s[1]) is not None for e in entries)]
    height = 0.8 / max(len(series), 1)
    positions = np.arange(len(entries))[::-1]  # most probable on top
    for k, (label, attribute, colour) in enumerate(series):
        values = [getattr(e, attribute) or 0.0 for e in entries]
        axis.barh(positions + (len(series) / 2 - k - 0.5) * height, values, height=height, color=colour,
                  label=label)
    if thresholds:
        axis.scatter([thresholds[e.concept] for e in entries], positions, marker="|", s=400, color=THRESHOLD,
                     zorder=3, label="threshold")
    chosen = set(chosen or ())
    ticks = axis.set_yticks(positions, [f"{e.concept} (chosen)" if e.concept in chosen else e.concept
                                        for e in entries], fontsize=12)
    for tick, entry in zip(ticks, entries, strict=True):
        if entry.concept in chosen:
            tick.label1.set_fontweight("bold")
            tick.label1.set_color(FOUND)
    axis.set_xlim(0, 1)
    axis.set_xlabel("probability", fontsize=12)
    axis.tick_params(axis="x", labelsize=11)
    axis.legend(fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    axis.set_title("which input says so", fontsize=12)


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
    for colour, (name, (x, y, area)) in zip(colours, curves.items(), strict=True):
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


def plot_reliability(curves: dict[str, dict], title: str):
    """Reliability diagram: how often probabilities came true against what they claimed, one line per curve.

    Args:
        curves: name -> ``calibration.calibration_bins`` output (confidence, frequency, count per bin) and ``ece``.
    """
    figure, axis = plt.subplots(figsize=(6, 6))
    axis.plot([0, 1], [0, 1], color="#8c959f", linewidth=0.8, linestyle=":", label="perfectly calibrated")
    for (name, curve), colour in zip(curves.items(), (WRONG, CORRECT), strict=False):
        axis.plot(curve["confidence"], curve["frequency"], marker="o", color=colour,
                  label=f"{name} (ECE {curve['ece']:.3f})")
    axis.set_xlabel("predicted probability (bin mean)")
    axis.set_ylabel("observed frequency")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_title(title)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return figure


def plot_confusion_matrix(matrix, names: list[str]):
    """Rows: true class, columns: predicted class; each cell's count, shaded by its share of the row."""
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.5 * len(names) + 2)
    figure, axis = plt.subplots(figsize=(side, side))
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if len(names) <= 30:
        for (row, column), count in np.ndenumerate(matrix):
            axis.text(column, row, str(count), ha="center", va="center", fontsize=7,
                      color="white" if shares[row, column] > 0.5 else "black")
    axis.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    axis.set_yticks(range(len(names)), names, fontsize=7)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title("Confusion matrix (shade: share of the true class)")
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
    for axis, example in zip(np.atleast_1d(axes).ravel(), examples, strict=False):
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
