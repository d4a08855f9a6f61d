"""The faust app: topics and agents.

- ``record_scored``: every scored payment -> the history (once), and the payment's terminal,
  card and time remembered so that its label, days later, can update the features.
- ``apply_labels``: every label -> the history, and the label-aware features in Redis.

Run with ``fraudstream stream`` (a faust worker). Events are processed in batches so the
history gets one Parquet file per batch rather than one per event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import faust
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from model.config import Settings, get_settings
from model.events import decode_label, decode_scored, encode
from model.history import HistoryStore, label_row, scored_row
from model.label_join import JoinState
from model.online_features import LabelUpdate, OnlineStore, PaymentRef
from model.schemas import Label, ScoredPayment

log = logging.getLogger(__name__)
T = TypeVar("T")


class StreamContext:
    """The stores the agents write to, built once per worker."""

    def __init__(self, settings: Settings) -> None:
        password = settings.redis_password.get_secret_value() if settings.redis_password else None
        redis = Redis.from_url(settings.redis_url, password=password)
        self.online = OnlineStore(redis)
        self.join = JoinState(redis)
        self.history = HistoryStore(settings.history_dir)

    async def apply_label(self, label: Label, ref: PaymentRef) -> None:
        await self.online.apply_label(
            LabelUpdate(label.payment_id, ref, label.is_fraud, label.reported_at.timestamp())
        )


async def until_done(step: Callable[..., Awaitable[None]], *args: Any) -> None:
    """Run one batch's step until it succeeds. Redis or the disk being away must not kill
    the agent: the batch is retried, with back-off, and acked only after it went through
    (faust's ``take()`` acks a batch when its body is done). Steps are idempotent by
    payment_id, so a partial first attempt changes nothing on the second."""
    delay = 0.1
    while True:
        try:
            await step(*args)
            return
        except (RedisError, OSError) as exc:
            log.warning("batch not processed (%s); retrying in %.1fs", type(exc).__name__,
                        delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def create_app(settings: Settings) -> tuple[faust.App, Any, Any]:
    app = faust.App(
        settings.stream_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        topic_replication_factor=1,
        topic_partitions=settings.kafka_partitions,
        web_host="127.0.0.1",
        web_port=settings.stream_web_port,
        broker_commit_every=settings.history_flush_rows,
        consumer_auto_offset_reset="earliest",
        # A worker that died without leaving the group is noticed after this, and its
        # partitions handed on: the bound on how long a crash delays the history.
        broker_session_timeout=12.0,
        broker_heartbeat_interval=3.0,
    )
    scored_topic = app.topic(settings.topic_scored, value_serializer="raw", key_serializer="raw")
    labels_topic = app.topic(settings.topic_labels, value_serializer="raw", key_serializer="raw")
    dead_letters = app.topic(settings.topic_dead_letters, value_serializer="raw",
                             key_serializer="raw")
    ctx = StreamContext(settings)

    async def decoded(batch: list[bytes], decode: Callable[[bytes], T], kind: str) -> list[T]:
        """Decode a batch; what does not parse goes to the dead-letter topic, not the store.

        Only the error's type and location are logged: a malformed payload may hold data
        that must never reach a log.
        """
        good: list[T] = []
        for raw in batch:
            try:
                good.append(decode(raw))
            except ValidationError as exc:
                where = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors()[:3])
                log.warning("%s event rejected (%d bytes; invalid: %s); sent to %s", kind,
                            len(raw), where or "not JSON", settings.topic_dead_letters)
                await dead_letters.send(value=raw, headers={"fraudstream-kind": kind.encode()})
        return good

    async def record(events: dict[str, ScoredPayment]) -> None:
        # Redelivered after a restart: already in the history, change nothing.
        done = await ctx.join.already_recorded(list(events))
        fresh = [e for pid, e in events.items() if pid not in done]
        await asyncio.to_thread(ctx.history.append_payments, map(scored_row, fresh))
        await ctx.join.mark_recorded([e.payment.payment_id for e in fresh])
        refs = [(e.payment.payment_id,
                 PaymentRef(e.payment.terminal_id, e.payment.card_id, e.payment.ts))
                for e in fresh]
        waiting = await ctx.join.remember_payments(refs)
        for (_, ref), labels in zip(refs, waiting, strict=True):
            for raw in labels:
                await ctx.apply_label(decode_label(raw), ref)

    async def apply(labels: list[Label], received: datetime) -> None:
        await asyncio.to_thread(ctx.history.append_labels,
                                [label_row(lb, received) for lb in labels])
        for label in labels:
            ref = await ctx.join.ref_or_queue(label.payment_id, encode(label))
            if ref is not None:
                await ctx.apply_label(label, ref)

    @app.agent(scored_topic)
    async def record_scored(stream: faust.StreamT) -> None:
        async for batch in stream.take(settings.history_flush_rows,
                                       within=settings.history_flush_seconds):
            events = {e.payment.payment_id: e
                      for e in await decoded(batch, decode_scored, "scored payment")}
            await until_done(record, events)

    @app.agent(labels_topic)
    async def apply_labels(stream: faust.StreamT) -> None:
        async for batch in stream.take(settings.history_flush_rows,
                                       within=settings.history_flush_seconds):
            labels = await decoded(batch, decode_label, "label")
            await until_done(apply, labels, datetime.now(UTC))

    @app.page("/ready/")
    async def ready(web: Any, request: Any) -> Any:
        assigned = app.consumer.assignment() if app.consumer else set()
        if not assigned:
            return web.json({"ready": False}, status=503)
        return web.json({"ready": True, "partitions": len(assigned)})

    return app, record_scored, apply_labels


app, record_scored, apply_labels = create_app(get_settings())
