"""What the stream does with a batch of scored payments or labels: the history, the label
join and the label-aware features.

A batch is retried until it went through, and redelivered after a crash, so every step is
safe to repeat from wherever it stopped:

1. rows the history does not hold yet are *promised* to a new part file (in Redis), then
   the file is written. A promise whose file is on disk means "recorded", one whose file
   is not means a crash came between the two, and the rows are written again. The raw
   history holds each label once, and each scoring of a payment once. A payment is
   normally scored once; a second scoring happens only when an API process died with the
   payment in hand and the gateway's retry was scored anew (its first answer was never
   kept, ``stores.idempotency``). The gateway acted on the answer its retries ended on,
   the last, so a later scoring is recorded too, and the history's ``payments`` view
   keeps the last; an earlier or equal one (a redelivery) is not written again.
2. a payment decided ``review`` becomes a case in the analysts' queue (created once, never
   reopened: ``stores.reviews``), and what the stream has applied is noted for the
   freshness of answers (``stores.freshness``).
3. a payment's ref is set and the labels waiting for it are read, applied, and only then
   dropped from their queue. Applying a label is idempotent and does not depend on the
   order labels arrive in (``stores.online_features``), so applying one twice, or a
   chargeback after the analyst's later verdict, ends in the state the history says. A
   label from elsewhere closes its payment's open review case.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from model.config import Settings
from model.registry import Registry
from model.schemas import Label, ScoredPayment
from stores import redis_client
from stores.events import decode_label, encode
from stores.freshness import FreshnessBoard
from stores.history import HistoryStore, label_row, new_part_name, scored_row
from stores.label_join import NOT_QUEUED, JoinState
from stores.online_features import LabelUpdate, OnlineStore, PaymentRef
from stores.reviews import ReviewQueue
from stream.shadow import ShadowScorer

# What stream workers of the first layout wrote as the promise of a recorded payment.
_RECORDED_V1 = "1"


def label_record_id(label: Label) -> str:
    """A label's identity in the history ('|' never occurs in a payment_id)."""
    text = f"{label.payment_id}|{label.is_fraud}|{label.source}|{label.reported_at.isoformat()}"
    return "lbl|" + hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def latest_scorings(events: Iterable[ScoredPayment]) -> dict[str, ScoredPayment]:
    """Each payment's last scoring among ``events``, by payment_id (see the module's 1.)."""
    latest: dict[str, ScoredPayment] = {}
    for event in events:
        pid = event.payment.payment_id
        seen = latest.get(pid)
        if seen is None or event.scored_at > seen.scored_at:
            latest[pid] = event
    return latest


def _scoring_time(row: Mapping[str, Any]) -> int:
    """A payment row's scoring, as the promise records it (whole microseconds)."""
    return round(row["scored_at"].timestamp() * 1_000_000)


class Recorder:
    """The stores the agents write to, built once per worker, and what a batch does."""

    def __init__(self, settings: Settings,
                 on_unjoined: Callable[[list[Label]], Awaitable[None]] | None = None) -> None:
        self.max_waiting = settings.max_waiting_label_payments
        self.on_unjoined = on_unjoined
        self.redis = redis_client.connect(settings)
        self.online = OnlineStore(self.redis)
        self.join = JoinState(self.redis)
        self.history = HistoryStore(settings.history_dir)
        self.reviews = ReviewQueue(self.redis)
        self.freshness = FreshnessBoard(self.redis)
        self.shadow = ShadowScorer(Registry(settings.models_dir), settings.model_poll_seconds)

    async def record(self, events: Mapping[str, ScoredPayment]) -> int:
        """Scored payments by payment_id: into the history once, their refs remembered, the
        labels that waited for them applied. Returns the rows written to the history."""
        if not events:
            return 0
        rows = {pid: scored_row(e) for pid, e in events.items()}
        await self.shadow.annotate(rows)
        written = await self._write_once(rows, self.history.holds_payment,
                                         self.history.append_payments, _scoring_time)
        await self.reviews.enqueue(r for r in rows.values() if r["decision"] == "review")
        refs = [(pid, PaymentRef(e.payment.terminal_id, e.payment.card_id, e.payment.ts))
                for pid, e in events.items()]
        waiting = await self.join.remember_payments(refs)
        await self._apply([(decode_label(raw), ref)
                           for (_, ref), labels in zip(refs, waiting, strict=True)
                           for raw in labels])
        await self.join.forget_waiting(
            [pid for (pid, _), labels in zip(refs, waiting, strict=True) if labels])
        await self.freshness.note_recorded(
            max(e.scored_at.timestamp() for e in events.values()),
            max(e.payment.ts for e in events.values()))
        return written

    async def apply(self, labels: list[Label], received: datetime) -> int:
        """Labels: into the history once, and applied to the features now or, when their
        payment has not reached the stream yet, queued for it. Returns the rows written.

        When ``max_waiting_label_payments`` payments have labels waiting already, a label
        for yet another unknown payment is not queued: it is in the history (training and
        backtests see it) and handed to ``on_unjoined`` (the dead-letter topic), but the
        online features will not count it if its payment comes after all."""
        rows = {label_record_id(lb): label_row(lb, received) for lb in labels}
        written = await self._write_once(rows, self.history.holds_label,
                                         self.history.append_labels)
        refs = await self.join.refs_or_queue([(lb.payment_id, encode(lb)) for lb in labels],
                                             self.max_waiting, received.timestamp())
        await self._apply([(lb, ref) for lb, ref in zip(labels, refs, strict=True)
                           if isinstance(ref, PaymentRef)])
        unjoined = [lb for lb, ref in zip(labels, refs, strict=True) if ref == NOT_QUEUED]
        if unjoined and self.on_unjoined is not None:
            await self.on_unjoined(unjoined)
        return written

    async def close(self) -> None:
        await self.redis.aclose()

    async def _apply(self, labels: list[tuple[Label, PaymentRef]]) -> None:
        await self.online.apply_labels([
            LabelUpdate(label.payment_id, ref, label.is_fraud, label.reported_at.timestamp())
            for label, ref in labels])
        # after its payment is recorded, so its case (if any) exists
        await self.reviews.close_by_labels(label for label, _ in labels)
        await self.freshness.note_labels((ref.ts, label.reported_at.timestamp())
                                         for label, ref in labels)

    async def _write_once(self, rows: dict[str, dict[str, Any]],
                          holds: Callable[[Mapping[str, Any], str], bool],
                          append: Callable[..., int],
                          version: Callable[[Mapping[str, Any]], int] | None = None) -> int:
        """``version``: for payments, the scoring's time; a row later than the promised
        one is a new scoring and written, not a redelivery."""
        promised = await self.join.promised_parts(list(rows))

        def fresh(rid: str, row: Mapping[str, Any]) -> bool:
            if rid not in promised:
                return True
            part, _, at = promised[rid].partition("|")
            if part != _RECORDED_V1 and not holds(row, part):
                return True  # a crash came between the promise and the file
            return version is not None and at != "" and version(row) > int(at)

        fresh_ids = [rid for rid, row in rows.items() if fresh(rid, row)]
        if fresh_ids:
            part = new_part_name()
            await self.join.promise({
                rid: part if version is None else f"{part}|{version(rows[rid])}"
                for rid in fresh_ids})
            await asyncio.to_thread(append, [rows[rid] for rid in fresh_ids], part)
        return len(fresh_ids)
