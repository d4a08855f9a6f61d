"""Training data from the history: point-in-time features and labels known by a cut-off."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from model.history import HistoryStore
from model.point_in_time import compute_features


@dataclass(frozen=True)
class Dataset:
    payments: pd.DataFrame  # payment_id, ts (epoch s), day, card_id, terminal_id, amount
    features: pd.DataFrame  # one row per payment, FEATURE_NAMES columns
    y: np.ndarray  # 1 if a fraud label was known by the cut-off
    fraud_reported_at: pd.Series  # per payment: when fraud became known (NaN if never)
    cutoff: float


def load(store: HistoryStore, cutoff: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Payments and labels from the history, with times as epoch seconds."""
    payments = store.query(
        "SELECT payment_id, epoch_us(ts) / 1e6 AS ts, card_id, terminal_id, amount "
        "FROM payments ORDER BY ts, scored_at NULLS LAST, payment_id"
    )
    labels = store.query(
        "SELECT payment_id, is_fraud, epoch_us(reported_at) / 1e6 AS reported_at "
        "FROM labels ORDER BY reported_at"
    )
    if cutoff is not None:
        payments = payments[payments["ts"] <= cutoff]
        labels = labels[labels["reported_at"] <= cutoff]
    return payments.reset_index(drop=True), labels.reset_index(drop=True)


def latest_fraud_time(payments: pd.DataFrame, labels: pd.DataFrame) -> pd.Series:
    """When each payment's latest label said fraud (NaN: no label, or the latest says not)."""
    latest = labels.sort_values("reported_at", kind="stable").groupby("payment_id").tail(1)
    fraud = latest[latest["is_fraud"].astype(bool)].set_index("payment_id")["reported_at"]
    return payments["payment_id"].map(fraud)


def build(
    store: HistoryStore,
    cutoff: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> Dataset:
    payments, labels = load(store, cutoff)
    if payments.empty:
        raise ValueError(f"the history at {store.root} holds no payments; import or record some")
    if cutoff is None:
        cutoff = float(max(payments["ts"].max(), labels["reported_at"].max()
                           if len(labels) else 0.0))
    features = compute_features(payments, labels, progress=progress)
    fraud_at = latest_fraud_time(payments, labels)
    payments = payments.assign(
        day=pd.to_datetime(payments["ts"], unit="s", utc=True).dt.floor("D")
    )
    return Dataset(payments, features, fraud_at.notna().to_numpy(dtype=int), fraud_at, cutoff)
