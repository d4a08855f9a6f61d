"""The scorer: a loaded model plus its thresholds, turning features into a decision."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.calibration import Calibration, logit_one, sigmoid_one
from model.compiled import Compiled, compile_model
from model.registry import ModelVersion
from model.schemas import Decision

# Reasons name the features that raised this payment's score most, by at least this much
# (log-odds), at most this many.
MIN_CONTRIBUTION = 0.05
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
    vector: np.ndarray | None = None  # the features in the model's order, as scored


class Scorer:
    """Model + thresholds, immutable once built.

    The API swaps whole Scorer objects on hot reload, so a request holds one consistent
    model for its whole lifetime. Every family training may pick (gradient boosting,
    forests, a logistic regression) is scored through its compiled form
    (``model.compiled``), which also explains each score; anything else falls back to the
    estimator's own ``predict_proba``, without feature reasons.
    """

    def __init__(self, estimator: Any, metadata: dict[str, Any]) -> None:
        self.estimator = estimator
        self.version: str = metadata["version"]
        self.feature_names: list[str] = list(metadata["features"])
        t = metadata["thresholds"]
        self.thresholds = Thresholds(review=float(t["review"]), decline=float(t["decline"]))
        # Every score given is the calibrated one (``model.calibration``); the thresholds
        # are on that scale.
        self.calibration = Calibration.from_dict(metadata.get("calibration"))
        try:
            self.compiled: Compiled | None = compile_model(estimator)
        except (TypeError, ValueError):
            self.compiled = None
        # The calibrated prior's log-odds: where the reasons' credits start from.
        self._prior = 0.0
        if self.compiled is not None and self.calibration.kind != "identity":
            self._prior = logit_one(self.calibration.one(sigmoid_one(self.compiled.bias)))

    @classmethod
    def from_version(cls, mv: ModelVersion) -> Scorer:
        return cls(mv.load_estimator(), mv.metadata)

    def vector(self, features: dict[str, float]) -> np.ndarray:
        try:
            return np.array([features[f] for f in self.feature_names], dtype=float)
        except KeyError as exc:
            raise ValueError(f"model {self.version} needs feature {exc.args[0]!r}") from exc

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """Scores of many payments at once (rows of features in ``feature_names`` order; no
        reasons): the shadow's batches, benchmarks."""
        if len(X) == 0:
            return np.zeros(0)
        if self.compiled is not None:
            return self.calibration(self.compiled.predict_proba_many(X))
        return self.calibration(np.asarray(self.estimator.predict_proba(X)[:, 1], dtype=float))

    def score(self, features: dict[str, float]) -> Outcome:
        x = self.vector(features)
        reasons: list[dict[str, Any]] = []
        if self.compiled is not None:
            explanation = self.compiled.explain(x)
            score = self.calibration.one(explanation.proba)
            contributions = self._calibrated(explanation.contributions, explanation.raw,
                                             explanation.bias, score)
        else:
            score = self.calibration.one(float(self.estimator.predict_proba(x[None, :])[0, 1]))
            contributions = None
        decision = self.thresholds.decide(score)
        if decision != "approve":
            limit = self.thresholds.decline if decision == "decline" else self.thresholds.review
            reasons.append({"code": f"score_above_{decision}_threshold",
                            "detail": f"score {score:.3f} >= {decision} threshold {limit:.3f}"})
        if contributions is not None:
            for i in np.argsort(-contributions)[:MAX_FEATURE_REASONS]:
                if contributions[i] < MIN_CONTRIBUTION:
                    break
                name = self.feature_names[i]
                reasons.append({
                    "code": f"feature_{name}",
                    "feature": name,
                    "value": float(x[i]),
                    "contribution": float(contributions[i]),
                    "detail": f"{name} = {x[i]:.6g} raised the score by "
                              f"{contributions[i]:+.2f} log-odds",
                })
        return Outcome(score, decision, reasons, x)

    def _calibrated(self, contributions: np.ndarray, raw: float, bias: float,
                    score: float) -> np.ndarray:
        """The model's credits in the calibrated score's log-odds: all scaled by one
        factor, so that they add up to the calibrated score's change from the calibrated
        prior (a Platt calibration's slope exactly)."""
        if self.calibration.kind == "identity" or raw == bias:
            return contributions
        return contributions * ((logit_one(score) - self._prior) / (raw - bias))
