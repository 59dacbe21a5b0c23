"""Per-concept decision thresholds, tuned on validation scores and shrunk toward one shared threshold.

Pure numpy and scikit-learn: no model, no data loading.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import f1_score, precision_recall_curve

__all__ = ["SHRINKAGE_STRENGTHS", "select_threshold_shrinkage", "tune_thresholds"]

# Candidate strengths k for pulling each concept's threshold toward the shared one (see tune_thresholds).
SHRINKAGE_STRENGTHS = (0.0, 10.0, 30.0, 100.0, 300.0, 1000.0, float("inf"))


def _cut_between(scores: np.ndarray, cut: float) -> float:
    """A threshold midway between ``cut`` and the next lower score, so it does not hinge on one example."""
    below = scores[scores < cut]
    return float(np.clip((cut + below.max()) / 2 if len(below) else cut, 0.01, 0.99))


def _best_f1_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, cuts = precision_recall_curve(y, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return _cut_between(scores, cuts[int(np.argmax(f1[:-1]))])


def _own_and_shared(probabilities, references) -> tuple[np.ndarray, float, np.ndarray] | None:
    """Each concept's F1-best threshold, the one micro-F1-best threshold, and each concept's positive count;
    None when no row is positive for any concept."""
    positives = references.sum(axis=0)
    if positives.sum() == 0:
        return None
    shared = _best_f1_threshold(references.ravel(), probabilities.ravel())
    # A concept without positives (or negatives) has no threshold of its own: it takes the shared one.
    own = np.array([
        _best_f1_threshold(references[:, c], probabilities[:, c]) if 0 < positives[c] < len(references) else shared
        for c in range(references.shape[1])
    ])
    return own, shared, positives


def _shrink(own: np.ndarray, shared: float, positives: np.ndarray, strength: float) -> np.ndarray:
    """``(n * own + k * shared) / (n + k)`` per concept; k = inf gives every concept the shared threshold."""
    if np.isinf(strength):
        return np.full(len(own), shared)
    weight = np.divide(positives, positives + strength, out=np.zeros(len(own)), where=positives + strength > 0)
    return weight * own + (1 - weight) * shared


def select_threshold_shrinkage(
    probabilities: np.ndarray, references: np.ndarray, groups: Sequence | np.ndarray | None = None, folds: int = 5,
    strengths: Sequence[float] = SHRINKAGE_STRENGTHS,
) -> tuple[float, dict[float, float]]:
    """The shrinkage strength whose thresholds give the best micro-F1 on held-out folds of these scores.

    Args:
        probabilities: (N, C) scores.
        references: (N, C) 0/1 targets.
        groups: one id per row (the photo of a pair); folds never split a group. Default: every row its own.
        folds: number of folds; with fewer groups than folds, the shared threshold (infinite strength) is used.
        strengths: the candidate strengths ``k`` (see :func:`tune_thresholds`).

    Returns:
        The chosen strength and the cross-validated micro-F1 of each candidate. Ties go to the stronger
        shrinkage, which has fewer free thresholds.
    """
    groups = np.arange(len(references)) if groups is None else np.asarray(groups)
    names = np.unique(groups)
    if len(names) < folds:
        return float("inf"), {}
    fold_of = dict(zip(names.tolist(), np.random.default_rng(0).permutation(len(names)) % folds, strict=True))
    fold = np.array([fold_of[g] for g in groups.tolist()])
    predicted = {float(strength): np.zeros_like(references, dtype=bool) for strength in strengths}
    for k in range(folds):
        held_out = fold == k
        tuned = _own_and_shared(probabilities[~held_out], references[~held_out])
        for strength, rows in predicted.items():
            thresholds = np.full(references.shape[1], 0.5) if tuned is None else _shrink(*tuned, strength)
            rows[held_out] = probabilities[held_out] >= thresholds
    scores = {
        strength: float(f1_score(references, rows, average="micro", zero_division=0))
        for strength, rows in predicted.items()
    }
    best = max(sorted(scores, reverse=True), key=lambda s: scores[s])  # stable: ties keep the stronger one
    return best, scores


def tune_thresholds(
    probabilities: np.ndarray, references: np.ndarray, default: float = 0.5, shrinkage: float | None = None,
    groups: Sequence | np.ndarray | None = None,
) -> list[float]:
    """One decision threshold per concept, tuned on these (validation) scores.

    Each concept's F1-maximising threshold is pulled toward the single threshold that maximises micro-F1 over
    all concepts: ``t_c = (n_c * own_c + k * shared) / (n_c + k)``, with ``n_c`` the concept's positive rows.
    ``k = 0`` keeps each concept's own threshold, ``k = inf`` gives every concept the shared one. Concepts
    with few positives get thresholds that fit noise; shrinking them is what makes the tuned thresholds hold on
    photos the tuning never saw.

    Args:
        probabilities: (N, C) scores.
        references: (N, C) 0/1 targets.
        default: every threshold when no row is positive for any concept.
        shrinkage: ``k``; None chooses it by cross-validation (:func:`select_threshold_shrinkage`).
        groups: passed to that cross-validation (the photo of each pair).

    Returns:
        C thresholds. They sit midway between neighbouring scores, so they do not depend on the exact score of
        one example.
    """
    probabilities, references = np.asarray(probabilities), np.asarray(references)
    if shrinkage is None:
        shrinkage, _ = select_threshold_shrinkage(probabilities, references, groups)
    tuned = _own_and_shared(probabilities, references)
    if tuned is None:
        return [default] * references.shape[1]
    return [float(t) for t in _shrink(*tuned, shrinkage)]
