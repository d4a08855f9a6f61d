"""Publishes events to Kafka. Scored payments go out without making the caller wait, and
are never lost: each is in the write-ahead spool until Kafka acknowledges it, and what
Kafka did not take is sent again once it is back (see ``api.spool``).

Scored payments are gathered per partition, up to ``BATCH_EVENTS`` or ``BATCH_LINGER``
seconds, and sent as one message (``stores.events``): the producer, the brokers and the
stream worker's consumer each pay per message, and that cost was most of what carrying a
payment cost. The spool still holds one line per payment, acknowledged with its batch.

Labels are accepted only once durable: acknowledged by Kafka or, while Kafka fails, synced
to disk in a spool of their own, sent once Kafka is back. A label reaching Kafka twice (a
send that timed out but went through, then the spool's copy) is recorded once by the
stream, and applying it is idempotent.

When the spool refuses a write (its cap, a full disk), a scored payment goes to Kafka
without its disk copy; if Kafka is failing too, it is held in memory (up to
``memory_events``) and sent once Kafka is back; past that, ``NotRecorded``: the API
refuses to answer (503) rather than give a decision nothing records. ``/healthz`` says
all of it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaProducer

from api.metrics import EVENTS_LOST, HELD_IN_MEMORY, PUBLISH_FAILURES, SPOOLED
from api.spool import Segment, Spool, SpoolFull
from model.periodic import every
from model.schemas import Label, ScoredPayment
from stores.events import encode, encode_batch, key_of, partition_of

log = logging.getLogger(__name__)
# How long handing an event to the producer may take before it is left to the spool (the
# producer blocks when its buffer is full or it has no metadata, i.e. Kafka is failing).
ENQUEUE_TIMEOUT = 0.05
# How long a label waits for Kafka's acknowledgement before it is spooled instead.
LABEL_SEND_TIMEOUT = 2.0
# A batch of scored payments goes out when it holds this many, or this long after its
# first: as long as the producer lingers anyway; nothing waits on it on the answer's path.
BATCH_EVENTS = 64
BATCH_LINGER = 0.05


class NotRecorded(Exception):
    """Kafka failing, the spool refusing and the memory's room spent: nothing keeps this
    payment, so it must not be answered as if it were kept."""


# (key, value, its spool segment or None when the spool refused it)
Item = tuple[bytes, bytes, Segment | None]


class Publisher:
    def __init__(self, producer: AIOKafkaProducer, spool: Spool, scored_topic: str,
                 labels_topic: str, label_spool: Spool | None = None,
                 enqueue_timeout: float = ENQUEUE_TIMEOUT,
                 memory_events: int = 50_000) -> None:
        self.producer = producer
        self.enqueue_timeout = enqueue_timeout  # for batches no payment's deadline bounds
        self.spool = spool
        self.label_spool = label_spool or Spool(spool.directory / "labels",
                                                max_bytes=spool.max_bytes)
        # scored payments neither Kafka nor the spool took, to send once Kafka is back
        self.memory_events = memory_events
        self.held: list[tuple[bytes, bytes]] = []
        self.scored_topic = scored_topic
        self.labels_topic = labels_topic
        # False after a delivery failure, until the spools drain: meanwhile new events
        # only go to the spool, behind the ones already there.
        self.kafka_ok = True
        self.labels_ok = True
        self.started = False
        self._producer_started = False
        self._partitions = 0  # of the scored topic, read at start
        # per partition: the encoded payments waiting, with their spool segments
        self._batches: dict[int, list[Item]] = {}
        self._linger: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if not self._producer_started:
            await self.producer.start()
            self._producer_started = True
        # Fetch the topic's metadata now, not on the first payment's clock.
        self._partitions = len(await self.producer.partitions_for(self.scored_topic))
        self.started = True

    async def publish_scored(self, event: ScoredPayment,
                             enqueue_timeout: float | None = None) -> bool:
        """Hand the payment on; True if it is in the spool, False if the spool refused it
        (it then goes to Kafka, or waits in memory). ``NotRecorded`` if nothing took it."""
        key, value = key_of(event), encode(event)
        try:
            seg: Segment | None = self.spool.append(key, value)
        except SpoolFull:
            seg = None
        if not self.kafka_ok or not self._partitions:
            if seg is None:
                self._hold(key, value, or_raise=True)
            else:
                self._failed((key, value, seg), None)
            return seg is not None
        partition = partition_of(key, self._partitions)
        batch = self._batches.get(partition)
        if batch is None:  # (not setdefault: a list built per payment for nothing)
            batch = self._batches[partition] = []
        batch.append((key, value, seg))
        if len(batch) >= BATCH_EVENTS:
            await self._send_batch(partition, enqueue_timeout or self.enqueue_timeout)
        elif self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(BATCH_LINGER,
                                                                 self._linger_over)
        return seg is not None

    def _linger_over(self) -> None:
        self._linger = None
        if self._batches:
            task = asyncio.ensure_future(self.send_batches())
            self._sending.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(self._sending.discard)

    async def send_batches(self, enqueue_timeout: float | None = None) -> None:
        """Hand every waiting batch to the producer now."""
        for partition in list(self._batches):
            await self._send_batch(partition, enqueue_timeout or self.enqueue_timeout)

    async def _send_batch(self, partition: int, enqueue_timeout: float) -> None:
        batch = self._batches.pop(partition, None)
        if batch is None:
            return
        try:
            # ``timeout`` rather than ``wait_for``: no task per batch (``send`` only
            # suspends when the producer's buffer is full or it has no metadata).
            async with asyncio.timeout(enqueue_timeout):
                fut = await self.producer.send(
                    self.scored_topic, encode_batch([value for _, value, _ in batch]),
                    partition=partition)
        except Exception as exc:
            for item in batch:
                self._failed(item, exc)
            return
        fut.add_done_callback(lambda f: self._delivered_all(f, batch))

    async def flush(self) -> None:
        """What is gathered, handed to the producer, and the producer's buffer sent."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        await self.send_batches()
        await self.producer.flush()

    async def publish_label(self, label: Label) -> bool:
        """Returns once the label is durable: True if Kafka has it, False if it is in the
        label spool (synced to disk), to be sent when Kafka is back."""
        key, value = key_of(label), encode(label)
        seg = self.label_spool.append(key, value)
        if self.labels_ok:
            try:
                async with asyncio.timeout(LABEL_SEND_TIMEOUT):
                    await self.producer.send_and_wait(self.labels_topic, value, key=key)
                self.label_spool.ack(seg)
                return True
            except Exception as exc:
                if self.labels_ok:  # once per outage, not once per label in flight
                    log.error("Kafka did not take a label (%s); spooling labels until it "
                              "is back", type(exc).__name__)
                self.labels_ok = False
        PUBLISH_FAILURES.inc()
        SPOOLED.inc()
        self.label_spool.fail(seg)
        await asyncio.to_thread(self.label_spool.sync)
        return False

    def _delivered_all(self, fut: asyncio.Future[Any], batch: list[Item]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            for item in batch:
                self._failed(item, None if fut.cancelled() else fut.exception())
        else:
            for _, _, seg in batch:
                if seg is not None:
                    self.spool.ack(seg)

    def _failed(self, item: Item, exc: BaseException | None) -> None:
        if self.kafka_ok:
            log.error("Kafka did not take a scored payment (%s); spooling until it is back",
                      type(exc).__name__)
            self.kafka_ok = False
        PUBLISH_FAILURES.inc()
        key, value, seg = item
        if seg is None:
            self._hold(key, value, or_raise=False)
            return
        SPOOLED.inc()
        self.spool.fail(seg)

    def _hold(self, key: bytes, value: bytes, or_raise: bool) -> None:
        """Keep in memory a payment the spool refused, until Kafka takes it."""
        if len(self.held) >= self.memory_events:
            if or_raise:
                raise NotRecorded(
                    f"Kafka unavailable, the spool refusing writes ({self.spool.refusing}) "
                    f"and {len(self.held)} payments already held in memory")
            # accepted before Kafka failed under it: the one case left where an answered
            # payment is lost, counted and logged so that it is not lost silently
            EVENTS_LOST.inc()
            log.error("scored payment %s lost: Kafka failed, the spool refused it and the "
                      "memory's room is spent", key.decode(errors="replace"))
            return
        self.held.append((key, value))
        HELD_IN_MEMORY.set(len(self.held))

    async def drain(self) -> int:
        """Send every undelivered segment of both spools, oldest first; returns events
        sent."""
        for spool in (self.spool, self.label_spool):
            if spool.holds_failed:
                spool.seal()
        if not self.started or not self._partitions:  # Kafka was down when the API started
            await self.start()
        sent = 0
        if self.held:
            held, self.held = self.held, []
            try:
                futures = [await self.producer.send(self.scored_topic, v, key=k)
                           for k, v in held]
                await asyncio.gather(*futures)
            except BaseException:
                self.held = held + self.held  # a repeat is recorded once by the stream
                raise
            finally:
                HELD_IN_MEMORY.set(len(self.held))
            sent += len(held)
        for spool, topic in ((self.spool, self.scored_topic),
                             (self.label_spool, self.labels_topic)):
            for segment in spool.undelivered():
                entries = list(spool.read(segment))
                futures = [await self.producer.send(topic, v, key=k) for k, v in entries]
                await asyncio.gather(*futures)  # raises if Kafka still fails: segment kept
                spool.delete(segment)
                sent += len(entries)
        return sent

    async def keep_synced(self, period: float = 0.05) -> None:
        async def sync() -> None:
            if self.spool.needs_sync:
                await asyncio.to_thread(self.spool.sync)

        await every(period, sync, failed="spool not synced", log=log)

    async def keep_draining(self, period: float = 1.0) -> None:
        await every(period, self._drain_if_needed, failed="spool not drained yet", log=log)

    async def _drain_if_needed(self) -> None:
        if self.kafka_ok and self.labels_ok and not self.held and not any(
                spool.holds_failed or spool.undelivered()
                for spool in (self.spool, self.label_spool)):
            return
        sent = await asyncio.wait_for(self.drain(), timeout=30)
        if sent:
            log.info("spools drained: %d events sent to Kafka", sent)
        self.kafka_ok = self.labels_ok = True
