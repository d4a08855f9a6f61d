"""Champion against challenger on live traffic: the payments the challenger scored in shadow
whose labels have matured, the same metrics and paired intervals as the offline gate.

Both scores were computed on the same feature vectors, the ones the champion answered
with, so the comparison is exactly "what if the challenger had answered".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from model.features import DAY
from model.registry import Registry
from stores.history import HistoryStore
from training.evaluate import EvalConfig, EvalSet, card_replicates, evaluate, paired_gain

PRIMARY_METRIC = "average_precision"


class CompareError(ValueError):
    pass


@dataclass
class ShadowComparison:
    challenger: str
    champions: list[str]  # the champion versions that answered those payments
    payments: int
    fraud: int
    first: str | None
    last: str | None
    matured_before: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # role -> metrics
    gain: dict[str, float] = field(default_factory=dict)  # challenger - champion, paired

    @property
    def significant(self) -> bool:
        return bool(self.gain.get("significant"))


def shadow_frame(store: HistoryStore, version: str, matured_before: float) -> pd.DataFrame:
    """The payments the challenger ``version`` scored, paid before ``matured_before``, with
    since when each is known as fraud (by ``matured_before``, NaN if not)."""
    return store.query(
        "SELECT p.payment_id, epoch_us(p.ts) / 1e6 AS ts, p.card_id, p.amount, p.score, "
        "p.shadow_score, p.model_version, epoch_us(s.known_since) / 1e6 AS known_since "
        "FROM payments p LEFT JOIN (SELECT payment_id, min(known_since) AS known_since "
        "  FROM fraud_spells WHERE known_since <= to_timestamp(?) "
        "  AND (until IS NULL OR until > to_timestamp(?)) GROUP BY payment_id) s "
        "USING (payment_id) "
        "WHERE p.shadow_version = ? AND p.score IS NOT NULL AND p.shadow_score IS NOT NULL "
        "AND p.ts < to_timestamp(?) ORDER BY p.ts",
        [matured_before, matured_before, version, matured_before])


def compare(store: HistoryStore, registry: Registry, now: float, maturity_days: float,
            cfg: EvalConfig = EvalConfig(), version: str | None = None) -> ShadowComparison:
    """Champion vs challenger (default: the one in shadow) on payments older than
    ``maturity_days`` at ``now``."""
    version = version or registry.challenger_version()
    if version is None:
        raise CompareError("no challenger in shadow: the retrain worker puts one there, or "
                           "`fraudstream model shadow VERSION`")
    matured_before = now - maturity_days * DAY
    frame = shadow_frame(store, version, matured_before)
    out = ShadowComparison(
        challenger=version, champions=sorted(frame["model_version"].dropna().unique()),
        payments=len(frame), fraud=int(frame["known_since"].notna().sum()),
        first=_iso(frame["ts"].min()) if len(frame) else None,
        last=_iso(frame["ts"].max()) if len(frame) else None,
        matured_before=_iso(matured_before))
    if out.fraud == 0 or out.fraud == out.payments:
        return out  # nothing to rank yet
    test = EvalSet(frame.assign(day=pd.to_datetime(frame["ts"], unit="s", utc=True)
                                .dt.floor("D")),
                   frame["known_since"].notna().to_numpy(dtype=int),
                   frame["known_since"].to_numpy(dtype=float))
    replicates = card_replicates(test, cfg)
    champion = frame["score"].to_numpy(dtype=float)
    challenger = frame["shadow_score"].to_numpy(dtype=float)
    out.metrics = {"champion": evaluate(test, champion, cfg, replicates),
                   "challenger": evaluate(test, challenger, cfg, replicates)}
    out.gain = paired_gain(test, challenger, champion, replicates, PRIMARY_METRIC)
    return out


def _iso(ts: float) -> str:
    return pd.Timestamp(float(ts), unit="s", tz="UTC").isoformat()


def significant_enough(comparison: ShadowComparison, min_fraud: int) -> bool:
    """Promote only on a significant gain measured on at least ``min_fraud`` frauds."""
    return comparison.fraud >= min_fraud and comparison.significant and \
        bool(np.isfinite(comparison.gain.get("gain", np.nan)))
