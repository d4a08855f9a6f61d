"""The faust app: topics and agents.

- ``record_scored``: every scored payment -> the history (once), and the payment's terminal,
  card and time remembered so that its label, days later, can update the features.
- ``apply_labels``: every label -> the history (once), and the label-aware features in
  Redis.
- ``copy_audits``: on the group's leader, the audit trails' new entries -> the history
  (``stores.audit_archive``).

Run with ``fraudstream stream`` (a faust worker). Events are processed in batches so the
history gets one Parquet file per batch rather than one per event; what a batch does, and
why repeating it is safe, is ``stream.recording``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import faust
import orjson
from pydantic import ValidationError

from model.config import Settings, get_settings
from model.schemas import Label
from stores import redis_client
from stores.audit_archive import AuditArchive
from stores.events import decode_label, decode_scored, encode
from stream import consumer
from stream.recording import Recorder, latest_scorings

log = logging.getLogger(__name__)
T = TypeVar("T")


async def until_done(step: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """Run one batch's step until it succeeds. Redis or the disk being away must not kill
    the agent: the batch is retried, with back-off, and acked only after it went through
    (faust's ``take()`` acks a batch when its body is done). A step is safe to repeat from
    wherever it stopped (``stream.recording``)."""
    delay = 0.1
    while True:
        try:
            await step(*args)
            return
        # (a cluster's client raises RedisClusterException when no node answers)
        except redis_client.UNAVAILABLE as exc:
            log.warning("batch not processed (%s); retrying in %.1fs", type(exc).__name__,
                        delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class App(faust.App):
    """faust's app on ``stream.consumer``'s transport: its consumer rewinds a partition
    without a committed offset when faust seeks to the committed offsets, so records faust
    dropped during a rebalance are fetched again (see there)."""

    def _new_transport(self) -> Any:
        return consumer.Transport(self.conf.broker_consumer, self)


def create_app(settings: Settings) -> tuple[faust.App, Any, Any]:
    app = App(
        settings.stream_id,
        broker=[f"kafka://{address}" for address in settings.kafka_brokers],
        value_serializer="raw",
        key_serializer="raw",
        topic_replication_factor=settings.kafka_replication[0],
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

    async def unjoined(labels: list[Label]) -> None:
        # In the history already; kept here to be sent again once their payments exist.
        log.warning("%d labels for unknown payments not queued: %d payments have labels "
                    "waiting (FRAUDSTREAM_MAX_WAITING_LABEL_PAYMENTS); sent to %s",
                    len(labels), settings.max_waiting_label_payments,
                    settings.topic_dead_letters)
        for label in labels:
            await dead_letters.send(value=encode(label),
                                    headers={"fraudstream-kind": b"label-unjoined"})

    recorder = Recorder(settings, on_unjoined=unjoined)

    async def decoded(batch: list[bytes], decode: Callable[[bytes], list[T]],
                      kind: str) -> list[T]:
        """Decode a batch of messages; what does not parse goes to the dead-letter topic,
        not the store: in a message holding several events (a JSON array), only the events
        that do not parse.

        Only the error's type and location are logged: a malformed payload may hold data
        that must never reach a log.
        """
        good: list[T] = []
        for raw in batch:
            try:
                good += decode(raw)
            except ValidationError as exc:
                try:
                    items = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    items = None
                if not isinstance(items, list):
                    await reject(raw, exc, kind)
                    continue
                for item in items:  # the batch one by one: the good ones still count
                    one = orjson.dumps(item)
                    try:
                        good += decode(one)
                    except ValidationError as item_exc:
                        await reject(one, item_exc, kind)
        return good

    async def reject(raw: bytes, exc: ValidationError, kind: str) -> None:
        where = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors()[:3])
        log.warning("%s event rejected (%d bytes; invalid: %s); sent to %s", kind,
                    len(raw), where or "not JSON", settings.topic_dead_letters)
        await dead_letters.send(value=raw, headers={"fraudstream-kind": kind.encode()})

    @app.agent(scored_topic)
    async def record_scored(stream: faust.StreamT) -> None:
        async for batch in stream.take(settings.history_flush_rows,
                                       within=settings.history_flush_seconds):
            events = latest_scorings(await decoded(batch, decode_scored, "scored payment"))
            await until_done(recorder.record, events)

    @app.agent(labels_topic)
    async def apply_labels(stream: faust.StreamT) -> None:
        async for batch in stream.take(settings.history_flush_rows,
                                       within=settings.history_flush_seconds):
            labels = await decoded(batch, lambda raw: [decode_label(raw)], "label")
            await until_done(recorder.apply, labels, datetime.now(UTC))

    archive = AuditArchive(recorder.redis, recorder.history)

    @app.timer(settings.audit_copy_seconds, on_leader=True)
    async def copy_audits() -> None:
        # Redis or the disk away: the next tick copies from where the history ends.
        try:
            copied = await archive.copy()
        except redis_client.UNAVAILABLE as exc:
            log.warning("audit trails not copied (%s); next try in %.0fs",
                        type(exc).__name__, settings.audit_copy_seconds)
            return
        if copied:
            log.info("copied %d audit entries into the history", copied)

    @app.page("/ready/")
    async def ready(web: Any, request: Any) -> Any:
        assigned = app.consumer.assignment() if app.consumer else set()
        if not assigned:
            return web.json({"ready": False}, status=503)
        return web.json({"ready": True, "partitions": len(assigned)})

    return app, record_scored, apply_labels


app, record_scored, apply_labels = create_app(get_settings())
