"""The answers kept for replays: none lost when the API stops in the middle of a write."""

import asyncio
import socket

import pytest

from api.decisions import DecisionRecorder
from model.schemas import ScoreResponse
from stores.idempotency import DecisionStore, decision_key
from stores.redis_client import RedisClient, client, connect
from stores.redis_mux import RedisMux
from tests.conftest import uid

pytestmark = pytest.mark.integration


def answer(pid: str) -> ScoreResponse:
    return ScoreResponse(payment_id=pid, decision="approve", score=0.01, reasons=[],
                         model_version="v", rules_version=0, degraded=False, latency_ms=1.0)


def test_a_batch_cut_off_by_shutdown_is_kept_for_the_final_flush(stack, redis_db):
    ids = [uid("pay") for _ in range(30)]
    # A server that accepts the connection and never answers: the recorder's write is
    # stuck before its commands are sent when the API stops.
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]

    async def go():
        redis = client(stack)
        stuck = RedisMux(f"redis://127.0.0.1:{port}/0", password="x", connect_timeout=5)
        recorder = DecisionRecorder(DecisionStore(RedisClient(stuck, redis)), window=0.001)
        runner = asyncio.create_task(recorder.run())
        for pid in ids:
            recorder.add("card-1", pid, "hash", answer(pid).model_dump_json().encode())
        await asyncio.sleep(0.2)
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        await stuck.close()
        # The final flush (here on a working connection) still has the whole batch.
        live = connect(stack)
        recorder.store = DecisionStore(live)
        await recorder.flush()
        await live.aclose()
        await redis.aclose()

    try:
        asyncio.run(go())
    finally:
        silent.close()
    stored = [redis_db.get(decision_key("card-1", pid)) for pid in ids]
    assert all(s is not None and s.startswith(b"done|hash|") for s in stored)
    assert ScoreResponse.model_validate_json(stored[0].split(b"|", 2)[2]).payment_id == ids[0]
