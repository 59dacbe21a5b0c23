import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn.metrics import average_precision_score, roc_auc_score

from mm_classifier.calibration import calibration_bins, expected_calibration_error, fit_calibration


def overconfident(rng, rows=4000, concepts=3, temperature=3.0, shift=0.0):
    """Logits three times too large (and ``shift`` too high): the probabilities they claim come true less often."""
    logits = rng.normal(size=(rows, concepts)) * 3
    targets = (rng.random((rows, concepts)) < expit(logits / temperature)).astype(int)
    return logits + shift, targets


@pytest.mark.parametrize("shift", [0.0, 2.0])  # 2.0: the push up that a positive weight gives rare concepts
def test_platt_scaling_undoes_overconfidence_and_a_shift_and_keeps_every_ranking(shift):
    logits, targets = overconfident(np.random.default_rng(0), shift=shift)
    temperatures, biases = fit_calibration(logits, targets)
    assert temperatures == pytest.approx([3.0] * 3, rel=0.15)
    assert biases == pytest.approx([-shift / 3] * 3, abs=0.1)
    before, after = expit(logits), expit(logits / np.array(temperatures) + np.array(biases))
    assert expected_calibration_error(after, targets) < expected_calibration_error(before, targets) / 3
    for c in range(3):  # a monotone map per concept: average precision and ROC-AUC are the same
        assert average_precision_score(targets[:, c], after[:, c]) == pytest.approx(
            average_precision_score(targets[:, c], before[:, c]))
        assert roc_auc_score(targets[:, c], after[:, c]) == pytest.approx(roc_auc_score(targets[:, c], before[:, c]))


def test_a_concept_with_one_outcome_keeps_temperature_one_and_a_perfect_split_stays_finite():
    logits, targets = overconfident(np.random.default_rng(1))
    targets[:, 1] = 0
    temperatures, biases = fit_calibration(logits, targets)
    assert (temperatures[1], biases[1]) == (1.0, 0.0)
    # A split the model separates perfectly: Platt's smoothed targets (51/52 and 1/52) keep the fit finite.
    separable = np.array([[4.0], [-4.0]] * 50)
    temperatures, biases = fit_calibration(separable, (separable > 0).astype(int))
    assert expit(4.0 / temperatures[0] + biases[0]) == pytest.approx(51 / 52, abs=1e-3)


def test_single_label_gets_one_temperature_and_keeps_its_predictions():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3000, 4)) * 4
    classes = np.array([rng.choice(4, p=p) for p in softmax(logits / 2, axis=1)])
    targets = np.eye(4, dtype=int)[classes]
    temperatures, biases = fit_calibration(logits, targets, single_label=True)
    assert biases is None and len(set(temperatures)) == 1 and temperatures[0] == pytest.approx(2.0, rel=0.15)
    before, after = softmax(logits, axis=1), softmax(logits / temperatures[0], axis=1)
    assert (before.argmax(1) == after.argmax(1)).all()
    assert expected_calibration_error(after, targets, True) < expected_calibration_error(before, targets, True)


def test_bins_count_every_probability_and_the_error_of_perfect_calibration_is_small():
    rng = np.random.default_rng(3)
    probabilities = rng.random((20000, 1))
    targets = (rng.random((20000, 1)) < probabilities).astype(int)
    bins = calibration_bins(probabilities, targets)
    assert sum(bins["count"]) == 20000 and len(bins["count"]) == 15
    assert expected_calibration_error(probabilities, targets) < 0.02
    assert expected_calibration_error(np.full((100, 1), 0.9), np.zeros((100, 1))) == pytest.approx(0.9)
