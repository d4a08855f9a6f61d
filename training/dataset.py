"""Training data from the history: point-in-time features and labels known by a cut-off."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from model.labels import fraud_known_since, fraud_spells
from model.point_in_time import compute_features
from model.schemas import PAYMENT_DETAILS
from stores.history import HistoryStore


@dataclass(frozen=True)
class Dataset:
    payments: pd.DataFrame  # payment_id, ts (epoch s), day, card_id, terminal_id, amount
    features: pd.DataFrame  # one row per payment, FEATURE_NAMES columns
    y: np.ndarray  # 1 if the payment is fraud by the labels known at the cut-off
    fraud_reported_at: pd.Series  # per payment: since when it is known fraud (NaN if not)
    cutoff: float


def load(store: HistoryStore, cutoff: float | None = None,
         details: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Payments, in the order they reached the online store, and labels, with times as
    epoch seconds. An imported payment arrived at its own timestamp, a scored one when it
    was scored. ``details``: the card-not-present fields too (``PAYMENT_DETAILS``), for
    the catalogue's features."""
    extra = "".join(f", {name}" for name in PAYMENT_DETAILS) if details else ""
    payments = store.query(
        "SELECT payment_id, epoch_us(ts) / 1e6 AS ts, card_id, terminal_id, amount, country, "
        f"merchant_category{extra} FROM payments ORDER BY coalesce(scored_at, ts), ts, "
        "payment_id"
    )
    labels = store.query(
        "SELECT payment_id, is_fraud, epoch_us(reported_at) / 1e6 AS reported_at "
        "FROM labels ORDER BY reported_at"
    )
    if cutoff is not None:
        payments = payments[payments["ts"] <= cutoff]
        labels = labels[labels["reported_at"] <= cutoff]
    return payments.reset_index(drop=True), labels.reset_index(drop=True)


def newest_event(payments: pd.DataFrame, labels: pd.DataFrame) -> float:
    """The latest thing the history knows of: a payment or a label report."""
    newest = float(payments["ts"].max()) if len(payments) else 0.0
    return max(newest, float(labels["reported_at"].max()) if len(labels) else 0.0)


def assemble(payments: pd.DataFrame, labels: pd.DataFrame, cutoff: float,
             progress: Callable[[int], None] | None = None) -> Dataset:
    """Features and labels of ``payments`` as known at ``cutoff``."""
    features = compute_features(payments, labels, progress=progress)
    known = fraud_known_since(payments["payment_id"], fraud_spells(labels), cutoff)
    payments = payments.assign(
        day=pd.to_datetime(payments["ts"], unit="s", utc=True).dt.floor("D")
    )
    return Dataset(payments, features, known.notna().to_numpy(dtype=int), known, cutoff)


def build(
    store: HistoryStore,
    cutoff: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> Dataset:
    payments, labels = load(store, cutoff)
    if payments.empty:
        raise ValueError(f"the history at {store.root} holds no payments; import or record some")
    return assemble(payments, labels, newest_event(payments, labels) if cutoff is None
                    else cutoff, progress)
