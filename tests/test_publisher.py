"""The API's publisher on a real Kafka: scored payments travel in batches, each message on
the partition its payments' keys pick, so that one sent again alone (the spool's drain)
lands where its batch did; every payment acknowledged in the spool once its batch is."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from api.publisher import BATCH_EVENTS, Publisher
from api.spool import Spool
from model.config import Settings
from model.schemas import Payment, ScoredPayment
from stores.events import decode_scored, encode, encode_batch, key_of, partition_of
from tests.conftest import payment, uid

pytestmark = pytest.mark.integration
PARTITIONS = 3


def scored(n: int) -> list[ScoredPayment]:
    return [ScoredPayment(payment=Payment(**payment(payment_id=uid("pay"))),
                          features={"amount": 1.0}, score=0.1, decision="approve",
                          model_version="v", degraded=False,
                          scored_at="2026-11-20T10:00:00Z") for _ in range(n)]


async def messages(settings: Settings, topic: str, events: int) -> list:  # type: ignore[type-arg]
    """The topic's messages, read until they hold ``events`` scored payments (or 30 s)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        out: list = []  # type: ignore[type-arg]
        for _ in range(30):
            got = await consumer.getmany(timeout_ms=1000)
            out += [m for msgs in got.values() for m in msgs]
            if sum(len(decode_scored(m.value)) for m in out) >= events:
                break
        return out
    finally:
        await consumer.stop()


def test_scored_payments_travel_in_batches_on_their_partitions(stack, tmp_path: Path):
    topic = uid("scored")

    async def go() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, PARTITIONS,
                                            stack.kafka_replication[0])])
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
        # Until every broker knows the new topic, the producer waits for metadata, and the
        # publisher spools a batch instead (tested below): not what this test is for. An
        # empty batch per partition, once taken, says the topic is ready.
        warm = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
        await warm.start()
        for partition in range(PARTITIONS):
            await warm.send_and_wait(topic, encode_batch([]), partition=partition)
        await warm.stop()
        # Batching and partitions are what this test is for: a producer slow to take a
        # batch on a busy machine's three brokers (spooled after 50 ms in service) would
        # race it; spooling is the next test's.
        publisher = Publisher(producer, Spool(tmp_path / "spool"), topic,
                              stack.topic_labels, enqueue_timeout=10.0)
        await publisher.start()
        events = scored(400)
        for event in events[:300]:
            await publisher.publish_scored(event)
        await asyncio.sleep(0.05)  # past the linger: the partial batches go by themselves
        for event in events[300:]:
            await publisher.publish_scored(event)
        await publisher.flush()
        await asyncio.sleep(0.5)  # the acknowledgements' callbacks
        assert publisher.spool.pending_events() == 0
        # one payment sent again alone, as the drain does, keyed by its payment_id
        again = events[7]
        await producer.send_and_wait(topic, encode(again), key=key_of(again))
        await producer.stop()

        got = await messages(stack, topic, len(events) + 1)
        seen: dict[str, list[int]] = {}
        batches = 0
        for message in got:
            inside = decode_scored(message.value)
            batches += len(inside) > 1
            for event in inside:
                assert partition_of(key_of(event), PARTITIONS) == message.partition
                seen.setdefault(event.payment.payment_id, []).append(message.partition)
        assert set(seen) == {e.payment.payment_id for e in events}
        # far fewer messages than payments, none over the batch size
        assert len(got) <= PARTITIONS + 400 // BATCH_EVENTS + 3 * PARTITIONS + 1
        assert max(len(decode_scored(m.value)) for m in got) <= BATCH_EVENTS
        # the lone copy is on its batch's partition: one stream worker sees both
        assert len(set(seen[again.payment.payment_id])) == 1
        assert len(seen[again.payment.payment_id]) == 2

    asyncio.run(go())


def test_a_batch_kafka_does_not_take_stays_in_the_spool(stack, tmp_path: Path):
    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
        publisher = Publisher(producer, Spool(tmp_path / "spool"), stack.topic_scored,
                              stack.topic_labels)
        await publisher.start()
        await producer.stop()  # Kafka gone from the publisher's point of view
        for event in scored(5):
            await publisher.publish_scored(event)
        await publisher.send_batches()
        await asyncio.sleep(0.1)
        assert not publisher.kafka_ok
        assert publisher.spool.pending_events() == 5

    asyncio.run(go())


def test_a_spool_that_refuses_writes_sends_on_then_holds_in_memory_then_refuses(
        stack, tmp_path: Path):
    """The disk full (here: the spool at its cap): payments still go to Kafka, without
    their disk copy; with Kafka failing too they wait in memory and go once it is back;
    with the memory's room spent, NotRecorded (the API's 503), never a payment answered
    and kept nowhere."""
    from api.publisher import NotRecorded

    async def go() -> None:
        topic = uid("scored")
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, 1, stack.kafka_replication[0])])
        await admin.close()
        full = Spool(tmp_path / "spool", max_bytes=1)
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
        publisher = Publisher(producer, full, topic, stack.topic_labels,
                              enqueue_timeout=10.0, memory_events=3)
        await publisher.start()
        events = scored(8)
        # Kafka up: on to Kafka, no copy on disk
        assert [await publisher.publish_scored(e) for e in events[:2]] == [False, False]
        await publisher.flush()
        assert full.refusing is not None and list((tmp_path / "spool").glob("segment-*")) == []
        # Kafka failing too: held in memory, up to its room, then refused
        await producer.stop()
        for event in events[2:4]:
            await publisher.publish_scored(event)
        await publisher.send_batches()
        await asyncio.sleep(0.2)
        assert not publisher.kafka_ok
        assert await publisher.publish_scored(events[4]) is False
        assert len(publisher.held) == 3
        with pytest.raises(NotRecorded, match="3 payments already held in memory"):
            await publisher.publish_scored(events[5])
        # Kafka back: the drain sends what memory held
        publisher.producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap,
                                              acks="all")
        publisher._producer_started = publisher.started = False  # start() starts it
        await publisher._drain_if_needed()
        await publisher.producer.stop()
        assert publisher.held == [] and publisher.kafka_ok
        got = await messages(stack, topic, 5)
        ids = {e.payment.payment_id for m in got for e in decode_scored(m.value)}
        assert ids == {e.payment.payment_id for e in events[:5]}

    asyncio.run(go())
