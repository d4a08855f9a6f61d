"""``monitor``: drift and freshness as the API reports them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from model.config import get_settings
from ops.cli.output import console, fail


def monitor(
    plot_to: Annotated[Path | None, typer.Option("--plot", help="where the plot goes "
                                                 "(default: $FRAUDSTREAM_HOME/monitor/"
                                                 "<time>.png)")] = None,
    key: Annotated[str | None, typer.Option(
        envvar="FRAUDSTREAM_MONITOR_KEY", show_default=False,
        help="an API key with the metrics scope (fraudstream keys create NAME --scope "
             "metrics); not needed when FRAUDSTREAM_METRICS_PUBLIC is set")] = None,
) -> None:
    """Drift and freshness as the API sees them: health, decisions, score and feature PSI
    against the training window, stream and label lag, label delays, the review queue."""
    import httpx

    from ops.monitor import plot, psi_reading, scrape

    s = get_settings()
    try:
        with httpx.Client(base_url=s.api_url, timeout=5.0,
                          headers={"X-API-Key": key} if key else {}) as client:
            snap = scrape(client)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code in (401, 403):
            raise fail(f"the API refused to show its metrics ({exc.response.status_code}): "
                       "pass --key (or FRAUDSTREAM_MONITOR_KEY) with a key of the metrics "
                       "scope") from exc
        raise fail(f"the API at {s.api_url} answered {exc.response.status_code}") from exc
    except httpx.HTTPError as exc:
        raise fail(f"the API at {s.api_url} did not answer ({type(exc).__name__}): is it up?"
                   ) from exc
    h = snap.health
    colour = "green" if h.get("status") == "ok" else "yellow"
    console.print(f"health: [{colour}]{h.get('status')}[/]  model {h.get('model_version')}  "
                  f"kafka {h.get('kafka')}")
    warnings = h.get("warnings")
    for warning in warnings if isinstance(warnings, list) else []:
        console.print(f"  [yellow]![/] {warning}")
    g = snap.gauges
    total = sum(snap.decisions.values())
    table = Table("measure", "value", title="freshness and decisions")
    table.add_row("stream lag", f"{g.get('stream_lag_seconds', float('nan')):.2f} s")
    table.add_row("label lag (newest payment - newest label applied)",
                  f"{g.get('label_lag_seconds', float('nan')) / 86400:.2f} d")
    table.add_row("review queue", f"{g.get('review_queue_size', 0):.0f} cases, oldest "
                                  f"{g.get('review_queue_oldest_seconds', 0) / 3600:.1f} h")
    for decision in ("approve", "review", "decline"):
        n = snap.decisions.get(decision, 0.0)
        table.add_row(f"{decision}", f"{n:,.0f} ({n / total:.2%})" if total else "0")
    console.print(table)
    if snap.psi:
        table = Table("input", "PSI", "reading", title="drift against the training window")
        for name, value in sorted(snap.psi.items(), key=lambda kv: -kv[1]):
            table.add_row(name, f"{value:.3f}", psi_reading(value))
        console.print(table)
    else:
        console.print("no drift reading yet: the API measures it once it has scored 500 "
                      "payments with the current model")
    out = plot_to or s.home / "monitor" / f"{datetime.now(UTC):%Y%m%dT%H%M%S}.png"
    console.print(f"plot: {plot(snap, out)}")


def register(app: typer.Typer) -> None:
    app.command()(monitor)
