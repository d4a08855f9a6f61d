"""The project's own compiled form of a trained tree ensemble, for single-payment scoring.

scikit-learn's ``predict_proba`` spends most of a one-row call in input validation and
thread dispatch. Here every tree of a fitted binary ``HistGradientBoostingClassifier`` is
flattened into shared arrays, and one payment walks every tree down to its leaf in a loop
compiled by numba (``_walk_all``): about 11 us for 300 trees of depth 8 here, where a numpy
formulation (every split at once, then a gather per level) took 88 us, all of it in call
overhead. The same walk yields per-payment feature contributions (Saabas: along each
tree's path, the change in the expected leaf value at each split is credited to the
split's feature), which add up exactly to the raw score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np


@dataclass(frozen=True)
class Explanation:
    proba: float
    raw: float
    bias: float  # the raw score before any split: baseline + each tree's expected value
    contributions: np.ndarray  # per feature, in log-odds; bias + sum == raw


class CompiledForest:
    def __init__(
        self,
        feature: np.ndarray,
        threshold: np.ndarray,
        left: np.ndarray,
        right: np.ndarray,
        missing_right: np.ndarray,
        expected: np.ndarray,
        roots: np.ndarray,
        baseline: float,
        n_features: int,
    ) -> None:
        self.feature = feature
        self.threshold = threshold
        self.left = left  # a leaf's children are itself
        self.right = right
        self.missing_right = missing_right
        self.expected = expected
        self.roots = roots
        self.baseline = baseline
        self.n_features = n_features
        self.bias = baseline + float(expected[roots].sum())
        # Compiled (or loaded from numba's cache) now, at model load, not on a payment's clock.
        self.explain(np.zeros(n_features))

    @classmethod
    def from_sklearn(cls, estimator: Any) -> CompiledForest:
        from sklearn.ensemble import HistGradientBoostingClassifier

        if not isinstance(estimator, HistGradientBoostingClassifier):
            raise TypeError(f"can compile a HistGradientBoostingClassifier, not "
                            f"{type(estimator).__name__}")
        if len(estimator.classes_) != 2:
            raise ValueError("can compile a binary classifier only")
        predictors = [p[0] for p in estimator._predictors]
        if any(p.nodes["is_categorical"].any() for p in predictors):
            raise ValueError("categorical splits are not supported by the compiled form")

        feature, threshold, lefts, rights, missing_right, expected, roots = ([] for _ in range(7))
        offset = 0
        for predictor in predictors:
            nodes = predictor.nodes
            n = len(nodes)
            leaf = nodes["is_leaf"].astype(bool)
            own = np.arange(n) + offset
            left = np.where(leaf, own, nodes["left"].astype(np.int64) + offset)
            right = np.where(leaf, own, nodes["right"].astype(np.int64) + offset)
            feature.append(np.where(leaf, 0, nodes["feature_idx"]))
            # A leaf compares x[0] against +inf: always "left", i.e. itself.
            threshold.append(np.where(leaf, np.inf, nodes["num_threshold"]))
            lefts.append(left)
            rights.append(right)
            missing_right.append(~nodes["missing_go_to_left"].astype(bool) & ~leaf)
            expected.append(_expected_values(nodes))
            roots.append(offset)
            offset += n
        return cls(
            feature=np.concatenate(feature).astype(np.intp),
            threshold=np.concatenate(threshold).astype(float),
            left=np.concatenate(lefts).astype(np.intp),
            right=np.concatenate(rights).astype(np.intp),
            missing_right=np.concatenate(missing_right),
            expected=np.concatenate(expected),
            roots=np.asarray(roots, dtype=np.intp),
            baseline=float(np.ravel(estimator._baseline_prediction)[0]),
            n_features=int(estimator.n_features_in_),
        )

    def raw(self, x: np.ndarray) -> float:
        return self.explain(x).raw

    def predict_proba(self, x: np.ndarray) -> float:
        """P(fraud) for one row ``x`` (shape ``(n_features,)``)."""
        return self.explain(x).proba

    def predict_proba_many(self, X: np.ndarray) -> np.ndarray:
        """P(fraud) for each row of ``X`` (no contributions): the shadow's batches. One
        compiled loop, no thread pool: it shares the machine with the scoring path."""
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got {X.shape}")
        raw = self.baseline + _leaves_many(np.ascontiguousarray(X, dtype=np.float64),
                                           self.roots, self.feature, self.threshold,
                                           self.left, self.right, self.missing_right,
                                           self.expected)
        return 1.0 / (1.0 + np.exp(-raw))

    def explain(self, x: np.ndarray) -> Explanation:
        if x.shape != (self.n_features,):
            raise ValueError(f"expected {self.n_features} features, got shape {x.shape}")
        contributions = np.zeros(self.n_features)
        leaves = _walk_all(np.ascontiguousarray(x, dtype=np.float64), self.roots,
                           self.feature, self.threshold, self.left, self.right,
                           self.missing_right, self.expected, contributions)
        raw = self.baseline + leaves
        return Explanation(_sigmoid(raw), raw, self.bias, contributions)


@numba.njit(cache=True, nogil=True)
def _walk_all(x: np.ndarray, roots: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
              left: np.ndarray, right: np.ndarray, missing_right: np.ndarray,
              expected: np.ndarray, contributions: np.ndarray) -> float:
    """Walk each tree from its root to its leaf; returns the sum of the leaf values and
    adds each split's change in expected value to its feature's contribution. A leaf's
    threshold is +inf; a missing value goes where training sent it."""
    total = 0.0
    for r in range(roots.shape[0]):
        node = roots[r]
        while threshold[node] != np.inf:
            value = x[feature[node]]
            if value != value:
                nxt = right[node] if missing_right[node] else left[node]
            elif value > threshold[node]:
                nxt = right[node]
            else:
                nxt = left[node]
            contributions[feature[node]] += expected[nxt] - expected[node]
            node = nxt
        total += expected[node]
    return total


@numba.njit(cache=True, nogil=True)
def _leaves_many(X: np.ndarray, roots: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
                 left: np.ndarray, right: np.ndarray, missing_right: np.ndarray,
                 expected: np.ndarray) -> np.ndarray:
    """Per row, the sum of its leaves' values: ``_walk_all`` row by row (its contributions
    go to a scratch array)."""
    out = np.zeros(X.shape[0])
    scratch = np.zeros(X.shape[1])
    for i in range(X.shape[0]):
        out[i] = _walk_all(X[i], roots, feature, threshold, left, right, missing_right,
                           expected, scratch)
    return out


def _expected_values(nodes: np.ndarray) -> np.ndarray:
    """Each node's training-weighted mean leaf value (leaves: their own value)."""
    n = len(nodes)
    expected = nodes["value"].astype(float).copy()
    count = nodes["count"].astype(float)
    leaf = nodes["is_leaf"].astype(bool)
    # Children always follow their parent in the array, so a reverse pass sees them first.
    for i in range(n - 1, -1, -1):
        if not leaf[i]:
            left, right = nodes["left"][i], nodes["right"][i]
            total = count[left] + count[right]
            expected[i] = (expected[left] * count[left] + expected[right] * count[right]) / total
    return expected


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
