"""Publishes events to Kafka. Scored payments go out without making the caller wait, and
are never lost: what Kafka does not acknowledge goes to the local spool and is sent again
once Kafka is back."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer

from api.metrics import PUBLISH_FAILURES, SPOOLED
from api.spool import Spool
from model.events import encode, key_of
from model.schemas import Label, ScoredPayment

log = logging.getLogger(__name__)
# How long handing an event to the producer may take before it is spooled instead (the
# producer blocks when its buffer is full or it has no metadata, i.e. Kafka is failing).
ENQUEUE_TIMEOUT = 0.05


class Publisher:
    def __init__(self, producer: AIOKafkaProducer, spool: Spool, scored_topic: str,
                 labels_topic: str) -> None:
        self.producer = producer
        self.spool = spool
        self.scored_topic = scored_topic
        self.labels_topic = labels_topic
        # False after a delivery failure, until the spool drains: meanwhile new events go
        # straight to the spool, keeping their order behind the ones already there.
        self.kafka_ok = True
        self.started = False

    async def start(self) -> None:
        await self.producer.start()
        # Fetch the topic's metadata now, not on the first payment's clock.
        await self.producer.partitions_for(self.scored_topic)
        self.started = True

    async def publish_scored(self, event: ScoredPayment,
                             enqueue_timeout: float = ENQUEUE_TIMEOUT) -> None:
        key, value = key_of(event), encode(event)
        if not self.kafka_ok:
            self._spool(key, value)
            return
        try:
            fut = await asyncio.wait_for(
                self.producer.send(self.scored_topic, value, key=key), enqueue_timeout)
        except Exception as exc:
            self._failed(key, value, exc)
            return
        fut.add_done_callback(lambda f: self._delivered(f, key, value))

    async def publish_label(self, label: Label) -> None:
        """Labels are acknowledged to the caller only once Kafka has them."""
        await self.producer.send_and_wait(self.labels_topic, encode(label), key=key_of(label))

    def _delivered(self, fut: asyncio.Future, key: bytes, value: bytes) -> None:  # type: ignore[type-arg]
        if fut.cancelled():
            self._failed(key, value, asyncio.CancelledError())
        elif fut.exception() is not None:
            self._failed(key, value, fut.exception())

    def _failed(self, key: bytes, value: bytes, exc: BaseException | None) -> None:
        if self.kafka_ok:
            log.error("Kafka did not take a scored payment (%s); spooling until it is back",
                      type(exc).__name__)
        self.kafka_ok = False
        PUBLISH_FAILURES.inc()
        self._spool(key, value)

    def _spool(self, key: bytes, value: bytes) -> None:
        self.spool.append(key, value)
        SPOOLED.inc()

    async def drain(self) -> int:
        """Send every sealed spool segment, oldest first; returns events sent."""
        self.spool.seal()
        if not self.started:  # Kafka was down when the API started
            await self.start()
        sent = 0
        for segment in self.spool.sealed_segments():
            entries = list(self.spool.read(segment))
            futures = [await self.producer.send(self.scored_topic, v, key=k) for k, v in entries]
            await asyncio.gather(*futures)  # raises if Kafka still fails: segment kept
            segment.unlink()
            sent += len(entries)
        return sent

    async def keep_synced(self, every: float = 0.01) -> None:
        while True:
            await asyncio.sleep(every)
            if self.spool._dirty:
                await asyncio.to_thread(self.spool.sync)

    async def keep_draining(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            if self.kafka_ok and self.spool.is_empty():
                continue
            try:
                sent = await asyncio.wait_for(self.drain(), timeout=30)
            except Exception as exc:
                log.warning("spool not drained yet: %s", type(exc).__name__)
                continue
            if sent:
                log.info("spool drained: %d scored payments sent to Kafka", sent)
            self.kafka_ok = True
