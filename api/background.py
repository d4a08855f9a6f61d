"""What the background loops of an API process share."""

from __future__ import annotations

import asyncio


def raise_if_cancelled(exc: BaseException) -> None:
    """Call in an ``except Exception`` of a loop that must outlive outages. redis-py may turn
    a cancellation that lands during a command into another error (the connection is reset
    under the read); such a loop would swallow its own shutdown and never end."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc
