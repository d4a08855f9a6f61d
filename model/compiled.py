"""The project's own compiled form of a trained model, for single-payment scoring.

scikit-learn's ``predict_proba`` spends most of a one-row call in input validation and
thread dispatch. Here every tree of a fitted binary tree ensemble is flattened into shared
arrays, and one payment walks every tree down to its leaf in a loop compiled by numba
(``_walk_all``): about 11 us for 300 trees of depth 8 here, where a numpy formulation
(every split at once, then a gather per level) took 88 us, all of it in call overhead.
A logistic regression is one dot product (``CompiledLinear``).

Every compiled model explains a score the same way: per-feature contributions in
log-odds, which add up with the bias to the score's log-odds.

- Gradient boosting (``HistGradientBoostingClassifier``) adds its trees' values in
  log-odds. Saabas: along each tree's path, the change in the expected leaf value at each
  split is credited to the split's feature; the credits add up exactly to the raw score.
- Forests (``RandomForestClassifier``, ``ExtraTreesClassifier``) average their trees'
  leaf probabilities. The same Saabas walk credits each split with its change in the
  expected probability; the credits add up to the score minus the forest's prior. They
  are then rescaled, all by one factor, to add up to the score's log-odds minus the prior's
  (the log-odds are those of the probability clipped to [1e-6, 1 - 1e-6],
  ``model.calibration.CLIP``, as a forest gives 0 and 1): each feature keeps its share
  of the change, in the unit of the other families' reasons.
- A logistic regression (alone, or after a median imputer and a scaler) credits each
  feature with its coefficient times its standardised value, exactly.
- A blend (``model.ensemble.MeanBlend``, the mean of its members' probabilities) averages
  its members' credits and scales them, by one factor, to its own change in log-odds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

import numba
import numpy as np

from model.calibration import CLIP, logit_one, sigmoid_one


@dataclass(frozen=True)
class Explanation:
    proba: float
    raw: float  # the score in log-odds
    bias: float  # the log-odds before any feature: a tree model's prior, a linear intercept
    contributions: np.ndarray  # per feature, in log-odds; bias + sum == raw


class Compiled(Protocol):
    """What the scorer needs of a compiled model."""

    n_features: int
    bias: float  # the log-odds before any feature

    def explain(self, x: np.ndarray) -> Explanation: ...

    def predict_proba(self, x: np.ndarray) -> float: ...

    def predict_proba_many(self, X: np.ndarray) -> np.ndarray: ...


def compile_model(estimator: Any) -> Compiled:
    """The compiled form of a fitted binary model: gradient boosting, a random forest or
    extra trees, or a logistic regression (alone or in a pipeline of imputer and scaler).
    TypeError for any other model, ValueError for one it cannot compile exactly."""
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )

    from model.ensemble import MeanBlend

    if isinstance(estimator, MeanBlend):
        return CompiledBlend([compile_model(m) for m in estimator.fitted_])
    if isinstance(estimator, HistGradientBoostingClassifier):
        return CompiledForest.from_sklearn(estimator)
    if isinstance(estimator, RandomForestClassifier | ExtraTreesClassifier):
        return CompiledForest.from_forest(estimator)
    return CompiledLinear.from_sklearn(estimator)


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
        average: bool = False,
        float32: bool = False,
    ) -> None:
        """``average``: the trees' leaf values are probabilities, averaged (a forest);
        otherwise log-odds, added up (gradient boosting). ``float32``: the features are
        compared as float32, as scikit-learn's trees do."""
        self.feature = feature
        self.threshold = threshold
        self.left = left  # a leaf's children are itself
        self.right = right
        self.missing_right = missing_right
        self.expected = expected
        self.roots = roots
        self.baseline = baseline
        self.n_features = n_features
        self.average = average
        self.float32 = float32
        self._scale = 1.0 / len(roots) if average else 1.0
        prior = baseline + float(expected[roots].sum()) * self._scale
        self._prior = prior  # in the leaves' unit: log-odds, or a forest's probability
        self.bias = logit_one(prior) if average else prior
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

        trees = []
        for predictor in predictors:
            nodes = predictor.nodes
            trees.append(_Tree(leaf=nodes["is_leaf"].astype(bool),
                               left=nodes["left"].astype(np.int64),
                               right=nodes["right"].astype(np.int64),
                               feature=nodes["feature_idx"],
                               threshold=nodes["num_threshold"],
                               missing_left=nodes["missing_go_to_left"].astype(bool),
                               expected=_expected_values(nodes)))
        return cls(**_flatten(trees),
                   baseline=float(np.ravel(estimator._baseline_prediction)[0]),
                   n_features=int(estimator.n_features_in_))

    @classmethod
    def from_forest(cls, estimator: Any) -> CompiledForest:
        """A fitted ``RandomForestClassifier`` or ``ExtraTreesClassifier``."""
        if len(estimator.classes_) != 2:
            raise ValueError("can compile a binary classifier only")
        trees = []
        for tree in (e.tree_ for e in estimator.estimators_):
            value = tree.value[:, 0, :]
            trees.append(_Tree(leaf=tree.children_left == -1, left=tree.children_left,
                               right=tree.children_right, feature=tree.feature,
                               threshold=tree.threshold,
                               missing_left=np.asarray(tree.missing_go_to_left, dtype=bool),
                               # A node's value is its training samples' class shares
                               # (weighted): the parent's is its children's mean, as the
                               # Saabas credits need.
                               expected=value[:, 1] / value.sum(axis=1)))
        return cls(**_flatten(trees), baseline=0.0, n_features=int(estimator.n_features_in_),
                   average=True, float32=True)

    def _rows(self, X: np.ndarray) -> np.ndarray:
        """Contiguous float64, as the walk takes them (no copy when they are already);
        through float32 first for scikit-learn's trees."""
        if self.float32:
            X = X.astype(np.float32)
        return np.ascontiguousarray(X, dtype=np.float64)

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
        total = self.baseline + self._scale * _leaves_many(
            self._rows(X), self.roots, self.feature, self.threshold,
            self.left, self.right, self.missing_right, self.expected)
        return total if self.average else 1.0 / (1.0 + np.exp(-total))

    def explain(self, x: np.ndarray) -> Explanation:
        if x.shape != (self.n_features,):
            raise ValueError(f"expected {self.n_features} features, got shape {x.shape}")
        contributions = np.zeros(self.n_features)
        leaves = _walk_all(self._rows(x), self.roots,
                           self.feature, self.threshold, self.left, self.right,
                           self.missing_right, self.expected, contributions)
        total = self.baseline + self._scale * leaves
        if not self.average:
            return Explanation(sigmoid_one(total), total, self.bias, contributions)
        # A forest's credits, in probability, rescaled to add up in log-odds (module doc).
        contributions *= self._scale
        raw = logit_one(total)
        change = total - self._prior
        if abs(change) > 1e-12:
            contributions *= (raw - self.bias) / change
        else:  # no change to share: the slope of the log-odds there
            contributions /= max(self._prior * (1 - self._prior), CLIP)
        return Explanation(total, raw, self.bias, contributions)


class CompiledBlend:
    """The mean probability of compiled members (``model.ensemble.MeanBlend``). Its credits:
    the members' log-odds credits averaged, then scaled by one factor to add up to the
    blend's own change in log-odds from its prior (the members' priors' mean probability)."""

    def __init__(self, members: list[Compiled]) -> None:
        if len({m.n_features for m in members}) != 1:
            raise ValueError("a blend's members must take the same features")
        self.members = members
        self.n_features = members[0].n_features
        self.bias = logit_one(float(np.mean([sigmoid_one(m.bias) for m in members])))

    def explain(self, x: np.ndarray) -> Explanation:
        parts = [m.explain(x) for m in self.members]
        proba = float(np.mean([e.proba for e in parts]))
        raw = logit_one(proba)
        contributions = np.mean([e.contributions for e in parts], axis=0)
        spread = float(np.mean([e.raw - e.bias for e in parts]))
        if abs(spread) > 1e-12:
            contributions = contributions * ((raw - self.bias) / spread)
        return Explanation(proba, raw, self.bias, contributions)

    def predict_proba(self, x: np.ndarray) -> float:
        return self.explain(x).proba

    def predict_proba_many(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(np.mean([m.predict_proba_many(X) for m in self.members], axis=0))


class CompiledLinear:
    """A logistic regression: log-odds = intercept + coef . (x - centre) / scale, missing
    values (NaN) taken as the imputer's (a median imputer's fill; 0 without one)."""

    def __init__(self, coef: np.ndarray, intercept: float, centre: np.ndarray,
                 scale: np.ndarray, fill: np.ndarray) -> None:
        self.n_features = len(coef)
        self.weight = coef / scale
        self.centre = centre
        self.fill = fill
        # the bias: log-odds at the centre (the training mean), where every credit is 0
        self.bias = float(intercept)

    @classmethod
    def from_sklearn(cls, estimator: Any) -> CompiledLinear:
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        steps = list(estimator.steps) if isinstance(estimator, Pipeline) else [("", estimator)]
        final = steps.pop()[1]
        if not isinstance(final, LogisticRegression):
            raise TypeError(f"can compile gradient boosting, a random forest, extra trees or "
                            f"a logistic regression, not {type(final).__name__}")
        if len(final.classes_) != 2:
            raise ValueError("can compile a binary classifier only")
        n = int(final.n_features_in_)
        centre, scale, fill = np.zeros(n), np.ones(n), np.zeros(n)
        for i, (_, step) in enumerate(steps):
            if isinstance(step, SimpleImputer) and not step.add_indicator \
                    and len(step.statistics_) == n and i == 0:
                fill = np.asarray(step.statistics_, dtype=float)
            elif isinstance(step, StandardScaler):
                centre = np.asarray(step.mean_ if step.with_mean else centre, dtype=float)
                scale = np.asarray(step.scale_ if step.with_std else scale, dtype=float)
            else:
                raise TypeError(f"can compile a logistic regression after a median imputer "
                                f"and a standard scaler, not after {type(step).__name__}")
        return cls(np.asarray(final.coef_[0], dtype=float), float(final.intercept_[0]),
                   centre, scale, fill)

    def _filled(self, X: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(X), self.fill, X)

    def explain(self, x: np.ndarray) -> Explanation:
        if x.shape != (self.n_features,):
            raise ValueError(f"expected {self.n_features} features, got shape {x.shape}")
        contributions = self.weight * (self._filled(x) - self.centre)
        raw = self.bias + float(contributions.sum())
        return Explanation(sigmoid_one(raw), raw, self.bias, contributions)

    def predict_proba(self, x: np.ndarray) -> float:
        return self.explain(x).proba

    def predict_proba_many(self, X: np.ndarray) -> np.ndarray:
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got {X.shape}")
        raw = self.bias + (self._filled(X) - self.centre) @ self.weight
        return np.asarray(1.0 / (1.0 + np.exp(-raw)))


@dataclass(frozen=True)
class _Tree:
    """One tree's nodes as its library keeps them (children by index within the tree)."""

    leaf: np.ndarray
    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray
    expected: np.ndarray


class _Flat(TypedDict):
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    missing_right: np.ndarray
    expected: np.ndarray
    roots: np.ndarray


def _flatten(trees: list[_Tree]) -> _Flat:
    """The trees in shared arrays, children offset to their tree's place: a leaf is its own
    child (the walk stops there) and compares x[0] against +inf."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (
        "feature", "threshold", "left", "right", "missing_right", "expected")}
    roots, offset = [], 0
    for t in trees:
        own = np.arange(len(t.leaf)) + offset
        parts["left"].append(np.where(t.leaf, own, t.left + offset))
        parts["right"].append(np.where(t.leaf, own, t.right + offset))
        parts["feature"].append(np.where(t.leaf, 0, t.feature))
        parts["threshold"].append(np.where(t.leaf, np.inf, t.threshold))
        parts["missing_right"].append(~t.missing_left & ~t.leaf)
        parts["expected"].append(t.expected)
        roots.append(offset)
        offset += len(t.leaf)
    types = {"feature": np.intp, "left": np.intp, "right": np.intp, "threshold": float,
             "missing_right": bool, "expected": float}
    flat = {k: np.concatenate(v).astype(types[k]) for k, v in parts.items()}
    return _Flat(feature=flat["feature"], threshold=flat["threshold"], left=flat["left"],
                 right=flat["right"], missing_right=flat["missing_right"],
                 expected=flat["expected"], roots=np.asarray(roots, dtype=np.intp))


@numba.njit(cache=True, nogil=True)
def _walk_all(x: np.ndarray, roots: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
              left: np.ndarray, right: np.ndarray, missing_right: np.ndarray,
              expected: np.ndarray, contributions: np.ndarray) -> float:
    """Walk each tree from its root to its leaf; returns the sum of the leaf values and
    adds each split's change in expected value to its feature's contribution. A leaf is its
    own child (a split's threshold may be +inf: only the missing go right); a missing
    value goes where training sent it."""
    total = 0.0
    for r in range(roots.shape[0]):
        node = roots[r]
        while left[node] != node:
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
