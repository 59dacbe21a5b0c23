import numpy as np
import pytest

from mm_classifier.baselines import PhotoBaseline, TextBaseline, late_fusion

TEXTS = ["a dog on the grass", "a dog in the snow", "a cat on the grass", "a cat in the snow"] * 10
# Multi-label: dog, snow; the words name them.
TARGETS = np.array([[1, 0], [1, 1], [0, 0], [0, 1]] * 10)


def test_text_baseline_learns_the_words_that_name_each_concept():
    probabilities = TextBaseline(single_label=False).fit(TEXTS, TARGETS).predict(["a dog in the snow", "a cat"])
    assert probabilities.shape == (2, 2)
    assert probabilities[0, 0] > 0.8 and probabilities[0, 1] > 0.8 and probabilities[1, 0] < 0.2


def test_single_label_baselines_give_a_distribution_over_every_class():
    classes = np.eye(3, dtype=int)[[0, 1, 0, 1] * 10]  # the third class never occurs in training
    text = TextBaseline(single_label=True).fit(TEXTS, classes).predict(TEXTS[:4])
    assert text.shape == (4, 3) and np.allclose(text.sum(1), 1) and (text[:, 2] == 0).all()
    assert list(text.argmax(1)) == [0, 1, 0, 1]
    features = np.random.default_rng(0).normal(size=(40, 5)) + classes[:, :1] * 3
    photo = PhotoBaseline(single_label=True).fit(features, classes).predict(features)
    assert (photo.argmax(1) == classes.argmax(1)).mean() > 0.9


def test_photo_baseline_fits_the_share_of_pairs_with_a_concept_and_a_constant_concept():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(200, 4))
    share = 1 / (1 + np.exp(-3 * features[:, 0]))  # mined labels: the share of a photo's pairs with the concept
    targets = np.stack([np.round(share * 5) / 5, np.zeros(200)], axis=1)
    probabilities = PhotoBaseline(single_label=False).fit(features, targets).predict(features)
    assert np.corrcoef(probabilities[:, 0], share)[0, 1] > 0.95
    assert (probabilities[:, 1] == 0).all()  # never positive in training: probability 0, no regression fitted
    assert late_fusion(np.zeros((2, 2)), np.ones((2, 2))) == pytest.approx(np.full((2, 2), 0.5))
