"""``fraudstream api``: the scoring API served by uvicorn, in one or more processes."""

from __future__ import annotations

import os
import shutil

from model.config import Settings


def serve(settings: Settings, workers: int | None = None) -> None:
    """Serve in the foreground until stopped; ``workers`` processes behind the one port
    (default ``settings.api_workers``)."""
    import uvicorn

    workers = workers or settings.api_workers
    if workers > 1:
        # Each process counts in files of its own here; /metrics adds them up. Emptied at
        # every start: the counts of processes gone are not this run's.
        shared = settings.home / "run" / "prometheus"
        shutil.rmtree(shared, ignore_errors=True)
        shared.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(shared.resolve())
    # No proxy-headers layer: nothing here reads the client's address, and it was one
    # more ASGI call per request. No Server header: it tells callers what to attack.
    uvicorn.run("api.main:app_factory", factory=True, host=settings.api_host,
                port=settings.api_port, workers=workers, log_level="warning",
                access_log=False, proxy_headers=False, server_header=False,
                # uvicorn's httptools protocol, noting each request's first byte (its
                # deadline starts there, ``api.arrival``)
                http="api.arrival:TimedHttpToolsProtocol")
