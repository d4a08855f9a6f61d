"""One pipelined Redis connection shared by every concurrent call of a process.

The scoring path makes one or two Redis calls per payment. Through redis-py's pool each
costs about 0.26 ms of CPU on this machine (taking and checking a connection, retry and
telemetry wrappers), more than the Lua script itself. Here calls are written to a single
connection as they come and their replies matched in order, the way Redis pipelining
works: 0.11-0.15 ms for a lone call, 0.03 ms each when several are in flight, because
their writes and reads share system calls. Packing and parsing are hiredis's.

Ordering is the whole trick, so it is kept even when a caller gives up: a caller that
times out leaves its slot in the queue, and its reply, when it comes, is dropped. If the
connection breaks, every call in flight fails with ``ConnectionError`` and the next call
connects again. Every store reaches it through ``stores.redis_client.RedisClient``, for
all the calls of the API and the stream worker; only scans, back-fills, transactions and
the audit streams use redis-py.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url
from redis.crc import key_slot
from redis.exceptions import ConnectionError, NoScriptError, ResponseError

Arg = str | bytes | int | float
Call = tuple[Sequence[Arg], Sequence[Arg]]  # a script's keys and arguments
# (script, keys, args): a Lua script run by its digest; (None, command, ()): a command
Step = tuple[bytes | None, Sequence[Arg], Sequence[Arg]]


class RedisMux:
    def __init__(self, url: str, password: str | None = None, connect_timeout: float = 0.25,
                 max_in_flight: int = 10_000) -> None:
        opts = parse_url(url)
        self.host: str = opts.get("host", "127.0.0.1")
        self.port: int = int(opts.get("port", 6379))
        self.db: int = int(opts.get("db", 0))
        self.username: str | None = opts.get("username")
        self.password = password if password is not None else opts.get("password")
        self.connect_timeout = connect_timeout
        # Beyond this many unanswered calls Redis is not keeping up: fail fast instead of
        # queueing more (the caller degrades).
        self.max_in_flight = max_in_flight
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._lock = asyncio.Lock()
        self._shas: dict[bytes, str] = {}
        self._outbox: list[bytes] = []
        self._flush_scheduled = False

    async def execute(self, *args: Arg) -> Any:
        """Send one command; its reply (bytes, int, list, None), or raise its error."""
        if self._writer is None:
            await self.connect()
        return await self._send([args])[0]

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Send several commands in one write (not a transaction); their replies in order.
        Error replies are returned, not raised."""
        if not commands:
            return []
        if self._writer is None:
            await self.connect()
        return await asyncio.gather(*self._send(commands), return_exceptions=True)

    def _sha(self, script: bytes) -> str:
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = hashlib.sha1(script).hexdigest()
        return sha

    async def run_steps(self, steps: Sequence[Step]) -> list[Any]:
        """Scripts and commands in one write, their replies in order: one future each, no
        task (a payment's four calls as tasks cost more than their packing). A script
        Redis does not have is loaded, and only the calls that did not run are run again.
        Error replies are returned, not raised."""
        if not steps:
            return []
        if self._writer is None:
            await self.connect()
        return await self._complete(steps, *self._begin(steps))

    def _begin(self, steps: Sequence[Step]) -> tuple[list[Sequence[Arg]],
                                                     list[asyncio.Future[Any]]]:
        """The steps queued for this turn's write: their commands and reply futures."""
        commands = [(("EVALSHA", self._sha(script), len(keys), *keys, *args)
                     if script is not None else keys) for script, keys, args in steps]
        return commands, self._send(commands)

    async def _complete(self, steps: Sequence[Step], commands: list[Sequence[Arg]],
                        futures: list[asyncio.Future[Any]]) -> list[Any]:
        """``_begin``'s replies; the scripts Redis did not have loaded, and only the steps
        that did not run sent again."""
        replies = list(await asyncio.gather(*futures, return_exceptions=True))
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            # (only a script's step can be answered NOSCRIPT: its source is never None)
            for script in {src for i in missing if (src := steps[i][0]) is not None}:
                await self.execute("SCRIPT", "LOAD", script)
            for i, reply in zip(missing, await self.execute_many(
                    [commands[i] for i in missing]), strict=True):
                replies[i] = reply
        return replies

    async def evalsha_many(self, script: bytes, calls: Sequence[Call]) -> list[Any]:
        """Run a Lua script once per (keys, args), all in one write; the replies in order.
        Raises the first error, as a redis-py pipeline does."""
        return raise_first(await self.run_steps([(script, keys, args) for keys, args in calls]))

    async def evalsha(self, script: bytes, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run a Lua script by its digest, loading it first if Redis does not have it."""
        sha = self._sha(script)
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.execute("SCRIPT", "LOAD", script)
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)

    async def connect(self) -> None:
        if self._writer is not None:
            return
        async with self._lock:
            if self._writer is not None:
                return
            try:
                async with asyncio.timeout(self.connect_timeout):
                    reader, writer = await asyncio.open_connection(self.host, self.port)
            except TimeoutError as exc:
                # A connection failure like any other (a cluster's mux then reads the slot
                # map again and retries), not the caller's own deadline passing.
                raise ConnectionError(f"connecting to Redis at {self.host}:{self.port} took "
                                      f"more than {self.connect_timeout:g}s") from exc
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read_replies(reader))
            # Written at once, before any caller's command can be: all of them must run
            # authenticated and on the right database.
            hello: list[tuple[Arg, ...]] = []
            if self.password:
                hello.append(("AUTH", *(
                    (self.username, self.password) if self.username else (self.password,))))
            if self.db:
                hello.append(("SELECT", self.db))
            try:
                if hello:
                    async with asyncio.timeout(self.connect_timeout):
                        await asyncio.gather(*self._send(hello))
            except TimeoutError as exc:
                await self.close()
                raise ConnectionError(f"Redis at {self.host}:{self.port} did not answer "
                                      f"AUTH/SELECT within {self.connect_timeout:g}s") from exc
            except BaseException:
                await self.close()
                raise

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        task, self._reader_task = self._reader_task, None
        if task is not None:
            task.cancel()
        if writer is not None:
            writer.close()
        self._fail_all(ConnectionError("connection to Redis closed"))

    def _send(self, commands: Sequence[Sequence[Arg]]) -> list[asyncio.Future[Any]]:
        writer = self._writer
        if writer is None:
            raise ConnectionError("not connected to Redis")
        if len(self._pending) + len(commands) > self.max_in_flight:
            raise ConnectionError(f"more than {self.max_in_flight} Redis calls in flight")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self._pending.extend(futures)
        # hiredis's stub types the command as a one-element tuple; it takes any length.
        self._outbox.extend(hiredis.pack_command(tuple(c))  # type: ignore[arg-type]
                            for c in commands)
        if not self._flush_scheduled:
            # One write for every call made in this turn of the event loop: requests that
            # arrived together share the system call (about 0.07 ms each here).
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return futures

    def _flush(self) -> None:
        self._flush_scheduled = False
        data, self._outbox = b"".join(self._outbox), []
        # No connection: it broke since, and the calls in ``data`` were failed with it.
        if self._writer is not None and data:
            self._writer.write(data)

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        parser = hiredis.Reader()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("Redis closed the connection")
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    fut = self._pending.popleft()
                    if fut.done():  # its caller gave up: the reply is dropped, in its turn
                        continue
                    if isinstance(reply, hiredis.ReplyError):
                        fut.set_exception(_error(reply))
                    else:
                        fut.set_result(reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.close()
            self._fail_all(exc if isinstance(exc, ConnectionError) else
                           ConnectionError(f"Redis connection lost: {type(exc).__name__}"))

    def _fail_all(self, exc: Exception) -> None:
        self._outbox = []  # their callers are failed here: never sent on a later connection
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(exc)


def raise_first(replies: list[Any]) -> list[Any]:
    """``execute_many``'s replies, or the first error among them raised."""
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
    return replies


def pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    """A hash as Redis sends it to the mux (``HGETALL``: field, value, field, value...)."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _error(reply: hiredis.ReplyError) -> ResponseError:
    message = str(reply)
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


def command_key(command: Sequence[Arg]) -> Arg | None:
    """The key a command is routed by: the first key of a script, else its first argument
    (every command the scoring path sends names its key first)."""
    name = str(command[0]).upper() if not isinstance(command[0], bytes) else \
        command[0].decode().upper()
    if name in ("EVALSHA", "EVAL"):
        return command[3] if int(command[2]) > 0 else None
    return command[1] if len(command) > 1 else None


def _as_bytes(value: Arg) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class ClusterMux:
    """``RedisMux`` for a Redis Cluster: one pipelined connection per primary, each call
    sent to the node serving its key's slot. Calls made in one turn of the event loop still
    share one write per node, so a payment whose scripts live on three nodes costs three
    concurrent round trips, not three sequential ones.

    The slot map is read from any node (``CLUSTER SLOTS``) at the first call. A call whose
    node answers otherwise than with its reply is sent again, as the cluster says:

    - ``MOVED`` (the slot now lives elsewhere for good: a resharding ended, a replica was
      promoted) or no answer: the map is read again and the call resent;
    - ``ASK`` (the slot is being migrated and its keys are not all here): ``ASKING`` and
      the call, once, to the node named; the map is left as it is, since the slot still
      belongs to this node until the migration ends;
    - ``TRYAGAIN`` (a call naming several keys of a slot being migrated, some here and
      some there, or some not yet written anywhere): sent again after a short pause, until
      the migration ends (then ``MOVED``) or ``TRYAGAIN_PAUSES`` have passed.

    Every script the scoring path runs may be run twice (they check what they already
    recorded), so resending is safe.
    """

    def __init__(self, url: str, password: str | None = None, connect_timeout: float = 0.25,
                 max_in_flight: int = 10_000) -> None:
        self.seed = RedisMux(url, password, connect_timeout, max_in_flight)
        self._opts = (password, connect_timeout, max_in_flight)
        self._url_user = self.seed.username
        self._slots: list[tuple[int, int, tuple[str, int]]] = []
        self._nodes: dict[tuple[str, int], RedisMux] = {}
        self._lock = asyncio.Lock()
        # How many times the map was read: a burst of calls answered MOVED together reads
        # it once, not once each.
        self.map_reads = 0

    async def connect(self) -> None:
        if not self._slots:
            await self.refresh()

    async def refresh(self, seen: int | None = None) -> None:
        """Read the slot map; with ``seen``, only if nobody has since the caller's call."""
        async with self._lock:
            if seen is not None and seen != self.map_reads:
                return
            last: Exception | None = None
            for node in [self.seed, *self._nodes.values()]:
                try:
                    if node._writer is None:
                        await node.connect()
                    rows = await node.execute("CLUSTER", "SLOTS")
                    break
                except (ConnectionError, OSError, TimeoutError) as exc:
                    last = exc
            else:
                raise ConnectionError(f"no Redis Cluster node answers: {last}")
            self._slots = sorted(
                (int(r[0]), int(r[1]), (r[2][0].decode() or self.seed.host, int(r[2][1])))
                for r in rows)
            self.map_reads += 1

    def _node(self, key: Arg | None) -> RedisMux:
        slot = key_slot(_as_bytes(key)) if key is not None else 0
        address = next((a for lo, hi, a in self._slots if lo <= slot <= hi), None)
        if address is None:
            raise ConnectionError(f"no Redis Cluster node serves slot {slot}")
        return self._node_at(address)

    def _node_at(self, address: tuple[str, int]) -> RedisMux:
        node = self._nodes.get(address)
        if node is None:
            password, timeout, in_flight = self._opts
            auth = f"{self._url_user}@" if self._url_user else ""
            node = self._nodes[address] = RedisMux(
                f"redis://{auth}{address[0]}:{address[1]}/0", password, timeout, in_flight)
        return node

    async def execute(self, *args: Arg) -> Any:
        reply = (await self.run_steps([(None, args, ())]))[0]
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Each command to its node, one write per node; error replies returned, not
        raised."""
        return await self.run_steps([(None, c, ()) for c in commands])

    async def evalsha(self, script: bytes, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        reply = (await self.run_steps([(script, keys, args)]))[0]
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def evalsha_many(self, script: bytes, calls: Sequence[Call]) -> list[Any]:
        """Each call to its node, one write per node; raises the first error once all ran."""
        return raise_first(await self.run_steps([(script, keys, args) for keys, args in calls]))

    async def run_steps(self, steps: Sequence[Step]) -> list[Any]:
        """Each step to its node: one write (and one future per step, no task) per node.
        The steps a node did not take (``MOVED``, ``ASK``, ``TRYAGAIN``, no answer) are
        sent again where the cluster says, concurrently. Error replies are returned, not
        raised."""
        await self.connect()
        seen = self.map_reads
        by_node: dict[RedisMux, list[int]] = {}
        for i, step in enumerate(steps):
            by_node.setdefault(self._node(_step_key(step)), []).append(i)
        replies: list[Any] = [None] * len(steps)
        if len(by_node) == 1:  # a batch of one slot's calls, a cluster of one node
            ((node, where),) = by_node.items()
            groups = [await _on(node, steps)]
        elif all(node._writer is not None for node in by_node):
            # A payment's calls on three nodes: each node's queued in this turn of the
            # loop (one write each, all in flight together), then their replies awaited,
            # without a task per node.
            parts = [[steps[i] for i in where] for where in by_node.values()]
            begun = [_begin(node, part) for node, part in zip(by_node, parts, strict=True)]
            groups = [await _complete(node, part, started) for node, part, started in
                      zip(by_node, parts, begun, strict=True)]
        else:  # some node to connect to first
            groups = await asyncio.gather(*(
                _on(node, [steps[i] for i in where]) for node, where in by_node.items()))
        for where, got in zip(by_node.values(), groups, strict=True):
            for i, reply in zip(where, got, strict=True):
                replies[i] = reply
        again = [i for i, reply in enumerate(replies) if _redirected(reply)]
        if again:
            for i, reply in zip(again, await asyncio.gather(*(
                    self._resend(steps[i], replies[i], seen) for i in again)), strict=True):
                replies[i] = reply
        return replies

    async def _resend(self, step: Step, reply: Exception, seen: int) -> Any:
        """The step sent again where ``reply`` says, until a node takes it; its reply, or
        the last redirection once ``MAX_REDIRECTS`` or ``TRYAGAIN_PAUSES`` are spent."""
        # ``redirects`` counts the hops since the last pause: a call that waits out a
        # migration goes source -> ASK -> target -> TRYAGAIN each time round.
        redirects = pauses = lost = 0
        while _redirected(reply) and redirects < MAX_REDIRECTS:
            message = str(reply) if isinstance(reply, ResponseError) else ""
            if message.startswith("ASK "):
                redirects += 1
                reply = await _asking(self._node_at(self._address(message)), step)
                continue
            if message.startswith("TRYAGAIN"):
                if pauses == len(TRYAGAIN_PAUSES):
                    break
                await self._pause(TRYAGAIN_PAUSES[pauses])
                pauses += 1
                redirects = 0
            else:  # MOVED, CLUSTERDOWN, or the node did not answer
                if not message:
                    lost += 1
                    if lost > 1:  # still no answer on the map read since: a node is down
                        break
                redirects += 1
                try:
                    await self.refresh(seen)
                except ConnectionError as exc:
                    return exc
                seen = self.map_reads
            try:
                node = self._node_at(self._address(message)) if message.startswith(
                    "MOVED ") else self._node(_step_key(step))
            except ConnectionError as exc:
                return exc
            reply = (await _on(node, [step]))[0]
        return reply

    def _address(self, message: str) -> tuple[str, int]:
        """The node in ``MOVED <slot> <host>:<port>`` or ``ASK <slot> <host>:<port>`` (an
        empty host, from a node that does not know its address: the seed's, as when the
        slot map is read)."""
        host, _, port = message.split()[2].rpartition(":")
        return host or self.seed.host, int(port)

    async def _pause(self, seconds: float) -> None:
        """Before sending again a step answered ``TRYAGAIN``."""
        await asyncio.sleep(seconds)

    async def close(self) -> None:
        for node in [self.seed, *self._nodes.values()]:
            await node.close()
        self._nodes.clear()
        self._slots = []


# Enough for a MOVED, then an ASK from the new owner, then a second MOVED (a slot migrated
# twice in a row), with room to spare.
MAX_REDIRECTS = 5
# A slot's migration moves its keys a few at a time, milliseconds apart: about a quarter
# of a second in all before the call fails (the scoring path's own deadline cuts it
# shorter: the payment then degrades, as during any other Redis fault).
TRYAGAIN_PAUSES = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128)


def _step_key(step: Step) -> Arg | None:
    script, keys, _ = step
    if script is not None:
        return keys[0] if keys else None
    return command_key(keys)


def _command(step: Step, sha: str) -> Sequence[Arg]:
    script, keys, args = step
    return ("EVALSHA", sha, len(keys), *keys, *args) if script is not None else keys


async def _on(node: RedisMux, steps: Sequence[Step]) -> list[Any]:
    """``node.run_steps``, a connection failure given as every step's reply."""
    try:
        return await node.run_steps(steps)
    except (ConnectionError, OSError) as exc:
        return [exc] * len(steps)


Begun = tuple[list[Sequence[Arg]], list[asyncio.Future[Any]]] | Exception


def _begin(node: RedisMux, steps: Sequence[Step]) -> Begun:
    try:
        return node._begin(steps)
    except ConnectionError as exc:  # too many calls in flight there
        return exc


async def _complete(node: RedisMux, steps: Sequence[Step], begun: Begun) -> list[Any]:
    """``_begin``'s replies, a connection failure given as every step's reply."""
    if isinstance(begun, Exception):
        return [begun] * len(steps)
    try:
        return await node._complete(steps, *begun)
    except (ConnectionError, OSError) as exc:
        return [exc] * len(steps)


async def _asking(node: RedisMux, step: Step) -> Any:
    """One step on the node importing its slot: ``ASKING`` then the step, in one write
    (``ASKING`` holds for the connection's next command only, and nothing else can come
    between two commands sent together)."""
    sha = node._sha(step[0]) if step[0] is not None else ""
    try:
        _, reply = await node.execute_many([("ASKING",), _command(step, sha)])
        if isinstance(reply, NoScriptError) and step[0] is not None:
            await node.execute("SCRIPT", "LOAD", step[0])
            _, reply = await node.execute_many([("ASKING",), _command(step, sha)])
    except (ConnectionError, OSError) as exc:
        return exc
    return reply


def _redirected(reply: Any) -> bool:
    """The call went to a node that does not serve its slot (now, or for these keys), that
    is gone, or that cannot serve it yet."""
    if isinstance(reply, ResponseError):
        return str(reply).startswith(("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN"))
    return isinstance(reply, (ConnectionError, OSError))


Mux = RedisMux | ClusterMux
