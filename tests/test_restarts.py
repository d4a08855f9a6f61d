"""A scored payment is in the history exactly once, whatever restarts."""

import asyncio
import os
import signal
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from model.events import encode, key_of
from model.history import HistoryStore
from model.schemas import Payment, ScoredPayment
from ops import services
from tests.conftest import eventually

pytestmark = pytest.mark.integration


def scored(i: int, run: str) -> ScoredPayment:
    p = Payment(payment_id=f"{run}_{i:05d}", timestamp="2026-11-19T10:00:00Z",
                card_id=f"card_{i % 50}", terminal_id=f"term_{i % 7}", amount=10.0 + i,
                currency="EUR")
    return ScoredPayment(payment=p, features={"amount": p.amount}, score=0.01,
                         decision="approve", model_version="vtest",
                         scored_at="2026-11-19T10:00:01Z")


def test_worker_killed_mid_stream_loses_nothing_and_records_nothing_twice(stream_worker):
    run = f"restart{uuid.uuid4().hex[:6]}"
    events = [scored(i, run) for i in range(3000)]
    store = HistoryStore(stream_worker.history_dir)

    def recorded() -> int:
        return int(store.query("SELECT count(*) AS n FROM payments WHERE payment_id LIKE ?",
                               [f"{run}_%"])["n"][0])

    async def produce():
        producer = AIOKafkaProducer(bootstrap_servers=stream_worker.kafka_bootstrap,
                                    linger_ms=20)
        await producer.start()
        try:
            for ev in events:
                await producer.send(stream_worker.topic_scored, encode(ev), key=key_of(ev))
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(produce())
    eventually(lambda: recorded() > 0, 60, every=0.05)
    proc = services.stream_proc(stream_worker)
    os.kill(proc.pid(), signal.SIGKILL)  # no clean shutdown, no final commit
    eventually(lambda: not proc.running(), 10)
    assert recorded() < len(events)  # killed mid-way, or the test proves nothing

    services.start_stream(stream_worker, timeout=120)
    eventually(lambda: recorded() == len(events), 120)
    ids = store.query("SELECT payment_id FROM payments WHERE payment_id LIKE ?",
                      [f"{run}_%"])["payment_id"]
    assert sorted(ids) == sorted(e.payment.payment_id for e in events)
    raw = store.query("SELECT count(*) AS n FROM payments_raw WHERE payment_id LIKE ?",
                      [f"{run}_%"])["n"][0]
    print(f"raw rows {raw} for {len(events)} payments")
