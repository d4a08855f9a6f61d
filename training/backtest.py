"""``fraudstream backtest``: score a past period as the live system would have, with one
or more registered models, and report how much fraud each would have caught.

The period is a span of the history, or a file a team brings (checked as ``history
import`` checks it). Every payment gets its point-in-time features, computed with the
history before it as context: the card's and terminal's earlier payments, and only the
labels reported by the payment's own time. The payments are then judged against every
label known now. A report directory gets the metrics (``report.json``), each payment's
scores and decisions (``decisions.parquet``, which ``fraudstream replay`` compares with
the live API's answers) and a plot (``backtest.png``: precision-recall curves, card
precision per day, alerts per day).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model.features import DAY, FEATURE_NAMES, TERMINAL_HORIZON
from model.labels import fraud_known_since, fraud_spells
from model.point_in_time import compute_features
from model.registry import ModelVersion, Registry
from model.schemas import PAYMENT_DETAILS
from model.scorer import Scorer
from stores.history import HistoryStore
from training.dataset import load, newest_event
from training.evaluate import EvalConfig, EvalSet, card_replicates, evaluate
from training.importer import DEFAULT_LABEL_DELAY_DAYS, import_history

# Context before the period: the longest window any feature reaches back.
CONTEXT = TERMINAL_HORIZON + DAY


class BacktestError(ValueError):
    pass


@dataclass(frozen=True)
class BacktestConfig:
    start: float | None = None  # epoch seconds; with end: a span of the history
    end: float | None = None
    file: Path | None = None  # or: the payments (and labels) of this file
    mapping: dict[str, str] = field(default_factory=dict)
    label_delay_days: float = DEFAULT_LABEL_DELAY_DAYS
    # with ``file``: the pseudonyms' key (``stores.pii_key``), for its e-mails and IPs
    pii_key: bytes | None = field(default=None, repr=False)
    versions: tuple[str, ...] = ()  # default: the current model
    k: int = 100
    alert_rate: float = 0.01
    bootstrap: int = 200
    seed: int = 0


@dataclass
class BacktestReport:
    period: dict[str, Any]
    metrics: dict[str, dict[str, float]]  # version -> metrics
    daily: pd.DataFrame  # day x (version, measure)
    decisions: pd.DataFrame  # payment_id, ts, y, per version: score, decision
    out_dir: Path | None = None


def _period(cfg: BacktestConfig, store: HistoryStore,
            progress: Callable[[str, int | None], None]) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                  np.ndarray]:
    """All payments needed (context + period, in arrival order), all labels, and the mask
    of the period's payments."""
    payments, labels = load(store)
    if cfg.file is not None:
        progress("checking the file", None)
        file_payments, file_labels = load_file(cfg.file, cfg.mapping, cfg.label_delay_days,
                                               pii_key=cfg.pii_key)
        first = float(file_payments["ts"].min())
        context = payments[_context(payments, labels, first)
                           & ~payments["payment_id"].isin(file_payments["payment_id"])]
        context = context[context["ts"] < float(file_payments["ts"].max())]
        combined = pd.concat([context, file_payments.sort_values("ts", kind="stable")],
                             ignore_index=True)
        labels = pd.concat([labels, file_labels], ignore_index=True)
        in_period = np.r_[np.zeros(len(context), bool), np.ones(len(file_payments), bool)]
        return combined, labels, in_period
    if payments.empty:
        raise BacktestError(f"the history at {store.root} holds no payments")
    start = cfg.start if cfg.start is not None else float(payments["ts"].min())
    end = cfg.end if cfg.end is not None else float(np.nextafter(payments["ts"].max(), np.inf))
    keep = _context(payments, labels, start) & (payments["ts"] < end)
    combined = payments[keep].reset_index(drop=True)
    in_period = ((combined["ts"] >= start) & (combined["ts"] < end)).to_numpy()
    if not in_period.any():
        raise BacktestError("no payments in the period asked for")
    return combined, labels, in_period


def period_features(cfg: BacktestConfig, store: HistoryStore,
                    step: Callable[[str, int | None], None]
                    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """The period's payments, their point-in-time features, and when each one's fraud
    became known (NaN: not fraud), by the labels known now."""
    payments, labels, in_period = _period(cfg, store, step)
    step("features", None)
    features = compute_features(payments, labels, progress=lambda n: step("features", n))
    period = payments[in_period].reset_index(drop=True)
    known = fraud_known_since(period["payment_id"], fraud_spells(labels),
                              newest_event(payments, labels))
    return period, features[in_period].reset_index(drop=True), known


def _context(payments: pd.DataFrame, labels: pd.DataFrame, start: float) -> pd.Series:
    """The payments the period's features can see: those within the longest window, and
    older ones whose labels came lately (a card's fraud known in the last 30 days may be
    on a payment of 40 days ago)."""
    recent_labels = labels.loc[labels["reported_at"] >= start - CONTEXT, "payment_id"]
    return (payments["ts"] >= start - CONTEXT) | payments["payment_id"].isin(recent_labels)


def load_file(path: Path, mapping: dict[str, str] | None = None,
              label_delay_days: float = DEFAULT_LABEL_DELAY_DAYS, *,
              pii_key: bytes | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A brought file's payments and labels, checked exactly as ``history import`` checks,
    its e-mails and IPs pseudonymised with ``pii_key`` (none: a file with raw ones fails).
    The payments carry the gateway's details too (``PAYMENT_DETAILS``, null if absent)."""
    with tempfile.TemporaryDirectory(prefix="fraudstream-file-") as scratch:
        brought = HistoryStore(Path(scratch))
        import_history(brought, path, mapping or {}, label_delay_days, pii_key=pii_key)
        payments, labels = load(brought)
        extra = brought.query(f"SELECT payment_id, currency, channel, "
                              f"{', '.join(PAYMENT_DETAILS)} FROM payments")
    if payments.empty:
        raise BacktestError(f"{path}: no payments")
    return payments.merge(extra, on="payment_id", how="left"), labels


def versions_of(registry: Registry, cfg: BacktestConfig) -> list[ModelVersion]:
    current = registry.current_version()
    names = list(cfg.versions) or ([current] if current else [])
    if not names:
        raise BacktestError("no model to backtest: none is current; name one with --model")
    return [registry.get(name) for name in names]


def backtest(store: HistoryStore, registry: Registry, cfg: BacktestConfig,
             out_dir: Path | None = None,
             progress: Callable[[str, int | None], None] | None = None) -> BacktestReport:
    def step(what: str, advance: int | None = None) -> None:
        if progress is not None:
            progress(what, advance)

    models = versions_of(registry, cfg)
    period, X_all, known = period_features(cfg, store, step)
    y = known.notna().to_numpy(dtype=int)
    period = period.assign(day=pd.to_datetime(period["ts"], unit="s", utc=True).dt.floor("D"))
    test = EvalSet(period, y, known.to_numpy(dtype=float))
    ecfg = EvalConfig(k=cfg.k, alert_rate=cfg.alert_rate, bootstrap=cfg.bootstrap, seed=cfg.seed)
    replicates = card_replicates(test, ecfg) if cfg.bootstrap else None

    decisions = pd.DataFrame({"payment_id": period["payment_id"], "ts": period["ts"], "y": y})
    metrics: dict[str, dict[str, float]] = {}
    daily: dict[tuple[str, str], pd.Series] = {}
    for mv in models:
        step(f"scoring with {mv.version}")
        missing = set(mv.feature_names) - set(FEATURE_NAMES)
        if missing:
            raise BacktestError(f"model {mv.version} needs features this version no longer "
                                f"computes: {sorted(missing)}")
        # The scorer the API loads: the compiled model and its calibration, as served.
        scorer = Scorer.from_version(mv)
        scores = scorer.probabilities(X_all[mv.feature_names].to_numpy())
        thresholds = scorer.thresholds
        decided = np.where(scores >= thresholds.decline, "decline",
                           np.where(scores >= thresholds.review, "review", "approve"))
        decisions[f"score:{mv.version}"] = scores
        decisions[f"decision:{mv.version}"] = decided
        metrics[mv.version] = evaluate(test, scores, ecfg, replicates) if y.any() and not \
            y.all() else {"test_payments": float(len(y)), "test_fraud": float(y.sum())}
        alerts = pd.Series(decided != "approve")
        by_day = pd.DataFrame({"day": period["day"], "alert": alerts, "hit": alerts & (y == 1)})
        per_day = by_day.groupby("day").sum()
        daily[(mv.version, "alerts")] = per_day["alert"]
        daily[(mv.version, "alert_precision")] = (per_day["hit"]
                                                  / per_day["alert"].replace(0, np.nan))
    daily_frame = pd.DataFrame(daily)
    daily_frame.insert(0, ("all", "fraud"), pd.Series(y, index=period.index)
                       .groupby(period["day"]).sum())
    daily_frame.insert(0, ("all", "payments"), period.groupby("day").size())
    report = BacktestReport(
        period={"first": _iso(period["ts"].min()), "last": _iso(period["ts"].max()),
                "payments": len(period), "fraud": int(y.sum()),
                "source": str(cfg.file) if cfg.file else "history"},
        metrics=metrics, daily=daily_frame, decisions=decisions,
    )
    if out_dir is not None:
        write_report(report, out_dir, test, [mv.version for mv in models])
    return report


def _iso(ts: float) -> str:
    return pd.Timestamp(ts, unit="s", tz="UTC").isoformat()


def write_report(report: BacktestReport, out_dir: Path, test: EvalSet,
                 versions: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(
        {"period": report.period, "metrics": report.metrics}, indent=2, default=str))
    report.decisions.to_parquet(out_dir / "decisions.parquet", index=False)
    report.out_dir = out_dir
    plot(report, out_dir / "backtest.png", test, versions)


def plot(report: BacktestReport, path: Path, test: EvalSet, versions: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for version in versions:
        scores = report.decisions[f"score:{version}"].to_numpy()
        if test.y.any():
            precision, recall, _ = precision_recall_curve(test.y, scores)
            ap = report.metrics[version].get("average_precision", float("nan"))
            axes[0].plot(recall, precision, label=f"{version} (AP {ap:.3f})")
        axes[2].plot(report.daily.index, report.daily[(version, "alerts")], marker=".",
                     label=version)
        axes[1].plot(report.daily.index, report.daily[(version, "alert_precision")],
                     marker=".", label=version)
    axes[0].set(xlabel="recall", ylabel="precision", title="Precision-recall")
    axes[1].set(ylabel="share of alerts that were fraud", title="Alert precision per day")
    axes[2].set(ylabel="review + decline", title="Alerts per day")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
