"""Probability calibration: temperatures fitted on validation logits, and how far probabilities are from the
frequencies they claim (expected calibration error, the reliability diagram's bins).

Pure numpy and scipy: no model, no data loading. A temperature divides a logit, a monotone map, so it changes no
ranking (average precision and ROC-AUC per concept stay the same) and, for a softmax, no prediction.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_expit, log_softmax

__all__ = ["CALIBRATION_BINS", "calibration_bins", "expected_calibration_error", "fit_temperatures"]

CALIBRATION_BINS = 15  # equal-width probability bins of the calibration error and the reliability diagram
# Temperatures from 0.2 to 20: a validation split that the model separates perfectly would drive the temperature to 0
# (ever sharper probabilities); 0.2 makes a logit five times larger, sharp enough for any split that is not.
LOG_TEMPERATURE_BOUNDS = (float(np.log(0.2)), float(np.log(20.0)))


def _best_temperature(negative_log_likelihood) -> float:
    found = minimize_scalar(lambda log_t: negative_log_likelihood(np.exp(log_t)), bounds=LOG_TEMPERATURE_BOUNDS,
                            method="bounded")
    return float(np.exp(found.x))


def fit_temperatures(logits: np.ndarray, references: np.ndarray, single_label: bool = False) -> list[float]:
    """The temperatures that minimise the validation log loss of ``logits / T``.

    Args:
        logits: (N, C) uncalibrated logits.
        references: (N, C) 0/1 targets (single-label: one-hot).
        single_label: one temperature for the softmax over all classes (so the most probable class never changes),
            repeated for each class; else one per concept for its sigmoid. A concept without positive or without
            negative rows keeps 1.0.

    Returns:
        C temperatures.
    """
    logits, references = np.asarray(logits, dtype=np.float64), np.asarray(references, dtype=np.float64)
    if single_label:
        def nll(t):
            return -float((references * log_softmax(logits / t, axis=1)).sum(axis=1).mean())

        return [_best_temperature(nll)] * logits.shape[1]
    temperatures = []
    for z, y in zip(logits.T, references.T, strict=True):
        if not 0 < y.sum() < len(y):
            temperatures.append(1.0)
            continue

        def nll(t, z=z, y=y):
            return -float((y * log_expit(z / t) + (1 - y) * log_expit(-z / t)).mean())

        temperatures.append(_best_temperature(nll))
    return temperatures


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
