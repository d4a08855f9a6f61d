"""Running the service in the foreground: ``api`` and ``stream``."""

from __future__ import annotations

import typer

from model.config import get_settings
from ops.cli.output import console


def api(workers: int | None = typer.Option(None, min=1, help="API processes behind the one "
                                                             "port (default: "
                                                             "FRAUDSTREAM_API_WORKERS)")
        ) -> None:
    """Run the scoring API in the foreground."""
    from api.server import serve

    serve(get_settings(), workers)


def stream() -> None:
    """Run the stream worker (faust) in the foreground; waits for Kafka first."""
    from stream.worker import run

    s = get_settings()
    run(s, lambda waited: console.print(f"waiting for Kafka at {s.kafka_bootstrap} "
                                        f"({waited:.0f} s)"))


def register(app: typer.Typer) -> None:
    app.command()(api)
    app.command()(stream)
