"""Every test module starts from nothing: whatever the modules before it wrote (and the
suite runs many before this one), its Redis is empty, its history and registry are
empty directories of its own, and its Kafka topics hold no event."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fraudstream_dev import launcher as services
from model.config import Settings

pytestmark = pytest.mark.integration


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


async def end_offsets(settings: Settings) -> dict[str, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    topics = [settings.topic_scored, settings.topic_labels, settings.topic_dead_letters]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    parts = [TopicPartition(t["topic"], p["partition"]) for t in described
             for p in t["partitions"]]
    assert {tp.topic for tp in parts} == set(topics), "the module's topics were not created"
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(parts)
    finally:
        await consumer.stop()
    return {f"{tp.topic}[{tp.partition}]": n for tp, n in ends.items()}


def test_a_module_starts_with_an_empty_redis_history_registry_and_topics(
        stack: Settings, servers_settings: Settings) -> None:
    for node in services.redis_nodes(stack):
        try:
            assert node.dbsize() == 0
        finally:
            node.close()
    assert stack.home != servers_settings.home
    assert files_under(stack.history_dir) == [] and files_under(stack.models_dir) == []
    assert files_under(stack.spool_dir) == []
    assert stack.topic_scored != servers_settings.topic_scored
    assert stack.stream_id != servers_settings.stream_id
    assert set(asyncio.run(end_offsets(stack)).values()) == {0}
    # the servers are the session's: the same processes, found through the module's home
    assert services.status(stack) == services.status(servers_settings)
