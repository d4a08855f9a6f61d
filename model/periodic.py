"""Background work that repeats: one loop for every "do this every N seconds, whatever
fails, until shut down" of the services (the API's model, rules and freshness polls, its
spool drain and sync, the verdict resend).

``every(period, step, failed=...)`` runs ``step`` after ``delay`` seconds (one period by
default), then again ``period`` seconds after each run ends. A step that raises is logged
(its exception's type, at ``level``) and the loop goes on: a poll must outlive a Redis or
Kafka outage. Cancelling the task stops it, even when a client library turned the
cancellation into an error of its own (see ``raise_if_cancelled``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

_log = logging.getLogger(__name__)


def raise_if_cancelled(exc: BaseException) -> None:
    """Call in an ``except Exception`` of a loop that must outlive outages. redis-py may turn
    a cancellation that lands during a command into another error (the connection is reset
    under the read); such a loop would swallow its own shutdown and never end."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


async def every(
    period: float,
    step: Callable[[], Awaitable[object]],
    *,
    failed: str,
    log: logging.Logger = _log,
    level: int = logging.WARNING,
    delay: float | None = None,
) -> NoReturn:
    """Run ``step`` every ``period`` seconds (the pause between one run's end and the next
    one's start) until cancelled. ``failed`` starts the log line of a run that raised;
    ``delay``: seconds before the first run (``None``: one period; 0: at once)."""
    await asyncio.sleep(period if delay is None else delay)
    while True:
        try:
            await step()
        except Exception as exc:
            raise_if_cancelled(exc)
            log.log(level, "%s: %s", failed, type(exc).__name__)
        await asyncio.sleep(period)
