"""Warm the online feature store from the history (after an import, or a lost Redis).

Without it, the first payments scored after a bootstrap would look like every card's and
terminal's first: features unlike the ones the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.features import CARD_HORIZON, TERMINAL_HORIZON
from model.history import HistoryStore
from model.label_join import JoinState
from model.labels import fraud_known_since, fraud_spells
from model.online_features import OnlineStore, PaymentRef
from training.dataset import load


@dataclass(frozen=True)
class BackfillResult:
    payments: int
    fraud_labels: int
    since: float
    until: float


async def backfill_online(history: HistoryStore, online: OnlineStore,
                          join: JoinState | None = None) -> BackfillResult:
    """The recent payments and the fraud now known on them, as if scored live; with
    ``join``, also the refs that let labels still to come find their payment."""
    payments, labels = load(history)
    if payments.empty:
        return BackfillResult(0, 0, 0.0, 0.0)
    until = float(payments["ts"].max())
    since = until - max(CARD_HORIZON, TERMINAL_HORIZON)
    now = float(max(until, labels["reported_at"].max() if len(labels) else until))
    known = fraud_known_since(payments["payment_id"], fraud_spells(labels), now)
    recent = payments[payments["ts"] > since]
    fraud = payments.assign(known=known)
    fraud = fraud[fraud["known"].notna() & (fraud["ts"] > since)]
    n = await online.backfill(
        zip(recent["payment_id"], recent["ts"].astype(float), recent["card_id"],
            recent["terminal_id"], recent["amount"].astype(float), strict=True),
        zip(fraud["payment_id"], fraud["ts"].astype(float), fraud["card_id"],
            fraud["terminal_id"], fraud["known"].astype(float), strict=True),
    )
    if join is not None:
        await join.remember_refs([
            (pid, PaymentRef(term, card, float(ts))) for pid, term, card, ts in zip(
                recent["payment_id"], recent["terminal_id"], recent["card_id"], recent["ts"],
                strict=True)])
    return BackfillResult(n, len(fraud), since, until)
