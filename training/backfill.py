"""Warm the online feature store from the history (after an import, or a lost Redis), and
open again the review cases a lost Redis took with it.

Without it, the first payments scored after a bootstrap would look like every card's and
terminal's first: features unlike the ones the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import pandas as pd

from model.catalogue_file import installation_catalogue
from model.config import Settings
from model.features import (
    CARD_FRAUD_WINDOW,
    CARD_HORIZON,
    DAY,
    FRESH_FRAUD_WINDOW,
    TERMINAL_HORIZON,
)
from model.labels import fraud_known_since, fraud_spells
from stores import redis_client
from stores.catalogue_store import LATE_MARGIN, CatalogueStore
from stores.history import HistoryStore
from stores.label_join import JOIN_HORIZON, JoinState
from stores.online_features import OnlineStore, PaymentRef
from stores.reviews import ReviewQueue
from training.dataset import load

# How far back a lost review queue is rebuilt from the history.
REVIEW_RESTORE_DAYS = 30.0
BACKFILL_BATCH = 500  # payments per write when warming the catalogue's state


@dataclass(frozen=True)
class BackfillResult:
    payments: int
    fraud_labels: int
    since: float
    until: float
    review_cases: int = 0
    catalogue_payments: int = 0  # payments the catalogue's state was warmed with


def _text(column: pd.Series) -> list[str | None]:
    return [v if isinstance(v, str) else None for v in column]


async def backfill_online(history: HistoryStore, online: OnlineStore,
                          join: JoinState | None = None,
                          reviews: ReviewQueue | None = None) -> BackfillResult:
    """The recent payments and the fraud now known on them, as if scored live; with
    ``join``, also the refs that let labels still to come find their payment; with
    ``reviews``, the review cases still open (``restore_review_queue``)."""
    payments, labels = load(history, details=online.catalogue is not None)
    if payments.empty:
        return BackfillResult(0, 0, 0.0, 0.0)
    until = float(payments["ts"].max())
    since = until - max(CARD_HORIZON, TERMINAL_HORIZON)
    now = float(max(until, labels["reported_at"].max() if len(labels) else until))
    known = fraud_known_since(payments["payment_id"], fraud_spells(labels), now)
    recent = payments[payments["ts"] > since]
    fraud = payments.assign(known=known)
    # A payment older than every window still counts in the card's and the terminal's
    # "fraud known lately" while its fraud is recent news (a chargeback after 40 days).
    lately = until - max(CARD_FRAUD_WINDOW, FRESH_FRAUD_WINDOW)
    fraud = fraud[fraud["known"].notna() & ((fraud["ts"] > since) | (fraud["known"] > lately))]
    n = await online.backfill(
        zip(recent["payment_id"], recent["ts"].astype(float), recent["card_id"],
            recent["terminal_id"], recent["amount"].astype(float),
            _text(recent["country"]), _text(recent["merchant_category"]), strict=True),
        zip(fraud["payment_id"], fraud["ts"].astype(float), fraud["card_id"],
            fraud["terminal_id"], fraud["known"].astype(float), strict=True),
    )
    if join is not None:
        # Labels still to come, for payments as old as the stream keeps joining them.
        joinable = payments[payments["ts"] > until - JOIN_HORIZON]
        await join.remember_refs([
            (pid, PaymentRef(term, card, float(ts))) for pid, term, card, ts in zip(
                joinable["payment_id"], joinable["terminal_id"], joinable["card_id"],
                joinable["ts"], strict=True)])
    cases = await restore_review_queue(history, reviews, until) if reviews is not None else 0
    catalogued = await _backfill_catalogue(online.catalogue, payments, until) \
        if online.catalogue is not None else 0
    return BackfillResult(n, len(fraud), since, until, cases, catalogued)


async def _backfill_catalogue(catalogue: CatalogueStore, payments: pd.DataFrame,
                              until: float) -> int:
    """The catalogue's state from the payments of its retention, in arrival order. Safe
    while the API scores: recording a payment twice changes none of its state (counts are
    per payment_id, kept keys keep their latest time)."""
    recent = payments[payments["ts"] > until - catalogue.catalogue.retention - LATE_MARGIN]
    rows = cast(list[dict[str, Any]], recent.to_dict("records"))
    for start in range(0, len(rows), BACKFILL_BATCH):
        await catalogue.observe_many(rows[start:start + BACKFILL_BATCH])
    return len(rows)


async def restore_review_queue(history: HistoryStore, reviews: ReviewQueue, until: float,
                               days: float = REVIEW_RESTORE_DAYS) -> int:
    """Open a case again for each payment of the last ``days`` the history says was
    decided ``review`` and has no label yet (a label is a verdict, or answers the case):
    the queue lives in Redis, and a lost Redis must not lose the analysts' work list. A
    case Redis still holds is left as it is. Returns the cases opened."""
    rows = history.query(
        "SELECT payment_id, ts, card_id, terminal_id, amount, currency, score, "
        "model_version, degraded, reasons FROM payments p WHERE decision = 'review' "
        "AND ts > to_timestamp(?) AND NOT EXISTS "
        "(SELECT 1 FROM labels l WHERE l.payment_id = p.payment_id)",
        [until - days * DAY])
    if rows.empty:
        return 0
    records = [{**r, "reasons": [] if r["reasons"] is None else list(r["reasons"]),
                "score": None if pd.isna(r["score"]) else r["score"]}
               for r in cast(list[dict[str, Any]], rows.to_dict("records"))]  # str columns
    return await reviews.enqueue(records)


async def backfill_if_empty(history: HistoryStore, online: OnlineStore,
                            join: JoinState | None = None,
                            reviews: ReviewQueue | None = None) -> BackfillResult | None:
    """Warm a store that knows no card (a new, flushed or newly clustered Redis) from the
    history; leave a store in use alone. ``None`` when nothing was done."""
    if await online.holds_cards():
        return None
    return await backfill_online(history, online, join, reviews)


async def warm_online(settings: Settings, if_empty: bool = False) -> BackfillResult | None:
    """``backfill_online`` (or, with ``if_empty``, ``backfill_if_empty``) of the Redis and
    the history the settings name, on a client of its own. Raises ``OSError`` when Redis
    does not answer."""
    redis = redis_client.connect(settings)
    catalogue = installation_catalogue(settings.features_file, settings.features_cost_budget) \
        if settings.features_online else None
    try:
        warm = backfill_if_empty if if_empty else backfill_online
        online = OnlineStore(redis, CatalogueStore(redis, catalogue) if catalogue else None)
        return await warm(HistoryStore(settings.history_dir), online, JoinState(redis),
                          ReviewQueue(redis))
    finally:
        await redis.aclose()
