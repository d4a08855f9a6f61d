"""The pipelined Redis connection of the scoring path, against the real Redis."""

import asyncio
import threading
import time

import pytest
from redis.exceptions import ConnectionError, ResponseError

from model.redis_mux import RedisMux
from ops import services
from tests.test_outages import BUSY_SECOND

pytestmark = pytest.mark.integration


def run(coro):
    return asyncio.run(coro)


def test_concurrent_calls_each_get_their_own_reply(stack):
    async def go():
        mux = RedisMux(stack.redis_url)
        replies = await asyncio.gather(*(mux.execute("ECHO", f"m{i}") for i in range(500)))
        many = await mux.execute_many([("ECHO", "a"), ("INCRBY", "mux:n", 0), ("ECHO", "b")])
        await mux.close()
        return replies, many

    replies, many = run(go())
    assert replies == [f"m{i}".encode() for i in range(500)]
    assert many[0] == b"a" and isinstance(many[1], int) and many[2] == b"b"


def test_callers_that_give_up_do_not_shift_the_replies_of_the_others(stack, redis_db):
    # Redis stalls (a busy script): the calls made meanwhile time out. Their replies come
    # later and must be dropped in their turn, not handed to the next callers.
    async def go():
        mux = RedisMux(stack.redis_url)
        await mux.execute("PING")
        stall = threading.Thread(target=lambda: redis_db.eval(BUSY_SECOND, 0))
        stall.start()
        await asyncio.sleep(0.05)
        timed_out = 0
        for i in range(20):
            try:
                async with asyncio.timeout(0.01):
                    await mux.execute("ECHO", f"late{i}")
            except TimeoutError:
                timed_out += 1
        # Sent while Redis is still stalled: behind the abandoned calls on the wire.
        after = await asyncio.gather(*(mux.execute("ECHO", f"now{i}") for i in range(50)))
        await asyncio.to_thread(stall.join)
        await mux.close()
        return timed_out, after

    timed_out, after = run(go())
    assert timed_out == 20
    assert after == [f"now{i}".encode() for i in range(50)]


def test_an_error_reply_is_raised_and_the_connection_goes_on(stack):
    async def go():
        mux = RedisMux(stack.redis_url)
        await mux.execute("SET", "mux:str", "x")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await mux.execute("LPUSH", "mux:str", "y")
        ok = await mux.execute("GET", "mux:str")
        await mux.close()
        return ok

    assert run(go()) == b"x"


def test_a_script_unknown_to_redis_is_loaded_and_run(stack, redis_db):
    script = b"return {KEYS[1], ARGV[1]}"

    async def go():
        mux = RedisMux(stack.redis_url)
        first = await mux.evalsha(script, ["k1"], ["a1"])
        redis_db.script_flush()
        second = await mux.evalsha(script, ["k2"], ["a2"])
        await mux.close()
        return first, second

    assert run(go()) == ([b"k1", b"a1"], [b"k2", b"a2"])


def test_the_database_in_the_url_is_selected(stack, redis_db):
    url = stack.redis_url.rsplit("/", 1)[0] + "/3"

    async def go():
        mux = RedisMux(url)
        await mux.execute("SET", "mux:db", "three")
        await mux.close()

    run(go())
    assert redis_db.get("mux:db") is None
    redis_db.select(3)
    try:
        assert redis_db.get("mux:db") == b"three"
    finally:
        redis_db.delete("mux:db")
        redis_db.select(0)


def test_redis_restarted_fails_calls_then_reconnects(stack):
    async def go():
        mux = RedisMux(stack.redis_url)
        await mux.execute("PING")
        services.redis_proc(stack).stop()
        try:
            with pytest.raises((ConnectionError, OSError)):
                await mux.execute("PING")
        finally:
            await asyncio.to_thread(services.start_redis, stack)
        deadline = time.monotonic() + 10
        while True:
            try:
                return await mux.execute("ECHO", "back")
            except (ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    assert run(go()) == b"back"


def test_calls_cut_off_by_a_closed_connection_fail_and_later_ones_are_not_shifted(stack):
    async def go():
        mux = RedisMux(stack.redis_url)
        await mux.execute("PING")
        cut = [asyncio.ensure_future(mux.execute("ECHO", f"cut{i}")) for i in range(5)]
        await asyncio.sleep(0)  # their commands are queued, not yet written
        await mux.close()
        failed = await asyncio.gather(*cut, return_exceptions=True)
        after = await asyncio.gather(*(mux.execute("ECHO", f"after{i}") for i in range(5)))
        await mux.close()
        return failed, after

    failed, after = run(go())
    assert all(isinstance(f, ConnectionError) for f in failed)
    assert after == [f"after{i}".encode() for i in range(5)]
