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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from stores.redis_mux import ClusterMux

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
