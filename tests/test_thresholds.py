import numpy as np

from mm_classifier.thresholds import SHRINKAGE_STRENGTHS, select_threshold_shrinkage, tune_thresholds


def test_tuned_thresholds_maximise_f1_on_separable_scores():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    p = np.array([[0.40, 0.9], [0.35, 0.2], [0.1, 0.8], [0.2, 0.1]])
    thresholds = tune_thresholds(p, y, shrinkage=0)  # each concept's own threshold
    # Midway between the lowest positive (0.35) and the best negative (0.2), not on either score.
    assert np.isclose(thresholds[0], 0.275)
    assert ((p[:, 0] >= thresholds[0]) == y[:, 0]).all()
    assert tune_thresholds(p, np.zeros_like(y)) == [0.5, 0.5]  # no positive at all: the default stays
    assert tune_thresholds(p, np.zeros_like(y), default=0.3) == [0.3, 0.3]
    no_second = y * [1, 0]  # a concept without positives takes the shared threshold, whatever the strength
    shared = tune_thresholds(p, no_second, shrinkage=float("inf"))[1]
    for strength in (0, 10, float("inf")):
        assert tune_thresholds(p, no_second, shrinkage=strength)[1] == shared


def test_shrinkage_pulls_thresholds_toward_the_shared_one():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [1, 1], [0, 0]])
    p = np.array([[0.9, 0.30], [0.8, 0.1], [0.2, 0.35], [0.3, 0.05], [0.7, 0.4], [0.1, 0.2]])
    own = np.array(tune_thresholds(p, y, shrinkage=0))
    shared = np.array(tune_thresholds(p, y, shrinkage=float("inf")))
    assert shared[0] == shared[1] and own[0] != own[1]
    middle = np.array(tune_thresholds(p, y, shrinkage=3))  # 3 positives each: halfway
    assert np.allclose(middle, (own + shared) / 2)


def noisy_rare_concept():
    """Concept 0's scores are informative and calibrated; concept 1 is rare and its scores are noise."""
    rng = np.random.default_rng(0)
    photos = np.repeat(np.arange(300), 5)
    y = np.stack([rng.random(300) < 0.4, rng.random(300) < 0.05], 1)[photos].astype(int)
    p = np.stack([np.clip(y[:, 0] * 0.5 + rng.random(1500) * 0.5, 0, 1), rng.random(1500) * 0.6], 1)
    return p, y, photos


def test_shrinkage_is_chosen_on_held_out_photos():
    # Concept 1's own threshold fits its noise, so cross-validation prefers thresholds close to the shared one.
    p, y, photos = noisy_rare_concept()
    strength, scores = select_threshold_shrinkage(p, y, groups=photos)
    assert set(scores) == set(SHRINKAGE_STRENGTHS)
    assert strength >= 30 and scores[strength] == max(scores.values())
    assert scores[strength] > scores[0.0]
    # Too few photos for the folds: the shared threshold, without cross-validation.
    assert select_threshold_shrinkage(p[:15], y[:15], groups=photos[:15]) == (float("inf"), {})


def test_tuning_without_a_strength_uses_the_cross_validated_one():
    p, y, photos = noisy_rare_concept()
    strength, _ = select_threshold_shrinkage(p, y, groups=photos)
    assert tune_thresholds(p, y, groups=photos) == tune_thresholds(p, y, shrinkage=strength)
    assert tune_thresholds(p, y, groups=photos) != tune_thresholds(p, y, shrinkage=0)
