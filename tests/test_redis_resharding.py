"""The cluster's pipelined connection during a live slot migration, on a Redis Cluster of
two primaries started here (so these run in the single-Redis run too): a slot half
migrated answers ``ASK`` for the keys that left and ``TRYAGAIN`` for calls naming keys on
both sides (or not yet written), and ``MOVED`` once the migration ends. Calls must get
their true replies through all three, and only ``MOVED`` may change the slot map."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, ResponseError

from model.schemas import Payment
from stores.online_features import (
    LabelUpdate,
    Observation,
    OnlineStore,
    PaymentRef,
    card_key,
    card_tag,
    terminal_tag,
)
from stores.redis_client import RedisClient
from stores.redis_mux import TRYAGAIN_PAUSES, ClusterMux, RedisMux

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout:g}s")
        time.sleep(0.05)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _agreed(node: redis.Redis) -> bool:
    info = node.cluster("info")
    return info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == 2


@dataclass
class MiniCluster:
    """Two primaries: ``nodes[0]`` serves slots 0-8191, ``nodes[1]`` the rest."""

    ports: list[int]
    nodes: list[redis.Redis]
    ids: list[str]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def owner(self, slot: int) -> int:
        return 0 if slot < 8192 else 1

    def begin_migration(self, slot: int) -> tuple[int, int]:
        """The slot's owner starts giving it to the other node: (source, target)."""
        src = self.owner(slot)
        dst = 1 - src
        self.nodes[dst].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.ids[src])
        self.nodes[src].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.ids[dst])
        return src, dst

    def migrate(self, src: int, keys: list[str]) -> None:
        self.nodes[src].execute_command("MIGRATE", "127.0.0.1", self.ports[1 - src], "", 0,
                                        5000, "KEYS", *keys)

    def end_migration(self, slot: int, src: int) -> None:
        """The rest of the slot's keys moved, and the slot given to the target for good,
        as ``redis-cli --cluster reshard`` ends (target first, then source)."""
        while keys := self.nodes[src].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            self.migrate(src, [k.decode() for k in keys])
        for node in (1 - src, src):
            self.nodes[node].execute_command("CLUSTER", "SETSLOT", slot, "NODE",
                                             self.ids[1 - src])


@pytest.fixture()
def mini_cluster(tmp_path: Path) -> Iterator[MiniCluster]:
    ports = [_free_port(), _free_port()]
    buses = [_free_port(), _free_port()]  # not port + 10000, which may be taken
    procs = []
    for port, bus in zip(ports, buses, strict=True):
        data = tmp_path / f"redis-{port}"
        data.mkdir()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-port", str(bus),
             "--cluster-node-timeout", "5000", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    nodes = [redis.Redis(port=p) for p in ports]
    try:
        for node in nodes:
            _until(lambda n=node: _answers(n), "redis-server answering")
        nodes[0].execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 8191)
        nodes[1].execute_command("CLUSTER", "ADDSLOTSRANGE", 8192, 16383)
        nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", ports[1], buses[1])
        _until(lambda: all(_agreed(n) for n in nodes), "the cluster agreeing")
        ids = [n.execute_command("CLUSTER", "MYID").decode() for n in nodes]
        yield MiniCluster(ports, nodes, ids)
    finally:
        for node in nodes:
            node.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def keys_in_one_slot(prefix: str, n: int) -> tuple[int, list[str]]:
    slot = key_slot(f"{prefix}".encode())
    return slot, [f"{{{prefix}}}:{i}" for i in range(n)]


def where(cluster: MiniCluster, key: str) -> list[int]:
    """The nodes holding ``key`` (asked of each node's own keys: no redirection)."""
    slot = key_slot(key.encode())
    return [i for i, node in enumerate(cluster.nodes)
            if key.encode() in node.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10_000)]


def test_ask_is_followed_without_reading_the_map_and_moved_reads_it_once(mini_cluster):
    slot, (k1, k2, k3) = keys_in_one_slot("ask", 3)
    read_key = b"return redis.call('GET', KEYS[1])"

    async def go() -> None:
        mux = ClusterMux(mini_cluster.url)
        assert await mux.execute_many([("SET", k1, "one"), ("SET", k2, "two")]) == [b"OK"] * 2
        src, dst = mini_cluster.begin_migration(slot)
        mini_cluster.migrate(src, [k1])
        assert where(mini_cluster, k1) == [dst] and where(mini_cluster, k2) == [src]
        reads, slots = mux.map_reads, list(mux._slots)

        # k1 left: the source answers ASK, and the target serves it after ASKING (a
        # script too, loaded there on the way); k2 is still served by the source. In one
        # batch as alone. k3 is new: written where the slot is going.
        assert await mux.execute("GET", k1) == b"one"
        assert await mux.evalsha(read_key, [k1], []) == b"one"
        assert await mux.run_steps([
            (None, ("GET", k2), ()), (read_key, [k1], []), (None, ("SET", k3, "three"), ()),
            (None, ("GET", k1), ())]) == [b"two", b"one", b"OK", b"one"]
        assert where(mini_cluster, k3) == [dst]
        assert (mux.map_reads, mux._slots) == (reads, slots)  # ASK changed no route

        mini_cluster.end_migration(slot, src)
        # The map says the source; it answers MOVED for all three, read together: the
        # map is read once, and says the target now.
        assert await mux.execute_many([("GET", k) for k in (k1, k2, k3)]) == \
            [b"one", b"two", b"three"]
        assert mux.map_reads == reads + 1
        serving = [a for lo, hi, a in mux._slots if lo <= slot <= hi]
        assert serving == [("127.0.0.1", mini_cluster.ports[dst])]
        await mux.close()

    asyncio.run(go())


class FinishOnTryAgain(ClusterMux):
    """Ends the slot's migration the first time a call pauses on ``TRYAGAIN``: the moment
    a scoring call is known to be waiting on a half-migrated slot, made to happen."""

    def __init__(self, url: str, finish: Callable[[], None]) -> None:
        super().__init__(url)
        self.finish: Callable[[], None] | None = finish
        self.pauses = 0

    async def _pause(self, seconds: float) -> None:
        self.pauses += 1
        if self.finish is not None:
            finish, self.finish = self.finish, None
            finish()
        await super()._pause(seconds)


# The idempotency records' pending marks outlive the test: none expires between a payment
# and its retry.
HOLD_MS = 600_000


def _same_slot_cards(run: str, avoid: set[int]) -> tuple[int, str, str]:
    """Two card ids whose keys share one slot (that of no key in ``avoid``)."""
    first = next(f"{run}a{i}" for i in range(1000)
                 if key_slot(card_tag(f"{run}a{i}")[1:-1].encode()) not in avoid)
    slot = key_slot(card_tag(first)[1:-1].encode())
    second = next(f"{run}b{i}" for i in range(1_000_000)
                  if key_slot(card_tag(f"{run}b{i}")[1:-1].encode()) == slot)
    return slot, first, second


def test_payments_are_scored_exactly_through_a_live_slot_migration(mini_cluster):
    """Cards A and B share a slot; the same payments on twin cards elsewhere are the
    reference. The slot is migrated with A's keys moved first: A's calls are then answered
    ASK by the source, B's still served there, and the card script of a new payment on
    either (its new idempotency key is on neither node) TRYAGAIN until the migration ends
    and MOVED sends it to the new owner. Every answer equals the twin's."""
    run = uuid.uuid4().hex[:8]
    fixed = {key_slot(b"policy")}  # the lists' slot: not part of this migration
    slot, card_a, card_b = _same_slot_cards(run, fixed)
    twins = {card_a: f"{run}ta", card_b: f"{run}tb"}
    terminals = {card: f"{run}term{i}" for i, card in enumerate([card_a, card_b, *twins.values()])}
    assert slot not in {key_slot(card_tag(c)[1:-1].encode()) for c in twins.values()}
    assert slot not in {key_slot(terminal_tag(t)[1:-1].encode()) for t in terminals.values()}
    t0 = 1_790_000_000.0
    src_dst: list[int] = []

    def finish() -> None:
        mini_cluster.end_migration(slot, src_dst[0])

    def pay(card: str, k: int) -> Payment:
        return Payment(payment_id=f"{card}_p{k}", timestamp=t0 + 600 * k, card_id=card,
                       terminal_id=terminals[card], amount=10.0 + 7 * k, currency="EUR",
                       country="FR" if k % 2 else "DE", merchant_category="5411")

    async def both(store: OnlineStore, card: str, k: int) -> tuple[Observation, Observation]:
        # the card, and its twin, the same payment
        async with asyncio.timeout(2.0):
            return (await store.observe(pay(card, k), f"h{k}", True, HOLD_MS),
                    await store.observe(pay(twins[card], k), f"h{k}", True, HOLD_MS))

    async def go() -> None:
        mux = FinishOnTryAgain(mini_cluster.url, finish)
        admin = RedisCluster.from_url(mini_cluster.url)
        store = OnlineStore(RedisClient(mux, admin))
        answers: dict[str, list[Observation]] = {card_a: [], card_b: []}
        twin_answers: dict[str, list[Observation]] = {card_a: [], card_b: []}

        def keep(card: str, pair: tuple[Observation, Observation]) -> None:
            answers[card].append(pair[0])
            twin_answers[card].append(pair[1])

        for k in range(3):
            for card in (card_a, card_b):
                keep(card, await both(store, card, k))
        # a chargeback on each card's first payment: every one of a card's keys exists
        for card in (card_a, card_b, *twins.values()):
            first = pay(card, 0)
            await store.apply_label(LabelUpdate(
                first.payment_id, PaymentRef(terminals[card], card, first.ts), True, t0 + 700))

        src, dst = mini_cluster.begin_migration(slot)
        src_dst.append(src)
        moved = [k.decode() for k in mini_cluster.nodes[src].execute_command(
            "CLUSTER", "GETKEYSINSLOT", slot, 1000) if card_tag(card_a).encode() in k]
        # its payments, frauds, label counts, state, seen values, 3 decision records
        assert len(moved) == 8
        mini_cluster.migrate(src, moved)
        assert all(where(mini_cluster, k) == [dst] for k in moved)
        reads, slots = mux.map_reads, list(mux._slots)

        # Half migrated. A's keys are on the target only: a retry of A's payment (all the
        # keys its script names exist there) is answered through ASK, as is a script
        # reading A's payments; the map still says the source.
        retried = await store.observe(pay(card_a, 2), "h2", True, HOLD_MS)
        assert retried.previous is not None and retried.previous.startswith(b"pending|h2")
        assert await mux.evalsha(b"return redis.call('ZCARD', KEYS[1])",
                                 [card_key(card_a)], []) == 3
        assert (mux.map_reads, mux._slots, mux.pauses) == (reads, slots, 0)

        # New payments on A and B at once: each card script TRYAGAIN (A's after ASK),
        # the first pause ends the migration, and both are resent to the new owner.
        got = await asyncio.gather(both(store, card_a, 3), both(store, card_b, 3))
        keep(card_a, got[0])
        keep(card_b, got[1])
        assert mux.pauses >= 1 and mux.finish is None
        assert mux.map_reads > reads
        assert [a for lo, hi, a in mux._slots if lo <= slot <= hi] == \
            [("127.0.0.1", mini_cluster.ports[dst])]
        for k in (4, 5):  # the slot's new owner, straight from the new map
            for card in (card_a, card_b):
                keep(card, await both(store, card, k))
        await mux.close()
        await admin.aclose()

        for card in (card_a, card_b):
            assert [o.features for o in answers[card]] == \
                [o.features for o in twin_answers[card]]
            assert all(o.features is not None for o in answers[card])
            assert [o.features["card_count_30d"] for o in answers[card]] == \
                [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # type: ignore[index]
            # the chargeback counted after the migration as before
            assert answers[card][3].features["card_fraud_known_30d"] == 1.0  # type: ignore[index]
        assert where(mini_cluster, card_key(card_b)) == [dst]

    asyncio.run(go())


class FakeNode(RedisMux):
    """A cluster node that answers from ``reply(command, asking)``: the mux's own code
    runs, only the wire is faked. ``writes`` keeps what was sent, call by call."""

    def __init__(self, port: int, reply: Callable[[tuple[Any, ...], bool], Any]) -> None:
        super().__init__(f"redis://127.0.0.1:{port}/0")
        self.reply = reply
        self.writes: list[list[tuple[Any, ...]]] = []
        self._writer = object()  # type: ignore[assignment]  # "connected"

    def _send(self, commands: Any) -> list[asyncio.Future[Any]]:
        self.writes.append([tuple(c) for c in commands])
        loop = asyncio.get_running_loop()
        futures, asking = [], False
        for command in commands:
            reply, future = self.reply(tuple(command), asking), loop.create_future()
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)
            futures.append(future)
            asking = command[0] == "ASKING"
        return futures


def _fake_cluster(finished: list[bool]) -> tuple[ClusterMux, FakeNode, FakeNode]:
    """Slot of ``{k}`` half migrated from port 1 to port 2 (``finished``: migrated): port 1
    still holds ``{k}b``; ``{k}a`` and the script cache of port 2 went over."""
    slot = key_slot(b"k")
    loaded: set[bytes] = set()

    def slots(port: int) -> list[Any]:
        return [[0, 16383, [b"127.0.0.1", port]]]

    def source(command: tuple[Any, ...], asking: bool) -> Any:
        if command[:2] == ("CLUSTER", "SLOTS"):
            return slots(2 if finished[0] else 1)
        if finished[0]:
            return ResponseError(f"MOVED {slot} 127.0.0.1:2")
        if command == ("GET", "{k}b"):
            return b"b"
        return ResponseError(f"ASK {slot} 127.0.0.1:2")

    def target(command: tuple[Any, ...], asking: bool) -> Any:
        if command[0] == "SCRIPT":
            loaded.add(command[-1])
        if command[0] in ("ASKING", "SCRIPT"):
            return b"OK"
        if not (asking or finished[0]):
            return ResponseError(f"MOVED {slot} 127.0.0.1:1")
        if command[0] == "EVALSHA":
            return b"ran" if loaded else NoScriptError("NOSCRIPT No matching script.")
        return {"{k}a": b"a", "{k}b": b"b"}[command[1]]

    mux = ClusterMux("redis://127.0.0.1:1/0")
    src, dst = FakeNode(1, source), FakeNode(2, target)
    mux.seed = src
    mux._nodes = {("127.0.0.1", 1): src, ("127.0.0.1", 2): dst}
    return mux, src, dst


def test_ask_goes_once_to_the_named_node_after_asking_and_leaves_the_map():
    finished = [False]
    mux, src, dst = _fake_cluster(finished)

    async def go() -> None:
        await mux.connect()
        assert (mux.map_reads, mux._slots) == (1, [(0, 16383, ("127.0.0.1", 1))])
        script = b"return 'ran'"
        replies = await mux.run_steps([(None, ("GET", "{k}a"), ()), (None, ("GET", "{k}b"), ()),
                                       (script, ["{k}a"], [])])
        assert replies == [b"a", b"b", b"ran"]
        # one write to the source for the batch; then per redirected step ASKING + the
        # step together (the script, unknown there, loaded and sent again after ASKING)
        assert src.writes[1:] == [[("GET", "{k}a"), ("GET", "{k}b"),
                                   ("EVALSHA", mux.seed._sha(script), 1, "{k}a")]]
        sha = dst._sha(script)
        assert sorted(dst.writes) == sorted([
            [("ASKING",), ("GET", "{k}a")],
            [("ASKING",), ("EVALSHA", sha, 1, "{k}a")],
            [("SCRIPT", "LOAD", script)],
            [("ASKING",), ("EVALSHA", sha, 1, "{k}a")]])
        assert (mux.map_reads, mux._slots) == (1, [(0, 16383, ("127.0.0.1", 1))])

        finished[0] = True
        dst.writes.clear()
        assert await mux.execute_many([("GET", "{k}a"), ("GET", "{k}b")]) == [b"a", b"b"]
        # MOVED: the map read again, once for both, and the steps sent to the new owner
        assert (mux.map_reads, mux._slots) == (2, [(0, 16383, ("127.0.0.1", 2))])
        assert sorted(dst.writes) == [[("GET", "{k}a")], [("GET", "{k}b")]]
        assert await mux.execute("GET", "{k}a") == b"a"
        assert dst.writes[-1] == [("GET", "{k}a")] and mux.map_reads == 2

    asyncio.run(go())


def test_a_call_waits_out_a_migration_through_rounds_of_ask_and_tryagain():
    """A script naming a new key of a slot being migrated: the source answers ASK (none of
    its keys is there), the target TRYAGAIN (not all are there), round after round, until
    the migration ends; then MOVED, and the reply."""
    slot = key_slot(b"k")
    finished = [False]
    script = b"return 'ran'"

    def source(command: tuple[Any, ...], asking: bool) -> Any:
        if command[:2] == ("CLUSTER", "SLOTS"):
            return [[0, 16383, [b"127.0.0.1", 2 if finished[0] else 1]]]
        return ResponseError(f"{'MOVED' if finished[0] else 'ASK'} {slot} 127.0.0.1:2")

    def target(command: tuple[Any, ...], asking: bool) -> Any:
        if command[0] in ("ASKING", "SCRIPT"):
            return b"OK"
        if finished[0]:
            return b"ran"
        if asking:
            return ResponseError("TRYAGAIN Multiple keys request during rehashing of slot")
        return ResponseError(f"MOVED {slot} 127.0.0.1:1")

    mux = ClusterMux("redis://127.0.0.1:1/0")
    src, dst = FakeNode(1, source), FakeNode(2, target)
    mux.seed = src
    mux._nodes = {("127.0.0.1", 1): src, ("127.0.0.1", 2): dst}
    paused: list[float] = []

    async def pause(seconds: float) -> None:  # the migration ends during the 7th pause
        paused.append(seconds)
        finished[0] = len(paused) == 7

    mux._pause = pause  # type: ignore[method-assign]

    async def go() -> Any:
        return await mux.evalsha(script, ["{k}a", "{k}new"], [])

    assert asyncio.run(go()) == b"ran"
    assert len(paused) == 7 and paused == sorted(paused)  # growing pauses
    assert mux.map_reads == 2  # the first map, and the one MOVED read


def test_tryagain_past_every_pause_is_the_reply():
    slot = key_slot(b"k")

    def source(command: tuple[Any, ...], asking: bool) -> Any:
        if command[:2] == ("CLUSTER", "SLOTS"):
            return [[0, 16383, [b"127.0.0.1", 1]]]
        return ResponseError(f"TRYAGAIN slot {slot} being migrated")

    mux = ClusterMux("redis://127.0.0.1:1/0")
    mux.seed = FakeNode(1, source)
    mux._nodes = {("127.0.0.1", 1): mux.seed}
    paused: list[float] = []

    async def pause(seconds: float) -> None:
        paused.append(seconds)

    mux._pause = pause  # type: ignore[method-assign]
    with pytest.raises(ResponseError, match="TRYAGAIN"):
        asyncio.run(mux.execute("GET", "{k}a"))
    assert paused == list(TRYAGAIN_PAUSES) and sum(paused) < 0.3
