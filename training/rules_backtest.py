"""A draft rule set scored over a period of the history, point in time, beside the model.

Every payment of the period gets the features it had when it came (``training.backtest``'s
period and ``model.point_in_time``), the current model's score and decision, and every
draft rule is evaluated on it as the API evaluates it (``model.policy``, compiled). Per
rule: hits, hits per day, fraud caught (count and amount), genuine payments hit (count and
amount), precision, the frauds it catches that the model alone would have approved, and
how much it overlaps each other rule. Lists are not replayed (they hold today's entries,
not the period's), and features the backtest does not compute (the catalogue's beyond
today's 25) are missing values, on which a condition does not hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model.features import FEATURE_NAMES
from model.policy import PAYMENT_FIELDS, SCORE, Policy, RuleSet
from model.registry import Registry
from model.scorer import Scorer
from stores.history import HistoryStore
from training.backtest import BacktestConfig, BacktestError, period_features, versions_of


@dataclass
class RulesReport:
    period: dict[str, Any]
    model: str
    # one row per rule: hits, fraud_hits, fraud_amount, genuine_hits, genuine_amount,
    # precision, beyond_model (frauds it hits that the model approved), beyond_model_amount
    rules: pd.DataFrame
    daily: pd.DataFrame  # day x rule: hits
    overlap: pd.DataFrame  # rule x rule: payments hit by both
    hits: pd.DataFrame  # payment_id, ts, y, amount, score, model decision, per rule: hit


def rules_backtest(store: HistoryStore, registry: Registry, rules: RuleSet,
                   cfg: BacktestConfig,
                   progress: Callable[[str, int | None], None] | None = None) -> RulesReport:
    def step(what: str, advance: int | None = None) -> None:
        if progress is not None:
            progress(what, advance)

    if not rules.rules:
        raise BacktestError("the draft rule set has no rules")
    (model,) = versions_of(registry, BacktestConfig(versions=cfg.versions[:1]))
    period, X, known = period_features(cfg, store, step)
    period = _with_payment_fields(period, store)
    y = known.notna().to_numpy()
    step(f"scoring with {model.version}")
    scorer = Scorer.from_version(model)
    scores = scorer.probabilities(X[model.feature_names].to_numpy())
    model_alerts = scores >= scorer.thresholds.review

    step("rules", None)
    policy = Policy(rules, 0)
    tests = [test for _, test, _ in policy.compiled]
    names = [r.id for r in rules.rules]
    hit = np.zeros((len(period), len(names)), dtype=bool)
    feature_rows: list[dict[str, Any]] = X[[n for n in FEATURE_NAMES if n in X.columns]
                                           ].to_dict("records")  # type: ignore[assignment]
    fields = {f: period[f].tolist() if f in period.columns else [None] * len(period)
              for f in PAYMENT_FIELDS}
    for i, row in enumerate(feature_rows):
        values: dict[str, Any] = {**row, SCORE: float(scores[i])}
        for f, column in fields.items():
            v = column[i]
            values[f"payment.{f}"] = None if v is None or v != v else v
        for j, test in enumerate(tests):
            hit[i, j] = test(values)
        if i % 5000 == 4999:
            step("rules", 5000)

    amount = period["amount"].to_numpy(dtype=float)
    per_rule = []
    for j, name in enumerate(names):
        h = hit[:, j]
        fraud, genuine, beyond = h & y, h & ~y, h & y & ~model_alerts
        per_rule.append({
            "rule": name, "action": rules.rules[j].action, "hits": int(h.sum()),
            "fraud_hits": int(fraud.sum()), "fraud_amount": float(amount[fraud].sum()),
            "genuine_hits": int(genuine.sum()), "genuine_amount": float(amount[genuine].sum()),
            "precision": float(fraud.sum() / h.sum()) if h.any() else float("nan"),
            "beyond_model": int(beyond.sum()), "beyond_model_amount": float(amount[beyond].sum()),
        })
    day = pd.to_datetime(period["ts"], unit="s", utc=True).dt.floor("D")
    hits = pd.DataFrame(hit, columns=names)
    both = hit.T.astype(np.int64) @ hit.astype(np.int64)
    report_hits = pd.concat([pd.DataFrame({
        "payment_id": period["payment_id"], "ts": period["ts"], "y": y.astype(int),
        "amount": amount, "score": scores,
        "model_decision": np.where(scores >= scorer.thresholds.decline, "decline",
                                   np.where(model_alerts, "review", "approve"))}), hits], axis=1)
    return RulesReport(
        period={"first": str(day.min().date()), "last": str(day.max().date()),
                "payments": len(period), "fraud": int(y.sum()),
                "fraud_amount": float(amount[y].sum()),
                "model_alerts": int(model_alerts.sum()),
                "source": str(cfg.file) if cfg.file else "history"},
        model=model.version, rules=pd.DataFrame(per_rule).set_index("rule"),
        daily=hits.groupby(day.to_numpy()).sum(), overlap=pd.DataFrame(both, index=names,
                                                                        columns=names),
        hits=report_hits)


def _with_payment_fields(period: pd.DataFrame, store: HistoryStore) -> pd.DataFrame:
    """The payment's own fields the rules may name, from the history where the period
    does not carry them already (a brought file does)."""
    wanted = [f for f in PAYMENT_FIELDS if f not in period.columns]
    if not wanted:
        return period
    extra = store.query(f"SELECT payment_id, {', '.join(wanted)} FROM payments "
                        "WHERE payment_id IN (SELECT unnest(?))", [list(period["payment_id"])])
    return period.merge(extra, on="payment_id", how="left")


def write_rules_report(report: RulesReport, out_dir: Path) -> None:
    """rules.csv, daily.csv, overlap.csv, hits.parquet and hits_per_day.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    report.rules.to_csv(out_dir / "rules.csv")
    report.daily.to_csv(out_dir / "daily.csv")
    report.overlap.to_csv(out_dir / "overlap.csv")
    report.hits.to_parquet(out_dir / "hits.parquet", index=False)
    fig, ax = plt.subplots(figsize=(8, 4))
    for name in report.daily.columns[:20]:
        ax.plot(report.daily.index, report.daily[name], marker="o", label=name)
    ax.set_ylabel("payments hit per day")
    ax.set_title(f"draft rules over {report.period['first']} .. {report.period['last']}")
    ax.legend(fontsize=7, ncol=2)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out_dir / "hits_per_day.png", dpi=110)
    plt.close(fig)
