"""Admission control and the first byte: unit tests of the shedding rule, and uvicorn's
protocol noting a request's first byte before its body has come (no Redis, no Kafka)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import orjson
import uvicorn

from api.admission import Admission, LoopLag
from api.arrival import TimedHttpToolsProtocol, arrived

BUDGET = 0.25


def feed(adm: Admission, waits: list[float], start: float, step: float) -> list[bool]:
    return [adm.admit(w, BUDGET, start + i * step) for i, w in enumerate(waits)]


def test_a_standing_queue_sheds_the_late_and_serves_the_timely():
    adm = Admission(share=0.2, interval_s=0.1, min_requests=16)
    # an interval in which every one of 40 requests waited 100 ms (40% of its deadline)
    assert all(feed(adm, [0.1] * 40, 0.0, 0.002))  # nothing shed before the queue is known
    admitted = feed(adm, [0.1] * 10 + [0.01] * 10, 0.1, 0.002)
    assert adm.standing
    assert admitted == [False] * 10 + [True] * 10
    # the queue drained (an interval whose least wait was under the share): no more shedding
    assert all(feed(adm, [0.1] * 5, 0.2, 0.002)) and not adm.standing


def test_a_burst_that_drains_and_a_lone_slow_request_shed_nothing():
    burst = Admission(share=0.2)
    # waits grow through a burst but the interval's least is small: no standing queue
    assert all(feed(burst, [0.001] + [0.2] * 40, 0.0, 0.002))
    assert all(feed(burst, [0.2] * 10, 0.1, 0.002))
    lone = Admission(share=0.2, min_requests=16)
    # a busy machine held a few requests: too few to mean a queue
    assert all(feed(lone, [0.2] * 5, 0.0, 0.01))
    assert all(feed(lone, [0.2] * 5, 0.1, 0.01))


def test_waits_count_against_each_requests_own_deadline_and_zero_turns_it_off():
    adm = Admission(share=0.2)
    feed(adm, [0.1] * 40, 0.0, 0.002)
    # the queue stands; a caller with a 10 s deadline has not waited 20% of it
    assert adm.admit(0.1, 10.0, 0.1) is True
    assert adm.admit(0.1, BUDGET, 0.101) is False
    off = Admission(share=0.0)
    assert all(feed(off, [0.2] * 40, 0.0, 0.002) + feed(off, [0.2] * 40, 0.1, 0.002))


def test_the_loop_lag_is_how_long_a_busy_round_kept_sockets_unread():
    async def main() -> tuple[float, float]:
        lag = LoopLag(period_s=0.005)
        task = asyncio.create_task(lag.run())
        await asyncio.sleep(0.05)
        idle = lag.lag
        time.sleep(0.08)  # one round of the loop busy for 80 ms, as a saturated process's
        await asyncio.sleep(0.001)  # the timer overdue runs in the next round
        busy = lag.lag
        task.cancel()
        return idle, busy

    idle, busy = asyncio.run(main())
    assert idle < 0.02  # a busy CI machine may delay a timer a little, not 80 ms
    assert 0.06 < busy < 0.2


async def _echo_wait(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    first = arrived(scope)
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = orjson.dumps({"waited": time.perf_counter() - first,
                         "noted": "extensions" in scope})
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def test_the_deadline_starts_at_the_first_byte_not_when_the_body_is_complete():
    """uvicorn with the project's protocol: a request whose body comes 300 ms after its
    first bytes has waited those 300 ms when the app has it whole."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_echo_wait, host="127.0.0.1", port=port,
                                           http=TimedHttpToolsProtocol, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        body = b'{"x": 1}'
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n{"
                         % len(body))
            time.sleep(0.3)
            conn.sendall(body[1:])
            reply = b""
            while b'"noted"' not in reply:
                chunk = conn.recv(4096)
                assert chunk, reply
                reply += chunk
        answer = orjson.loads(reply.split(b"\r\n\r\n", 1)[1])
        assert answer["noted"] is True
        # the 300 ms between the first bytes and the rest (less the time uvicorn took to
        # read the first ones); counted from the whole body, it would be about 0
        assert answer["waited"] >= 0.25, answer
    finally:
        server.should_exit = True
        thread.join(10)
