"""Per-key rate limits: one token bucket per key, shared by the API processes (Redis),
429 with Retry-After once spent, the process's own bucket when Redis is away."""

import asyncio
import math
import time

import pytest

from api.throttle import Limit, Throttle
from model.api_keys import ApiKey, create_key, limit_key, load_keys
from model.config import Settings
from stores import redis_client
from stores.rate_limits import TokenBuckets
from tests.conftest import payment, uid


def key(name: str, rate: float | None = None, burst: int | None = None) -> ApiKey:
    return ApiKey(name=name, key_sha256="0" * 64, scopes={"score"}, rate_per_second=rate,
                  burst=burst)


def test_a_bucket_in_redis_hands_out_its_burst_then_its_rate(stack: Settings):
    async def run() -> None:
        redis = redis_client.connect(stack)
        try:
            buckets = TokenBuckets(redis)
            name = uid("bucket")
            grants = [await buckets.take(name, 2.0, 5, 1) for _ in range(6)]
            assert [g.tokens for g in grants] == [1, 1, 1, 1, 1, 0]
            # empty: the next token comes at 2 a second
            assert 0 < grants[-1].wait_seconds <= 0.5
            await asyncio.sleep(grants[-1].wait_seconds + 0.05)
            assert (await buckets.take(name, 2.0, 5, 3)).tokens == 1
            # a lease takes several at once, never more than there are
            other = uid("bucket")
            assert (await buckets.take(other, 100.0, 50, 20)).tokens == 20
            assert (await buckets.take(other, 100.0, 50, 40)).tokens in range(30, 33)
            with pytest.raises(ValueError, match="rate > 0"):
                await buckets.take(other, float("nan"), 5, 1)
        finally:
            await redis.aclose()

    asyncio.run(run())


def test_redis_away_each_process_limits_from_a_bucket_of_its_own(stack: Settings):
    from fraudstream_dev.launcher import free_port

    away = stack.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0",
                                    "redis_cluster": False})

    async def run() -> list[float | None]:
        redis = redis_client.connect(away)
        try:
            throttle = Throttle(TokenBuckets(redis), None)
            return [await throttle.admit(key("gw", rate=1.0, burst=3)) for _ in range(5)]
        finally:
            await redis.aclose()

    admitted = asyncio.run(run())
    assert admitted[:3] == [None, None, None]
    assert all(w is not None and 0 < w <= 1.0 for w in admitted[3:])


def test_an_installation_default_applies_to_keys_without_their_own(stack: Settings):
    async def run() -> tuple[Limit | None, Limit | None]:
        redis = redis_client.connect(stack)
        try:
            throttle = Throttle(TokenBuckets(redis), Limit(1000.0, 2000))
            return throttle.limit(key("a")), throttle.limit(key("b", rate=5.0))
        finally:
            await redis.aclose()

    default, own = asyncio.run(run())
    assert default == Limit(1000.0, 2000) and own == Limit(5.0, 5)
    assert Limit(1000.0, 2000).lease == 50 and Limit(5.0, 5).lease == 1


@pytest.mark.integration
def test_a_key_over_its_rate_gets_429_on_every_api_process_and_others_do_not(
        stream_worker: Settings, trained: str, api_keys):
    from fastapi.testclient import TestClient

    from api.main import serve_app

    assert stream_worker.api_keys_file is not None
    name = uid("slow")
    slow, _ = create_key(stream_worker.api_keys_file, name, {"score"}, rate_per_second=1.0,
                         burst=4)
    with TestClient(serve_app(stream_worker)) as one, \
            TestClient(serve_app(stream_worker)) as two:
        start = time.monotonic()
        answers = []
        refused_id = None
        for i in range(12):
            body = payment(payment_id=uid("pay"))
            resp = (one, two)[i % 2].post("/v1/payments/score", json=body,
                                          headers={"X-API-Key": slow})
            answers.append(resp)
            if resp.status_code == 429 and refused_id is None:
                refused_id = body["payment_id"]
        elapsed = time.monotonic() - start
        codes = [r.status_code for r in answers]
        assert set(codes) == {200, 429}, codes
        # the two processes share one bucket: the burst, plus what refilled meanwhile
        assert 4 <= codes.count(200) <= 4 + math.floor(elapsed * 1.0) + 1, (codes, elapsed)
        refused = next(r for r in answers if r.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1
        assert name in refused.json()["detail"] and "1 requests/s" in refused.json()["detail"]
        # another key is not held back by this one
        assert two.post("/v1/payments/score", json=payment(),
                        headers={"X-API-Key": api_keys["all"][0]}).status_code == 200
        # a refused payment was not scored: once admitted, it is scored anew, not replayed
        assert refused_id is not None
        time.sleep(int(refused.headers["retry-after"]) + 0.1)
        again = one.post("/v1/payments/score", json=payment(payment_id=refused_id),
                         headers={"X-API-Key": slow})
        assert again.status_code == 200 and again.json()["replay"] is False
        # the limit is changed live, no restart: within the key poll, on both processes
        limit_key(stream_worker.api_keys_file, name, 1000.0, 1000)
        assert next(iter(k for k in load_keys(stream_worker.api_keys_file).values()
                         if k.name == name)).rate_per_second == 1000.0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            burst = [c.post("/v1/payments/score", json=payment(),
                            headers={"X-API-Key": slow}).status_code
                     for c in (one, two) for _ in range(3)]
            if burst == [200] * 6:
                break
            time.sleep(0.5)
        assert burst == [200] * 6, burst


def test_requests_arriving_together_share_one_lease_and_get_the_whole_rate(stack: Settings):
    """Found by the 10-minute chaos run: after a hung API let its backlog in at once, each
    waiting request took a lease of its own from Redis and kept one token of it, so the
    key's bucket was spent a lease per request and the key refused at a fraction of its
    rate. Requests arriving together now wait for one renewal at a time."""
    name, burst = uid("herd"), 200
    gw = key(name, rate=400.0, burst=burst)  # a lease of min(200 // 10, 400 / 20) = 20

    async def run() -> tuple[int, float]:
        redis = redis_client.connect(stack)
        try:
            throttle = Throttle(TokenBuckets(redis), None)
            answers = await asyncio.gather(*(throttle.admit(gw) for _ in range(burst)))
            left = float((await redis.command("HGET", f"fs:rate:{{{name}}}", "tokens")) or 0)
            return sum(a is None for a in answers), left
        finally:
            await redis.aclose()

    admitted, left = asyncio.run(run())
    lease = Limit(400.0, burst).lease
    assert lease == 20
    # the whole burst (a lease per request kept one token of each: about burst / lease)
    assert admitted >= burst - lease, admitted
    assert left < lease  # the bucket went to requests, not to leases thrown away
