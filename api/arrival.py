"""When a request's first byte reached this process: the start of its deadline.

uvicorn hands a request to the app once its headers are parsed, and in a busy process the
app runs it later still; only the HTTP protocol sees the first byte. This protocol is
uvicorn's own (httptools), noting the time when a message begins, as an ASGI extension of
the request's scope. Served by anything else (a test client), the app's first sight of the
request stands in.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

EXTENSION = "fraudstream.arrival"


class TimedHttpToolsProtocol(HttpToolsProtocol):
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {EXTENSION: {"perf_counter": time.perf_counter()}}


def arrived(scope: Mapping[str, Any]) -> float:
    """``time.perf_counter()`` at the request's first byte, or now if not noted."""
    extensions = scope.get("extensions")
    noted = extensions.get(EXTENSION) if extensions else None
    return noted["perf_counter"] if noted else time.perf_counter()
