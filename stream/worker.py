"""``fraudstream stream``: the faust worker, started once Kafka serves our topics."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from model.config import Settings
from stores import topics


def wait_for_kafka(settings: Settings, waiting: Callable[[float], None],
                   sleep: Callable[[float], None] = time.sleep) -> None:
    """Until the topics are ready (created here if missing): faust exits when it cannot
    bootstrap, and a worker (re)started while Kafka is down or still starting must wait
    for it, not die. ``waiting(seconds waited)`` is told every ten seconds."""
    waited = 0.0
    while not topics.kafka_answers(settings):
        if waited % 10 < 1:
            waiting(waited)
        sleep(1.0)
        waited += 1.0


def run(settings: Settings, waiting: Callable[[float], None]) -> None:
    """Wait for Kafka, then run the worker in the foreground until stopped."""
    import mode.loop

    # Before faust is imported, which sets up the loop: asyncio's own selector loop was a
    # sixth of the worker's CPU in a profile at 1,000 payments/s (epoll, callbacks, writes).
    mode.loop.use("uvloop")
    from stream.app import app as faust_app

    wait_for_kafka(settings, waiting)
    sys.argv = [sys.argv[0], "worker", "--loglevel", "info"]
    faust_app.main()
