"""Keeps each answer in Redis so that a retried payment_id gets it again (a replay).

The answer is already on its way to the caller; keeping it is off the request's path and
batched: answers given within a few milliseconds of each other go to Redis in one round
trip, rather than one round trip each (a loopback round trip costs about 0.1 ms of CPU on
each side here). Until its answer is kept, a payment_id is marked pending by the feature
script, and a retry arriving meanwhile waits for the answer (``api.scoring.replay``).
"""

from __future__ import annotations

import asyncio
import logging

from model.periodic import raise_if_cancelled
from stores.idempotency import DecisionStore

log = logging.getLogger(__name__)


class DecisionRecorder:
    def __init__(self, store: DecisionStore, window: float = 0.005, timeout: float = 1.0,
                 max_batch: int = 500) -> None:
        self.store = store
        self.window = window
        self.timeout = timeout
        self.max_batch = max_batch
        self._queue: list[tuple[str, str, str, bytes]] = []
        self._waiting = asyncio.Event()

    def add(self, card_id: str, payment_id: str, payload_hash: str, answer: bytes) -> None:
        """``answer``: the response's JSON, as sent to the caller."""
        self._queue.append((card_id, payment_id, payload_hash, answer))
        self._waiting.set()

    async def run(self) -> None:
        """Write what was added, a batch every ``window`` at most, until cancelled."""
        while True:
            await self._waiting.wait()
            await asyncio.sleep(self.window)
            await self.flush()

    async def flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
            if not self._queue:
                self._waiting.clear()
            try:
                async with asyncio.timeout(self.timeout):
                    await self.store.record_decisions(batch)
            except asyncio.CancelledError:
                # Shutting down mid-write: back in the queue, for the final flush.
                self._queue[:0] = batch
                raise
            except Exception as exc:
                raise_if_cancelled(exc)
                # The payments stay pending until their mark expires (their deadline plus
                # PENDING_MARGIN_MS): a retry meanwhile gets 409 ("retry"); after, it is
                # scored again, which counts nothing twice (``stores.idempotency``).
                log.warning("%d decisions not kept for replays: %s", len(batch),
                            type(exc).__name__)
