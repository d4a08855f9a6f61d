"""Calibrated scores: a model's probability mapped so that a score of 0.2 means about one
payment in five so scored is fraud.

A forest's averaged votes, a gradient boosting fitted on sampled-down legitimate payments
and a class-balanced family all rank payments well and say little about how likely a
payment is to be fraud; and each retrain ranks on a scale of its own. Thresholds set by cost
(a review pays off where the expected fraud amount exceeds its cost) need a probability,
and a threshold an analyst knows should mean the same after a retrain. So training fits a
monotone map from the model's score to the fraud rate observed on held-back, matured,
out-of-sample scores (``fit``):

- **isotonic** (a step function fitted to the observed rates, read as the line through
  its steps' centres so that it stays strictly increasing: no two payments the model
  ranks apart are tied by it) when the slice holds at least ``ISOTONIC_MIN_FRAUD`` frauds;
- **Platt** (a logistic regression on the score's log-odds) on fewer: two parameters are
  what a few hundred frauds support.

Both keep the model's ranking (AUC, average precision, card precision are unchanged) and
are applied by the scorer to every score it gives, online and offline alike.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

ISOTONIC_MIN_FRAUD = 300
# Scores are taken within these bounds before their log-odds.
CLIP = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, CLIP, 1 - CLIP)
    return np.asarray(np.log(q / (1 - q)))


def logit_one(p: float) -> float:
    q = min(max(p, CLIP), 1 - CLIP)
    return math.log(q / (1 - q))


def sigmoid_one(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True)
class Calibration:
    """``platt``: calibrated = sigmoid(a * logit(score) + b). ``isotonic``: the line through
    (``x``, ``y``), flat beyond its ends. ``identity``: the score as it is."""

    kind: Literal["identity", "platt", "isotonic"] = "identity"
    a: float = 1.0
    b: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        s = np.asarray(scores, dtype=float)
        if self.kind == "platt":
            return np.asarray(1.0 / (1.0 + np.exp(-(self.a * logit(s) + self.b))))
        if self.kind == "isotonic":
            return np.asarray(np.interp(s, self.x, self.y))
        return s

    def one(self, score: float) -> float:
        """One score, in plain floats: the hook's path, where numpy's per-call cost would
        be most of the step."""
        if self.kind == "identity":
            return score
        if self.kind == "platt":
            return sigmoid_one(self.a * logit_one(score) + self.b)
        x, y = self.x, self.y
        i = bisect_right(x, score)
        if i == 0:
            return y[0]
        if i == len(x):
            return y[-1]
        return y[i - 1] + (y[i] - y[i - 1]) * (score - x[i - 1]) / (x[i] - x[i - 1])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "a": self.a, "b": self.b, "x": list(self.x),
                "y": list(self.y)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Calibration:
        """A model's metadata entry; none (a model trained before calibration): identity."""
        if not d:
            return cls()
        return cls(d["kind"], float(d.get("a", 1.0)), float(d.get("b", 0.0)),
                   tuple(float(v) for v in d.get("x", ())),
                   tuple(float(v) for v in d.get("y", ())))


def fit(scores: np.ndarray, y: np.ndarray) -> Calibration:
    """The calibration the slice supports (module doc). ValueError without both classes."""
    scores, y = np.asarray(scores, dtype=float), np.asarray(y, dtype=int)
    fraud = int(y.sum())
    if fraud == 0 or fraud == len(y):
        raise ValueError("calibration needs fraud and legitimate payments in its slice")
    if fraud >= ISOTONIC_MIN_FRAUD:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(scores, y)
        level = iso.predict(scores)
        # One point per step: its scores' mean and its rate (the steps' rates rise strictly).
        steps = np.unique(level)
        xs = np.array([scores[level == v].mean() for v in steps])
        if len(steps) >= 2:
            return Calibration("isotonic", x=tuple(xs.tolist()), y=tuple(steps.tolist()))
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e6, max_iter=1000).fit(logit(scores)[:, None], y)
    return Calibration("platt", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))


# Where the reliability curve cuts the scores, as shares of the payments: fraud sits in
# the top few percent, so the bins are finer there.
CURVE_CUTS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


def curve(scores: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Reliability: payments in bins by score (``CURVE_CUTS``), each bin's mean score and
    observed fraud rate; and the expected calibration error (the bins' absolute gap between
    the two, weighted by their payments)."""
    scores, y = np.asarray(scores, dtype=float), np.asarray(y, dtype=float)
    order = np.argsort(scores, kind="stable")
    cuts = sorted({round(c * len(order)) for c in CURVE_CUTS} - {0, len(order)})
    parts = [p for p in np.split(order, cuts) if len(p)]
    mean = [float(scores[p].mean()) for p in parts]
    rate = [float(y[p].mean()) for p in parts]
    size = [len(p) for p in parts]
    ece = float(sum(n * abs(m - r) for n, m, r in zip(size, mean, rate, strict=True))
                / max(sum(size), 1))
    return {"mean_score": mean, "fraud_rate": rate, "payments": size, "ece": ece}
