"""Publishes events to Kafka. Scored payments go out without making the caller wait, and
are never lost: each is in the write-ahead spool until Kafka acknowledges it, and what
Kafka did not take is sent again once it is back (see ``api.spool``).

Labels are accepted only once durable: acknowledged by Kafka or, while Kafka fails, synced
to disk in a spool of their own, sent once Kafka is back. A label reaching Kafka twice (a
send that timed out but went through, then the spool's copy) is recorded once by the
stream, and applying it is idempotent."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer

from api.background import raise_if_cancelled
from api.metrics import PUBLISH_FAILURES, SPOOLED
from api.spool import Segment, Spool
from model.events import encode, key_of
from model.schemas import Label, ScoredPayment

log = logging.getLogger(__name__)
# How long handing an event to the producer may take before it is left to the spool (the
# producer blocks when its buffer is full or it has no metadata, i.e. Kafka is failing).
ENQUEUE_TIMEOUT = 0.05
# How long a label waits for Kafka's acknowledgement before it is spooled instead.
LABEL_SEND_TIMEOUT = 2.0


class Publisher:
    def __init__(self, producer: AIOKafkaProducer, spool: Spool, scored_topic: str,
                 labels_topic: str, label_spool: Spool | None = None) -> None:
        self.producer = producer
        self.spool = spool
        self.label_spool = label_spool or Spool(spool.directory / "labels")
        self.scored_topic = scored_topic
        self.labels_topic = labels_topic
        # False after a delivery failure, until the spools drain: meanwhile new events
        # only go to the spool, behind the ones already there.
        self.kafka_ok = True
        self.labels_ok = True
        self.started = False
        self._producer_started = False

    async def start(self) -> None:
        if not self._producer_started:
            await self.producer.start()
            self._producer_started = True
        # Fetch the topic's metadata now, not on the first payment's clock.
        await self.producer.partitions_for(self.scored_topic)
        self.started = True

    async def publish_scored(self, event: ScoredPayment,
                             enqueue_timeout: float = ENQUEUE_TIMEOUT) -> None:
        key, value = key_of(event), encode(event)
        seg = self.spool.append(key, value)
        if not self.kafka_ok:
            self._failed(seg, None)
            return
        try:
            # ``timeout`` rather than ``wait_for``: no task per event (``send`` only
            # suspends when the producer's buffer is full or it has no metadata).
            async with asyncio.timeout(enqueue_timeout):
                fut = await self.producer.send(self.scored_topic, value, key=key)
        except Exception as exc:
            self._failed(seg, exc)
            return
        fut.add_done_callback(lambda f: self._delivered(f, seg))

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

    def _delivered(self, fut: asyncio.Future, seg: Segment) -> None:  # type: ignore[type-arg]
        if fut.cancelled() or fut.exception() is not None:
            self._failed(seg, None if fut.cancelled() else fut.exception())
        else:
            self.spool.ack(seg)

    def _failed(self, seg: Segment, exc: BaseException | None) -> None:
        if self.kafka_ok:
            log.error("Kafka did not take a scored payment (%s); spooling until it is back",
                      type(exc).__name__)
            self.kafka_ok = False
        PUBLISH_FAILURES.inc()
        SPOOLED.inc()
        self.spool.fail(seg)

    async def drain(self) -> int:
        """Send every undelivered segment of both spools, oldest first; returns events
        sent."""
        for spool in (self.spool, self.label_spool):
            if spool.holds_failed:
                spool.seal()
        if not self.started:  # Kafka was down when the API started
            await self.start()
        sent = 0
        for spool, topic in ((self.spool, self.scored_topic),
                             (self.label_spool, self.labels_topic)):
            for segment in spool.undelivered():
                entries = list(spool.read(segment))
                futures = [await self.producer.send(topic, v, key=k) for k, v in entries]
                await asyncio.gather(*futures)  # raises if Kafka still fails: segment kept
                spool.delete(segment)
                sent += len(entries)
        return sent

    async def keep_synced(self, every: float = 0.05) -> None:
        while True:
            await asyncio.sleep(every)
            if self.spool.needs_sync:
                await asyncio.to_thread(self.spool.sync)

    async def keep_draining(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            if self.kafka_ok and self.labels_ok and not any(
                    spool.holds_failed or spool.undelivered()
                    for spool in (self.spool, self.label_spool)):
                continue
            try:
                sent = await asyncio.wait_for(self.drain(), timeout=30)
            except Exception as exc:
                raise_if_cancelled(exc)
                log.warning("spool not drained yet: %s", type(exc).__name__)
                continue
            if sent:
                log.info("spools drained: %d events sent to Kafka", sent)
            self.kafka_ok = self.labels_ok = True
