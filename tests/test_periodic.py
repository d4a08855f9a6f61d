"""model.periodic.every: the loop behind the API's background work."""

import asyncio
import itertools
import logging
import time

import pytest

from model.periodic import every


def test_it_survives_a_failing_run_and_keeps_its_period(caplog):
    starts: list[float] = []

    async def step() -> None:
        starts.append(time.monotonic())
        if len(starts) == 2:
            raise ConnectionError("Redis away")

    async def go() -> None:
        task = asyncio.create_task(every(0.05, step, failed="step failed", delay=0))
        await asyncio.sleep(0.52)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="model.periodic"):
        asyncio.run(go())
    assert starts[0] - t0 < 0.03  # delay=0: at once
    # every 0.05 s for 0.52 s, the failed run included (fewer on a busy machine)
    assert 5 <= len(starts) <= 11
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.045
    assert [r.getMessage() for r in caplog.records] == ["step failed: ConnectionError"]


def test_the_first_run_waits_a_period_and_cancel_stops_it_mid_run():
    runs: list[str] = []

    async def step() -> None:
        runs.append("started")
        await asyncio.sleep(10)
        runs.append("finished")

    async def go() -> None:
        task = asyncio.create_task(every(0.1, step, failed="step failed"))
        await asyncio.sleep(0.05)
        assert runs == []  # no delay given: one period first
        await asyncio.sleep(0.1)
        assert runs == ["started"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(go())
    assert runs == ["started"]


def test_an_error_that_hides_a_cancellation_still_stops_the_loop():
    # redis-py may turn a cancellation during a command into a ConnectionError.
    async def step() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ConnectionError("connection reset") from None

    async def go() -> None:
        task = asyncio.create_task(every(0.01, step, failed="step failed", delay=0))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 1.0)

    asyncio.run(go())
