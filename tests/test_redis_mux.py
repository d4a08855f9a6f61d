"""The pipelined Redis connection of the scoring path, against the real Redis. On a Redis
Cluster these tests talk to its first node alone (what ``RedisMux`` is, one connection to
one server); ``ClusterMux`` has its own tests below."""

import asyncio
import threading
import time

import pytest
from redis.crc import key_slot
from redis.exceptions import ConnectionError, ResponseError

from fraudstream_dev import launcher as services
from model.config import Settings
from stores.redis_mux import ClusterMux, RedisMux
from tests.test_outages import BUSY_SECOND

pytestmark = pytest.mark.integration


@pytest.fixture()
def node0(stack):
    """A client of the server the mux talks to (on a cluster, its first node)."""
    from urllib.parse import urlparse

    url = urlparse(stack.redis_url)
    client = services.redis_node(stack, url.hostname, url.port)
    yield client
    client.close()


def here(stack, node0, name: str) -> str:
    """A key named after ``name`` that this server serves (any key on a single server)."""
    if not stack.redis_cluster:
        return name
    port = node0.connection_pool.connection_kwargs["port"]
    ranges = [(lo, hi) for lo, hi, (_, p, *_), *_ in node0.execute_command("CLUSTER SLOTS")
              if p == port]
    for i in range(10_000):
        key = f"{name}{{{i}}}"
        if any(lo <= key_slot(key.encode()) <= hi for lo, hi in ranges):
            return key
    raise AssertionError(f"no slot of node {port} found")


def run(coro):
    return asyncio.run(coro)


def test_concurrent_calls_each_get_their_own_reply(stack, node0):
    counter = here(stack, node0, "mux:n")

    async def go():
        mux = RedisMux(stack.redis_url)
        replies = await asyncio.gather(*(mux.execute("ECHO", f"m{i}") for i in range(500)))
        many = await mux.execute_many([("ECHO", "a"), ("INCRBY", counter, 0), ("ECHO", "b")])
        await mux.close()
        return replies, many

    replies, many = run(go())
    assert replies == [f"m{i}".encode() for i in range(500)]
    assert many[0] == b"a" and isinstance(many[1], int) and many[2] == b"b"


def test_callers_that_give_up_do_not_shift_the_replies_of_the_others(stack, node0):
    # Redis stalls (a busy script): the calls made meanwhile time out. Their replies come
    # later and must be dropped in their turn, not handed to the next callers.
    async def go():
        mux = RedisMux(stack.redis_url)
        await mux.execute("PING")
        stall = threading.Thread(target=lambda: node0.eval(BUSY_SECOND, 0))
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


def test_an_error_reply_is_raised_and_the_connection_goes_on(stack, node0):
    key = here(stack, node0, "mux:str")

    async def go():
        mux = RedisMux(stack.redis_url)
        await mux.execute("SET", key, "x")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await mux.execute("LPUSH", key, "y")
        ok = await mux.execute("GET", key)
        await mux.close()
        return ok

    assert run(go()) == b"x"


def test_a_script_unknown_to_redis_is_loaded_and_run(stack, node0):
    script = b"return {KEYS[1], ARGV[1]}"
    k1, k2 = here(stack, node0, "k1"), here(stack, node0, "k2")

    async def go():
        mux = RedisMux(stack.redis_url)
        first = await mux.evalsha(script, [k1], ["a1"])
        node0.script_flush()
        second = await mux.evalsha(script, [k2], ["a2"])
        await mux.close()
        return first, second

    assert run(go()) == ([k1.encode(), b"a1"], [k2.encode(), b"a2"])


def test_a_batch_of_script_calls_runs_each_once_in_order_even_after_a_script_flush(
        stack, node0):
    """The stream worker's batches: a script Redis lost is loaded, and only the calls that
    did not run are run again (the script here is not idempotent: each counts once)."""
    script = b"return redis.call('INCRBY', KEYS[1], ARGV[1])"
    keys = [here(stack, node0, f"mux:many{i}") for i in range(40)]
    wrong = here(stack, node0, "mux:many:str")

    async def go():
        mux = RedisMux(stack.redis_url)
        first = await mux.evalsha_many(script, [([k], [i]) for i, k in enumerate(keys)])
        node0.script_flush()
        second = await mux.evalsha_many(script, [([k], [100]) for k in keys])
        await mux.execute("SET", wrong, "x")
        with pytest.raises(ResponseError, match=r"WRONGTYPE|not an integer"):
            await mux.evalsha_many(script, [([keys[0]], [1]), ([wrong], [1]),
                                            ([keys[1]], [1])])
        await mux.close()
        return first, second

    first, second = run(go())
    assert first == list(range(40))
    assert second == [i + 100 for i in range(40)]
    # the batch with an error ran its other calls, once each
    assert [int(node0.get(k)) for k in keys[:3]] == [101, 102, 102]


@pytest.mark.skipif(Settings().redis_cluster,
                    reason="a Redis Cluster has one database: there is none to select")
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


def test_a_connection_slower_than_its_timeout_is_a_connection_error(stack):
    """Not a TimeoutError, which callers would take for their own deadline passing; a
    cluster's mux re-reads the slot map and retries on it."""
    async def go():
        slow = RedisMux(stack.redis_url, connect_timeout=1e-6)  # expires before the handshake
        with pytest.raises(ConnectionError, match="took more than"):
            await slow.execute("PING")
        await slow.close()
        fine = RedisMux(stack.redis_url)
        pong = await fine.execute("PING")
        await fine.close()
        return pong

    assert run(go()) in (b"PONG", "PONG")


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


cluster_only = pytest.mark.skipif(not Settings().redis_cluster,
                                  reason="ClusterMux needs a Redis Cluster (the cluster run)")


@cluster_only
def test_cluster_mux_sends_each_call_to_the_node_serving_its_key(stack, redis_db):
    keys = [f"cmux:{i}" for i in range(300)]
    nodes = {redis_db.get_node_from_key(k).port for k in keys}
    assert len(nodes) == stack.redis_cluster_nodes  # the keys are spread over every node

    async def go():
        mux = ClusterMux(stack.redis_url)
        replies = await mux.execute_many([("SET", k, f"v{i}") for i, k in enumerate(keys)])
        scripted = await mux.evalsha_many(b"return redis.call('GET', KEYS[1])",
                                          [([k], []) for k in keys])
        await mux.close()
        return replies, scripted

    replies, scripted = run(go())
    assert replies == [b"OK"] * len(keys)
    assert scripted == [f"v{i}".encode() for i in range(len(keys))]
    assert [redis_db.get(k) for k in keys] == [f"v{i}".encode() for i in range(len(keys))]


@cluster_only
def test_cluster_mux_follows_moved_with_a_stale_slot_map(stack, redis_db):
    keys = [f"moved:{i}" for i in range(60)]

    async def go():
        mux = ClusterMux(stack.redis_url)
        await mux.connect()
        # As if every slot had moved to the first node since the map was read: the other
        # nodes' keys are answered MOVED by it, and the mux reads the map again.
        first = mux._slots[0][2]
        mux._slots = [(0, 16383, first)]
        replies = await mux.execute_many([("SET", k, "x") for k in keys])
        healed = len({a for _, _, a in mux._slots})
        await mux.close()
        return replies, healed

    replies, healed = run(go())
    assert replies == [b"OK"] * len(keys)
    assert healed == stack.redis_cluster_nodes
    assert all(redis_db.get(k) == b"x" for k in keys)


@cluster_only
def test_cluster_mux_a_node_down_fails_its_calls_only_and_they_come_back(stack, redis_db):
    down = services.redis_proc(stack)  # the first node
    keys = [f"down:{i}" for i in range(90)]
    first_port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
    on_down = [redis_db.get_node_from_key(k).port == first_port for k in keys]
    assert any(on_down) and not all(on_down)

    async def go():
        mux = ClusterMux(stack.redis_url)
        await mux.execute_many([("SET", k, "before") for k in keys])
        down.stop()
        try:
            during = await mux.execute_many([("GET", k) for k in keys])
        finally:
            await asyncio.to_thread(services.start_redis, stack)
        deadline = time.monotonic() + 20
        while True:
            after = await mux.execute_many([("GET", k) for k in keys])
            if all(a == b"before" for a in after) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        await mux.close()
        return during, after

    during, after = run(go())
    for reply, gone in zip(during, on_down, strict=True):
        if gone:
            assert isinstance(reply, (ConnectionError, OSError, ResponseError)), reply
        else:
            assert reply == b"before"
    assert after == [b"before"] * len(keys)  # appendonly: the node came back with its data
