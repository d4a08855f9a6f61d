"""``fraudstream train``: retrain from the history, evaluate on a later period, promote if better.

The split is by time, never at random::

    |---- train ----|-- gap (label delay) --|---- test ----|  <- cut-off
                                                   (last payment known)

Only labels reported by the cut-off are used. The gap keeps the test period's fraud out
of the training features and mirrors the delay with which labels arrive in production.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import sklearn
from sklearn.ensemble import HistGradientBoostingClassifier

from model.features import DAY, FEATURE_NAMES
from model.history import HistoryStore
from model.registry import Registry
from training.dataset import Dataset, build
from training.evaluate import evaluate

PRIMARY_METRIC = "average_precision"


class TrainingError(ValueError):
    pass


@dataclass(frozen=True)
class TrainConfig:
    test_days: float = 7.0
    gap_days: float = 7.0
    train_days: float | None = None  # None: everything before the gap
    cutoff: float | None = None  # epoch seconds; None: the newest event in the history
    review_rate: float = 0.03  # share of payments sent to review (thresholds are set on it)
    decline_rate: float = 0.005
    alert_rate: float = 0.01
    force: bool = False
    max_iter: int = 200
    learning_rate: float = 0.08
    max_depth: int = 8
    seed: int = 0


@dataclass
class TrainResult:
    version: str
    promoted: bool
    decision: str
    metrics: dict[str, float]
    previous_version: str | None = None
    previous_metrics: dict[str, float] | None = None
    window: dict[str, Any] = field(default_factory=dict)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def time_split(ds: Dataset, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    ts = ds.payments["ts"].to_numpy()
    end = float(ts.max())
    test_start = end - cfg.test_days * DAY
    train_end = test_start - cfg.gap_days * DAY
    train_start = float(ts.min()) if cfg.train_days is None else train_end - cfg.train_days * DAY
    train = (ts >= train_start) & (ts < train_end)
    test = ts >= test_start
    window = {
        "train_start": _iso(train_start), "train_end": _iso(train_end),
        "test_start": _iso(test_start), "test_end": _iso(end), "cutoff": _iso(ds.cutoff),
        "gap_days": cfg.gap_days, "train_payments": int(train.sum()),
        "train_fraud": int(ds.y[train].sum()), "test_payments": int(test.sum()),
        "test_fraud": int(ds.y[test].sum()),
    }
    if train.sum() == 0:
        span = (end - float(ts.min())) / DAY
        raise TrainingError(
            f"no payments left to train on: the history spans {span:.1f} days, but test "
            f"({cfg.test_days}d) + gap ({cfg.gap_days}d) take the last "
            f"{cfg.test_days + cfg.gap_days}d; import more history or shorten them"
        )
    if len(np.unique(ds.y[train])) < 2:
        raise TrainingError("the training period needs both fraud and legitimate payments "
                            f"(it has {window['train_fraud']} fraud of {window['train_payments']})")
    return train, test, window


def fit(X: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> HistGradientBoostingClassifier:
    model = HistGradientBoostingClassifier(
        max_iter=cfg.max_iter, learning_rate=cfg.learning_rate, max_leaf_nodes=31,
        # The compiled scorer walks all trees level by level: the deepest tree sets its cost.
        max_depth=cfg.max_depth,
        l2_regularization=1.0, early_stopping=False, random_state=cfg.seed,
    )
    return model.fit(X, y)


def train(
    store: HistoryStore, registry: Registry, cfg: TrainConfig,
    progress: Callable[[str, int | None], None] | None = None,
) -> TrainResult:
    def step(what: str, advance: int | None = None) -> None:
        if progress is not None:
            progress(what, advance)

    step("features")
    ds = build(store, cfg.cutoff, progress=lambda n: step("features", n))
    train_mask, test_mask, window = time_split(ds, cfg)
    names = list(FEATURE_NAMES)
    X = ds.features[names].to_numpy()

    step("fit")
    model = fit(X[train_mask], ds.y[train_mask], cfg)
    test_pay = ds.payments[test_mask]
    test_y = ds.y[test_mask]
    test_fraud_at = ds.fraud_reported_at[test_mask]

    step("evaluate")
    scores = model.predict_proba(X[test_mask])[:, 1]
    metrics = evaluate(test_pay, scores, test_y, test_fraud_at, cfg.alert_rate)
    review = float(np.quantile(scores, 1 - cfg.review_rate))
    decline = float(max(np.quantile(scores, 1 - cfg.decline_rate), review))

    previous = registry.current()
    previous_metrics = None
    if previous is not None:
        prev_names = previous.feature_names
        unknown = set(prev_names) - set(names)
        if not unknown:
            prev_scores = previous.load_estimator().predict_proba(
                ds.features[prev_names].to_numpy()[test_mask])[:, 1]
            previous_metrics = evaluate(test_pay, prev_scores, test_y, test_fraud_at,
                                        cfg.alert_rate)

    mv = registry.register(
        model,
        {
            "features": names,
            "thresholds": {"review": review, "decline": decline},
            "metrics": metrics,
            "training": window,
            "config": asdict(cfg),
            "estimator": type(model).__name__,
            "sklearn_version": sklearn.__version__,
            "primary_metric": PRIMARY_METRIC,
            "compared_with": {"version": previous.version, "metrics": previous_metrics}
            if previous is not None else None,
        },
    )

    if previous is None:
        promoted, why = True, "no current model"
    elif cfg.force:
        promoted, why = True, "forced"
    elif previous_metrics is None:
        promoted, why = False, (f"current {previous.version} uses features no longer defined; "
                                "use --force to replace it")
    else:
        new, old = metrics[PRIMARY_METRIC], previous_metrics[PRIMARY_METRIC]
        promoted = bool(new > old)
        why = f"{PRIMARY_METRIC} {new:.4f} {'>' if promoted else '<='} current {old:.4f}"
    if promoted:
        registry.promote(mv.version)
    return TrainResult(mv.version, promoted, why, metrics,
                       previous.version if previous else None, previous_metrics, window)
