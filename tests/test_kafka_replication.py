"""Kafka with three brokers (the cluster run of the suite): every topic has three copies,
a write is acknowledged once two hold it, and losing brokers loses nothing the API
answered. With one broker down nothing is refused; with two down the brokers refuse
writes (too few in sync), the API answers anyway and keeps the events in its spool, and
they reach the history once the brokers are back."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from fraudstream_dev import launcher as services
from model.config import Settings
from stores import topics
from stores.history import HistoryStore
from tests.conftest import KAFKA_BROKERS, eventually, payment, uid

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(KAFKA_BROKERS < 3,
                       reason="needs three brokers (the cluster run: scripts/test.sh)"),
]


async def _describe(settings: Settings) -> tuple[list[dict[str, Any]], dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        topics = await admin.describe_topics([settings.topic_scored, settings.topic_labels])
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, settings.topic_scored)])
        entries = {name: value for name, value, *_ in configs[0].resources[0][4]}
        return topics, entries
    finally:
        await admin.close()


def in_sync(settings: Settings) -> list[int]:
    topics, _ = asyncio.run(_describe(settings))
    return [len(p["isr"]) for t in topics for p in t["partitions"]]


def test_topics_have_three_copies_and_two_must_hold_a_write(stream_worker):
    topics, config = asyncio.run(_describe(stream_worker))
    partitions = [p for t in topics for p in t["partitions"]]
    assert len(partitions) == 2 * stream_worker.kafka_partitions
    assert all(len(p["replicas"]) == 3 for p in partitions)
    assert len({p["leader"] for p in partitions}) > 1  # the leaders are spread
    assert config["min.insync.replicas"] == "2"


def _send(client: Any, bodies: list[dict[str, Any]]) -> list[int]:
    return [client.post("/v1/payments/score", json=b).status_code for b in bodies]


def _recorded(store: HistoryStore, run: str) -> tuple[int, int]:
    row = store.query("SELECT count(*) AS n, count(DISTINCT payment_id) AS d FROM payments_raw "
                      "WHERE payment_id LIKE ?", [f"{run}_%"])
    return int(row["n"][0]), int(row["d"][0])


def _bodies(run: str, n: int) -> list[dict[str, Any]]:
    return [payment(payment_id=f"{run}_{i:05d}", card_id=uid("card")) for i in range(n)]


def _kill(proc: services.Proc) -> None:
    pid = proc.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: not proc.running(), 10)


def test_a_broker_killed_mid_run_loses_nothing_and_refuses_nothing(api_client, stream_worker):
    run = uid("onedown")
    bodies = _bodies(run, 600)
    store = HistoryStore(stream_worker.history_dir)
    victim = services.kafka_node_procs(stream_worker)[1]
    statuses = _send(api_client, bodies[:200])
    _kill(victim)
    try:
        statuses += _send(api_client, bodies[200:])
        assert statuses == [200] * len(bodies)
        # Two copies of every partition remain: the whole run is recorded without it.
        eventually(lambda: _recorded(store, run) == (len(bodies), len(bodies)), 120)
        assert not victim.running()
        # A stream worker (re)started now starts: the partitions are led by the two
        # brokers left (what `fraudstream stream` waits on).
        eventually(lambda: topics.kafka_answers(stream_worker), 60, every=1.0)
    finally:
        services.start_kafka(stream_worker, timeout=120)
    # Back, it catches up and every partition has its three copies in sync again.
    eventually(lambda: in_sync(stream_worker) == [3] * 2 * stream_worker.kafka_partitions,
               120, every=1.0)
    assert _recorded(store, run) == (len(bodies), len(bodies))


def test_two_brokers_down_refuse_writes_and_the_spool_delivers_them_after(api_client,
                                                                          stream_worker):
    run = uid("twodown")
    bodies = _bodies(run, 120)
    store = HistoryStore(stream_worker.history_dir)
    victims = services.kafka_node_procs(stream_worker)[1:3]
    for victim in victims:
        _kill(victim)
    try:
        statuses = _send(api_client, bodies)
        assert statuses == [200] * len(bodies)  # the gateway is answered all the same
        # One copy left, two required: nothing is acknowledged, the API says it spools,
        # and none of the run can be in the history.
        eventually(lambda: api_client.get("/healthz").json()["kafka"] == "spooling", 60)
        assert _recorded(store, run) == (0, 0)
    finally:
        services.start_kafka(stream_worker, timeout=120)
    eventually(lambda: _recorded(store, run) == (len(bodies), len(bodies)), 180, every=1.0)
