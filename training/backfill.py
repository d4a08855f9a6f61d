"""Warm the online feature store from the history (after an import, or a lost Redis).

Without it, the first payments scored after a bootstrap would look like every card's and
terminal's first: features unlike the ones the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.features import CARD_HORIZON, TERMINAL_HORIZON
from model.history import HistoryStore
from model.online_store import OnlineStore
from training.dataset import latest_fraud_time, load


@dataclass(frozen=True)
class BackfillResult:
    payments: int
    fraud_labels: int
    since: float
    until: float


async def backfill_online(history: HistoryStore, online: OnlineStore) -> BackfillResult:
    payments, labels = load(history)
    if payments.empty:
        return BackfillResult(0, 0, 0.0, 0.0)
    until = float(payments["ts"].max())
    since = until - max(CARD_HORIZON, TERMINAL_HORIZON)
    fraud_at = latest_fraud_time(payments, labels)
    recent = payments[payments["ts"] > since]
    fraud = payments.assign(at=fraud_at)
    fraud = fraud[fraud["at"].notna() & (fraud["at"] > since)]
    n = await online.backfill(
        zip(recent["payment_id"], recent["ts"].astype(float), recent["card_id"],
            recent["terminal_id"], recent["amount"].astype(float), strict=True),
        zip(fraud["terminal_id"], fraud["payment_id"], fraud["at"].astype(float), strict=True),
    )
    return BackfillResult(n, int(np.asarray(len(fraud))), since, until)
