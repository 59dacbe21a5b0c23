"""Probability calibration: temperatures (and, multi-label, biases) fitted on validation logits, and how far
probabilities are from the frequencies they claim (expected calibration error, the reliability diagram's bins).

Pure numpy and scipy: no model, no data loading. Each concept's map ``z / T + b`` is monotone, so it changes no
ranking (average precision and ROC-AUC per concept stay the same); a single-label model gets one temperature and no
bias, so its most probable class never changes either.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_expit, log_softmax

__all__ = ["CALIBRATION_BINS", "calibration_bins", "expected_calibration_error", "fit_calibration"]

CALIBRATION_BINS = 15  # equal-width probability bins of the calibration error and the reliability diagram
# Temperatures from 0.2 to 20: a validation split that the model separates perfectly would drive the temperature to 0
# (ever sharper probabilities); 0.2 makes a logit five times larger, sharp enough for any split that is not.
LOG_TEMPERATURE_BOUNDS = (float(np.log(0.2)), float(np.log(20.0)))
BIAS_BOUNDS = (-10.0, 10.0)


def fit_calibration(logits: np.ndarray, references: np.ndarray, single_label: bool = False
                    ) -> tuple[list[float], list[float] | None]:
    """The calibration that minimises the validation log loss.

    Multi-label: Platt scaling per concept, ``sigmoid(z / T + b)``, fitted against Platt's smoothed targets
    (``(n+ + 1) / (n+ + 2)`` for a positive, ``1 / (n- + 2)`` for a negative), so a concept with a handful of
    positives is not pushed to certainty; a concept without positive or without negative rows keeps T = 1, b = 0.
    The bias also undoes the shift that ``pos_weight`` gives a model's logits. Single-label: one temperature for the
    softmax over all classes, no bias, so the most probable class never changes.

    Args:
        logits: (N, C) uncalibrated logits.
        references: (N, C) 0/1 targets (single-label: one-hot).

    Returns:
        C temperatures, and C biases (None for single-label).
    """
    logits, references = np.asarray(logits, dtype=np.float64), np.asarray(references, dtype=np.float64)
    if single_label:
        def nll(log_t):
            return -float((references * log_softmax(logits / np.exp(log_t), axis=1)).sum(axis=1).mean())

        found = minimize_scalar(nll, bounds=LOG_TEMPERATURE_BOUNDS, method="bounded")
        return [float(np.exp(found.x))] * logits.shape[1], None
    temperatures, biases = [], []
    for z, y in zip(logits.T, references.T, strict=True):
        positives = y.sum()
        if not 0 < positives < len(y):
            temperatures.append(1.0)
            biases.append(0.0)
            continue
        target = np.where(y > 0, (positives + 1) / (positives + 2), 1 / (len(y) - positives + 2))

        def nll(params, z=z, target=target):
            scaled = z / np.exp(params[0]) + params[1]
            return -float((target * log_expit(scaled) + (1 - target) * log_expit(-scaled)).mean())

        found = minimize(nll, np.zeros(2), method="L-BFGS-B", bounds=[LOG_TEMPERATURE_BOUNDS, BIAS_BOUNDS])
        temperatures.append(float(np.exp(found.x[0])))
        biases.append(float(found.x[1]))
    return temperatures, biases


def _confidence_and_outcome(probabilities, references, single_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """What each probability claims and whether it came true: single-label, the most probable class's probability
    and whether that class is right; multi-label, every (row, concept) probability and its 0/1 target."""
    probabilities, references = np.asarray(probabilities, dtype=np.float64), np.asarray(references)
    if single_label:
        chosen = probabilities.argmax(axis=1)
        rows = np.arange(len(chosen))
        return probabilities[rows, chosen], references[rows, chosen].astype(np.float64)
    return probabilities.ravel(), references.ravel().astype(np.float64)


def calibration_bins(probabilities, references, single_label: bool = False, bins: int = CALIBRATION_BINS) -> dict:
    """The reliability diagram's bins: for each of ``bins`` equal-width probability bins that holds any
    probability, its mean probability (``confidence``), how often those came true (``frequency``) and ``count``."""
    confidence, outcome = _confidence_and_outcome(probabilities, references, single_label)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    filled = count > 0
    return {
        "confidence": (np.bincount(which, confidence, bins)[filled] / count[filled]).tolist(),
        "frequency": (np.bincount(which, outcome, bins)[filled] / count[filled]).tolist(),
        "count": count[filled].tolist(),
    }


def expected_calibration_error(probabilities, references, single_label: bool = False,
                               bins: int = CALIBRATION_BINS) -> float:
    """The mean gap between a probability and how often it comes true, over equal-width bins weighted by their
    size. Single-label: the most probable class's probability against its accuracy (top-label ECE); multi-label:
    every concept's probability of every row against its target, pooled."""
    binned = calibration_bins(probabilities, references, single_label, bins)
    count = np.asarray(binned["count"], dtype=np.float64)
    gap = np.abs(np.asarray(binned["confidence"]) - np.asarray(binned["frequency"]))
    return float((gap * count).sum() / count.sum()) if count.sum() else 0.0
