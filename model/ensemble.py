"""A blend of fitted models: the mean of their probabilities.

Model selection (``training.train``) tries the blend of its two best families as one more
candidate: two models that err on different payments (a forest and a boosted ensemble) can
rank better together than either alone. It is kept only when it wins, like any family.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone


def fit_weighted(model: Any, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None) -> Any:
    """``model.fit`` with sample weights, for a pipeline too (its last step takes them)."""
    if weight is None:
        return model.fit(X, y)
    key = f"{model.steps[-1][0]}__sample_weight" if hasattr(model, "steps") else "sample_weight"
    return model.fit(X, y, **{key: weight})


class MeanBlend(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """The mean probability of ``members`` (binary classifiers); ``fit`` fits a clone of
    each on the same rows and weights."""

    def __init__(self, members: list[Any]) -> None:
        self.members = members

    def fit(self, X: np.ndarray, y: np.ndarray,
            sample_weight: np.ndarray | None = None) -> MeanBlend:
        self.fitted_ = [fit_weighted(clone(m), X, y, sample_weight) for m in self.members]
        self.classes_ = self.fitted_[0].classes_
        self.n_features_in_ = int(X.shape[1])
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = np.mean([m.predict_proba(X)[:, 1] for m in self.fitted_], axis=0)
        return np.column_stack([1 - p, p])
