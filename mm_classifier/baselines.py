"""The plain baselines every report puts beside the models: a TF-IDF logistic regression on the texts, a logistic
regression on the photos' pooled backbone features, and their late fusion (the mean of the two probabilities).

scikit-learn only: fitted on the training pairs, scored on any others; no model, no data loading.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

__all__ = ["INVERSE_REGULARISATION", "PhotoBaseline", "TextBaseline", "late_fusion"]

# scikit-learn's C for both regressions: the value the data READMEs' baselines used (a little weaker
# regularisation than the default 1.0 suits the TF-IDF features of a few thousand texts).
INVERSE_REGULARISATION = 4.0


def _regression() -> LogisticRegression:
    return LogisticRegression(C=INVERSE_REGULARISATION, max_iter=1000)


class _Linear:
    """One logistic regression per concept (multi-label) or one multinomial one (single-label), on given features."""

    def __init__(self, single_label: bool):
        self.single_label = single_label
        self.models: list = []

    def _fit(self, features, targets: np.ndarray, sample_weight=None) -> None:
        """targets: (N, C) 0/1 (single-label: one-hot), or for multi-label the share of a row's pairs that are
        positive: a row with share s counts as a positive of weight s and a negative of weight 1 - s (the same log
        loss as fitting the pairs one by one)."""
        targets = np.asarray(targets, dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if self.single_label:
                classes = targets.argmax(axis=1)
                self.num_classes = targets.shape[1]
                self.models = [_regression().fit(features, classes)]
                return
            self.models = []
            for column in targets.T:
                mean = float(column.mean())
                if mean in (0.0, 1.0):  # one outcome only: the regression has nothing to learn
                    self.models.append(mean)
                    continue
                if np.isin(column, (0.0, 1.0)).all():
                    self.models.append(_regression().fit(features, column.astype(int)))
                    continue
                stacked = _stack(features, features)
                labels = np.r_[np.ones(len(column), int), np.zeros(len(column), int)]
                self.models.append(_regression().fit(stacked, labels, sample_weight=np.r_[column, 1 - column]))

    def _predict(self, features) -> np.ndarray:
        """(N, C) probabilities."""
        if self.single_label:
            model = self.models[0]
            probabilities = np.zeros((features.shape[0], self.num_classes))
            probabilities[:, model.classes_] = model.predict_proba(features)
            return probabilities
        return np.stack([
            np.full(features.shape[0], model) if isinstance(model, float) else model.predict_proba(features)[:, 1]
            for model in self.models
        ], axis=1)


def _stack(a, b):
    import scipy.sparse

    return scipy.sparse.vstack([a, b]).tocsr() if scipy.sparse.issparse(a) else np.vstack([a, b])


class TextBaseline(_Linear):
    """TF-IDF of words and word bigrams (sublinear term frequencies, terms in two texts or more), then logistic
    regression: the strong, plain text classifier a user would try first."""

    def fit(self, texts: Sequence[str], targets: np.ndarray) -> TextBaseline:
        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        try:
            features = self.vectorizer.fit_transform(texts)
        except ValueError:  # no term in two texts (a handful of short texts): every term counts
            self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")
            features = self.vectorizer.fit_transform([t or " " for t in texts])
        self._fit(features, targets)
        return self

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """(N, C) probabilities of ``texts``."""
        return self._predict(self.vectorizer.transform(texts))


class PhotoBaseline(_Linear):
    """Standardised photo features (a backbone's pooled output), then logistic regression: a linear probe."""

    def fit(self, features: np.ndarray, targets: np.ndarray) -> PhotoBaseline:
        """features: (P, F) one row per photo; targets: (P, C), for mined labels the share of the photo's pairs
        that have each concept."""
        self.scaler = StandardScaler().fit(features)
        self._fit(self.scaler.transform(features), targets)
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(P, C) probabilities of photos' features."""
        return self._predict(self.scaler.transform(features))


def late_fusion(*probabilities: np.ndarray) -> np.ndarray:
    """The mean of several models' (N, C) probabilities."""
    return np.mean(probabilities, axis=0)
