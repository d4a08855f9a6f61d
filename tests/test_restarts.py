"""A scored payment is in the history exactly once, whatever restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest
from aiokafka import AIOKafkaProducer

from fraudstream_dev import launcher as services
from model.config import Settings
from model.schemas import Payment, ScoredPayment
from stores.events import encode, key_of
from stores.history import HistoryStore
from tests.conftest import eventually

pytestmark = pytest.mark.integration


def scored(i: int, run: str) -> ScoredPayment:
    p = Payment(payment_id=f"{run}_{i:05d}", timestamp="2026-11-19T10:00:00Z",
                card_id=f"card_{i % 50}", terminal_id=f"term_{i % 7}", amount=10.0 + i,
                currency="EUR")
    return ScoredPayment(payment=p, features={"amount": p.amount}, score=0.01,
                         decision="approve", model_version="vtest",
                         scored_at="2026-11-19T10:00:01Z")


class ScoredProducer:
    """A producer of scored events to the scored topic, for synchronous tests: connected
    once, so that sending a few hundred events later takes milliseconds, not a start."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runner = asyncio.Runner()
        self.producer: AIOKafkaProducer | None = None

    def __enter__(self) -> ScoredProducer:
        async def start() -> AIOKafkaProducer:
            producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap,
                                        linger_ms=20)
            await producer.start()
            return producer

        self.runner.__enter__()
        self.producer = self.runner.run(start())
        return self

    def send(self, events: list[ScoredPayment]) -> None:
        """Returns once the brokers acknowledged every one of ``events``."""
        async def go() -> None:
            assert self.producer is not None
            for ev in events:
                await self.producer.send(self.settings.topic_scored, encode(ev),
                                         key=key_of(ev))
            await self.producer.flush()

        self.runner.run(go())

    def __exit__(self, *exc: object) -> None:
        try:
            if self.producer is not None:
                self.runner.run(self.producer.stop())
        finally:
            self.runner.close()


@contextmanager
def held(proc: services.Proc) -> Iterator[int]:
    """``proc`` stopped (SIGSTOP) inside the block: it reads and writes nothing until it
    is continued or killed. Continued at the end if it is still alive."""
    pid = proc.pid()
    assert pid is not None, f"{proc.name} is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_worker_killed_mid_stream_loses_nothing_and_records_nothing_twice(
        stream_worker: Settings) -> None:
    run = f"restart{uuid.uuid4().hex[:6]}"
    events = [scored(i, run) for i in range(3000)]
    # Most of the events while it runs; the rest while it is held, so that whatever the
    # machine's speed, the kill finds events it has not recorded.
    first, rest = events[:2800], events[2800:]
    store = HistoryStore(stream_worker.history_dir)

    def recorded() -> int:
        return int(store.query("SELECT count(*) AS n FROM payments WHERE payment_id LIKE ?",
                               [f"{run}_%"])["n"][0])

    proc = services.stream_proc(stream_worker)
    try:
        with ScoredProducer(stream_worker) as producer:
            producer.send(first)
            eventually(lambda: recorded() > 0, 60, every=0.05)
            with held(proc) as pid:
                producer.send(rest)
                at_kill = recorded()
                os.kill(pid, signal.SIGKILL)  # no clean shutdown, no final commit
        eventually(lambda: not proc.running(), 10)
        assert at_kill <= len(first) < len(events)
        assert recorded() == at_kill  # nothing written after the kill

        services.start_stream(stream_worker, timeout=120)
        eventually(lambda: recorded() == len(events), 120)
    finally:
        # The worker is shared by the module's other tests: never left stopped or dead.
        if not proc.running():
            services.start_stream(stream_worker, timeout=120)
    ids = store.query("SELECT payment_id FROM payments WHERE payment_id LIKE ?",
                      [f"{run}_%"])["payment_id"]
    assert sorted(ids) == sorted(e.payment.payment_id for e in events)
    # The files themselves, not the de-duplicating view: the batch the kill interrupted was
    # redelivered, and its payments already written were not written again.
    raw = store.query("SELECT count(*) AS n FROM payments_raw WHERE payment_id LIKE ?",
                      [f"{run}_%"])["n"][0]
    assert raw == len(events)


def test_api_killed_right_after_answering_loses_no_scored_payment(stream_worker, trained,
                                                                  api_keys):
    """The producer batches for a few ms: a crash then would drop what it holds, but for
    the write-ahead spool, which the next start sends again."""
    import httpx

    proc = services.api_proc(stream_worker)
    try:
        proc.stop()
        # Long batches: the producer still holds the last payments when the process dies.
        proc.spawn([sys.executable, "-m", "ops.cli", "api"],
                   env={"FRAUDSTREAM_KAFKA_LINGER_MS": "3000"})
        services.wait_until(lambda: services.http_ok(f"{stream_worker.api_url}/healthz"),
                            "API", 60, proc)
        store = HistoryStore(stream_worker.history_dir)
        run = f"crash{uuid.uuid4().hex[:6]}"
        sent = []
        with httpx.Client(base_url=stream_worker.api_url,
                          headers={"X-API-Key": api_keys["all"][0]}) as client:
            for i in range(300):
                body = {"payment_id": f"{run}_{i:04d}", "timestamp": "2026-11-20T12:00:00Z",
                        "card_id": f"card_{i % 40}", "terminal_id": "term_crash",
                        "amount": 5.0 + i, "currency": "EUR"}
                assert client.post("/v1/payments/score", json=body).status_code == 200
                sent.append(body["payment_id"])
        os.kill(proc.pid(), signal.SIGKILL)
        eventually(lambda: not proc.running(), 10)

        services.start_api(stream_worker)

        def recorded() -> int:
            return int(store.query(
                "SELECT count(*) AS n FROM payments WHERE payment_id LIKE ?",
                [f"{run}_%"])["n"][0])

        eventually(lambda: recorded() == len(sent), 90)
        raw = store.query("SELECT payment_id, count(*) AS n FROM payments_raw "
                          "WHERE payment_id LIKE ? GROUP BY 1", [f"{run}_%"])
        assert len(raw) == len(sent) and raw["n"].max() == 1
    finally:
        # This test's own API (no other test uses one on its port): stopped, pass or fail.
        services.api_proc(stream_worker).stop()
