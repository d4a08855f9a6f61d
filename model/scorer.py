"""The scorer: a loaded model plus its thresholds, turning features into a decision."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.registry import ModelVersion
from model.schemas import Decision

# Reasons name features at least this many standard deviations above their training mean.
REASON_Z = 3.0
MAX_FEATURE_REASONS = 3


@dataclass(frozen=True)
class Thresholds:
    review: float
    decline: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.review <= self.decline <= 1.0:
            raise ValueError(
                f"thresholds must satisfy 0 <= review <= decline <= 1, got "
                f"review={self.review} decline={self.decline}"
            )

    def decide(self, score: float) -> Decision:
        if score >= self.decline:
            return "decline"
        if score >= self.review:
            return "review"
        return "approve"


@dataclass(frozen=True)
class Outcome:
    score: float
    decision: Decision
    reasons: list[dict[str, Any]] = field(default_factory=list)


class Scorer:
    """Model + thresholds + reference statistics, immutable once built.

    The API swaps whole Scorer objects on hot reload, so a request holds one consistent
    model for its whole lifetime.
    """

    def __init__(self, estimator: Any, metadata: dict[str, Any]) -> None:
        self.estimator = estimator
        self.version: str = metadata["version"]
        self.feature_names: list[str] = list(metadata["features"])
        t = metadata["thresholds"]
        self.thresholds = Thresholds(review=float(t["review"]), decline=float(t["decline"]))
        ref = metadata.get("reference", {})
        self._mean = np.array([ref.get("mean", {}).get(f, 0.0) for f in self.feature_names])
        std = np.array([ref.get("std", {}).get(f, 0.0) for f in self.feature_names])
        self._std = np.where(std > 0, std, np.inf)

    @classmethod
    def from_version(cls, mv: ModelVersion) -> Scorer:
        return cls(mv.load_estimator(), mv.metadata)

    def vector(self, features: dict[str, float]) -> np.ndarray:
        try:
            return np.array([[features[f] for f in self.feature_names]], dtype=float)
        except KeyError as exc:
            raise ValueError(f"model {self.version} needs feature {exc.args[0]!r}") from exc

    def score(self, features: dict[str, float]) -> Outcome:
        x = self.vector(features)
        score = float(self.estimator.predict_proba(x)[0, 1])
        decision = self.thresholds.decide(score)
        return Outcome(score, decision, self._reasons(x[0], score, decision))

    def _reasons(self, x: np.ndarray, score: float, decision: Decision) -> list[dict[str, Any]]:
        reasons: list[dict[str, Any]] = []
        if decision != "approve":
            limit = self.thresholds.decline if decision == "decline" else self.thresholds.review
            reasons.append(
                {
                    "code": f"score_above_{decision}_threshold",
                    "detail": f"score {score:.3f} >= {decision} threshold {limit:.3f}",
                }
            )
        z = (x - self._mean) / self._std
        for i in np.argsort(-z)[:MAX_FEATURE_REASONS]:
            if z[i] < REASON_Z:
                break
            name = self.feature_names[i]
            reasons.append(
                {
                    "code": f"unusual_{name}",
                    "feature": name,
                    "value": float(x[i]),
                    "detail": f"{name} = {x[i]:.4g}, typical {self._mean[i]:.4g}",
                }
            )
        return reasons
