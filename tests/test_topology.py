"""The servers this project starts are the ones the settings describe: one Redis or a
cluster's primaries, one Kafka broker per bootstrap address; `fraudstream status` shows
each."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fraudstream_dev import launcher as services
from stores import topics

pytestmark = pytest.mark.integration


def test_every_server_the_settings_describe_is_started_and_shown(stack):
    status = services.status(stack)
    brokers = [name for name in status if name.startswith("kafka")]
    nodes = [name for name in status if name.startswith("redis")]
    assert len(brokers) == len(stack.kafka_brokers)
    assert len(nodes) == (stack.redis_cluster_nodes if stack.redis_cluster else 1)
    assert all(status[name] for name in brokers + nodes), status

    from model.config import get_settings
    from ops.cli import app

    get_settings.cache_clear()  # the CLI reads the session's settings from the environment
    try:
        shown = CliRunner().invoke(app, ["status"], terminal_width=200)
    finally:
        get_settings.cache_clear()
    assert shown.exit_code == 0, shown.output
    for name in brokers + nodes:
        line = next(ln for ln in shown.output.splitlines() if f" {name} " in ln)
        assert str(status[name]) in line and "stopped" not in line
    for address in stack.kafka_brokers:
        assert address in shown.output


def test_a_partition_without_a_leader_or_with_an_error_is_not_ready():
    def part(n: int, leader: int, error: int = 0) -> dict[str, int]:
        return {"partition": n, "leader": leader, "error_code": error}

    described = [
        {"topic": "scored", "error_code": 0, "partitions": [part(0, 1), part(1, -1)]},
        {"topic": "labels", "error_code": 0, "partitions": [part(0, 2, error=5), part(1, 3)]},
        {"topic": "new", "error_code": 5, "partitions": []},
    ]
    assert topics.unready_partitions(described) == ["scored[1]", "labels[0]", "new"]
    assert topics.unready_partitions(
        [{"topic": "scored", "error_code": 0, "partitions": [part(0, 1), part(1, 2)]}]) == []


def test_kafka_is_ready_once_every_partition_has_a_listening_leader(stack):
    # What `fraudstream stream` waits on before starting faust.
    assert topics.kafka_answers(stack)
    assert not topics.kafka_answers(stack, brokers=len(stack.kafka_brokers) + 1)
