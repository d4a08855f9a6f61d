"""The traffic sender (demo traffic, replays) behaves like a gateway: a request whose
connection the server closed without answering is sent again with the same body; one that
keeps failing is counted as an error, not retried forever."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import orjson

from training.simulator import SimulationConfig, simulate
from training.traffic import TRANSPORT_RETRIES, send_traffic


async def serve(drop: Callable[[int], bool]) -> tuple[asyncio.Server, list[bytes]]:
    """An HTTP/1.1 server on a free port: request n (counted from 0) gets its connection
    closed unanswered when ``drop(n)``, else a 200 with an approve. Returns the server and
    the bodies it answered."""
    answered: list[bytes] = []
    count = {"n": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
            if not head:
                break
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            body = await reader.readexactly(length)
            n, count["n"] = count["n"], count["n"] + 1
            if drop(n):
                writer.close()
                return
            answered.append(body)
            reply = orjson.dumps({"decision": "approve"})
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(reply)).encode() + b"\r\n\r\n" + reply)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, answered


def traffic(n: int):  # type: ignore[no-untyped-def]
    frame = simulate(SimulationConfig(days=2, cards=20, terminals=5, seed=4,
                                      start=datetime(2026, 10, 1, tzinfo=UTC)))
    payments = frame.head(n).copy()
    payments["is_fraud"] = False  # payments only
    return payments


def run(drop: Callable[[int], bool], n: int) -> tuple:  # type: ignore[type-arg]
    async def go() -> tuple:  # type: ignore[type-arg]
        server, answered = await serve(drop)
        port = server.sockets[0].getsockname()[1]
        try:
            report = await send_traffic(f"http://127.0.0.1:{port}", traffic(n), rate=200.0,
                                        concurrency=1)
        finally:
            server.close()
        return report, answered

    return asyncio.run(go())


def test_a_dropped_connection_is_sent_again_with_the_same_body() -> None:
    report, answered = run(lambda n: n in (3, 7), 10)
    assert report.retried == 2 and not report.errors
    assert report.sent == 10 and report.decisions["approve"] == 10
    ids = [orjson.loads(b)["payment_id"] for b in answered]
    assert len(ids) == 10 and len(set(ids)) == 10  # each payment answered once, none lost


def test_a_request_that_keeps_failing_is_an_error_after_the_retries() -> None:
    report, answered = run(lambda n: 2 <= n <= 2 + TRANSPORT_RETRIES, 5)
    assert sum(report.errors.values()) == 1 and report.retried == TRANSPORT_RETRIES
    assert report.decisions["approve"] == 4 and len(answered) == 4
