"""Publishes events to Kafka. Scored payments go out without making the caller wait."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer

from api.metrics import PUBLISH_FAILURES
from model.events import encode, key_of
from model.schemas import Label, ScoredPayment

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, producer: AIOKafkaProducer, scored_topic: str, labels_topic: str) -> None:
        self.producer = producer
        self.scored_topic = scored_topic
        self.labels_topic = labels_topic

    async def publish_scored(self, event: ScoredPayment) -> None:
        """Hand the event to the producer's batch buffer and return; delivery is watched
        by a callback. ``send`` only waits when the buffer is full."""
        try:
            fut = await self.producer.send(self.scored_topic, encode(event), key=key_of(event))
        except Exception:
            PUBLISH_FAILURES.inc()
            log.exception("could not queue scored payment %s", event.payment.payment_id)
            return
        fut.add_done_callback(_on_delivery)

    async def publish_label(self, label: Label) -> None:
        """Labels are acknowledged to the caller only once Kafka has them."""
        await self.producer.send_and_wait(self.labels_topic, encode(label), key=key_of(label))


def _on_delivery(fut: asyncio.Future) -> None:  # type: ignore[type-arg]
    if fut.cancelled() or fut.exception() is not None:
        PUBLISH_FAILURES.inc()
        log.error("scored payment not delivered to Kafka: %r",
                  None if fut.cancelled() else fut.exception())
