"""``history``: the recorded history (Parquet + DuckDB)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from model.config import get_settings
from ops.cli.output import console, err, fail, renames
from training.backfill import BackfillResult
from training.importer import DEFAULT_LABEL_DELAY_DAYS, ImportResult

app = typer.Typer(help="The recorded history (Parquet + DuckDB).", no_args_is_help=True)


@app.command("import")
def history_import(
    file: Path = typer.Argument(..., help="CSV or Parquet of past payments"),
    mapping: Annotated[list[str], typer.Option("--map", help="rename a column: SOURCE=TARGET")]
    = [],  # noqa: B006 -- typer reads the default, never mutates it
    label_delay_days: float = typer.Option(DEFAULT_LABEL_DELAY_DAYS,
                                           help="label delay when the file gives none"),
) -> None:
    """Import past payments with their fraud labels into the history.

    The whole file is checked first (a bad file changes nothing); payments already in the
    history are skipped, so importing the same file again adds nothing."""
    from training.importer import ImportError_

    try:
        result = import_with_progress(file, renames(mapping), label_delay_days)
    except ImportError_ as exc:
        raise fail(f"{file}: {exc}; nothing was imported") from exc
    show_import(result)


def import_with_progress(file: Path, mapping: dict[str, str], label_delay_days: float
                         ) -> ImportResult:
    """``import_history`` into the configured history, its steps shown as bars."""
    from rich.progress import (
        BarColumn,
        Progress,
        TaskID,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from stores import pii_key
    from stores.history import HistoryStore
    from training.importer import Progress as Step
    from training.importer import import_history

    # Transient: once done, the bars give way to the result (or to the one-line error).
    # Off when stderr is no terminal: there it would only leave an empty line.
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                   TextColumn("{task.completed:,.0f} rows"), TimeElapsedColumn(),
                   console=err, transient=True, disable=not err.is_terminal)
    tasks: dict[str, TaskID] = {}

    def show(step: Step) -> None:
        if step.step not in tasks:
            tasks[step.step] = bar.add_task(step.step, total=step.total)
        bar.update(tasks[step.step], completed=step.rows, total=step.total)

    s = get_settings()
    try:
        key = pii_key.load(s)  # e-mails and IPs go into the history as their pseudonyms
    except pii_key.PiiKeyError as exc:
        raise fail(f"{exc}; nothing was imported") from exc
    with bar:
        return import_history(HistoryStore(s.history_dir), file, mapping,
                              label_delay_days, progress=show, pii_key=key)


def show_import(result: ImportResult) -> None:
    span = (f" ({result.first:%Y-%m-%d} to {result.last:%Y-%m-%d})"
            if result.first is not None and result.last is not None else "")
    console.print(f"imported {result.payments:,} payments{span} and {result.labels:,} labels "
                  f"({result.fraud:,} fraud) into {get_settings().history_dir}")
    if result.skipped_payments or result.skipped_labels:
        console.print(f"skipped {result.skipped_payments:,} payments and "
                      f"{result.skipped_labels:,} labels already in the history")
    if result.future_labels:
        console.print(f"left out {result.future_labels:,} labels reported after now")


@app.command("backfill-online")
def history_backfill_online(
    if_empty: bool = typer.Option(False, "--if-empty",
                                  help="only if the online store knows no card yet"),
) -> None:
    """Load the recent history into the online feature store (Redis), and open again the
    review cases of the last 30 days that have no label yet (a lost Redis lost them)."""
    show_backfill(backfill_with_status(if_empty))


def backfill_with_status(if_empty: bool) -> BackfillResult | None:
    """``warm_online`` of the configured Redis, with a spinner; Redis unreachable fails."""
    from model.catalogue import CatalogueError
    from training.backfill import warm_online

    s = get_settings()
    with console.status("loading history into Redis…"):
        try:
            return asyncio.run(warm_online(s, if_empty=if_empty))
        except OSError as exc:
            raise fail(f"Redis at {s.redis_url} unreachable: {exc}") from exc
        except CatalogueError as exc:
            raise fail(str(exc)) from exc


def show_backfill(result: BackfillResult | None) -> None:
    if result is None:
        console.print("online store already in use: left as it is")
        return
    console.print(f"online store warmed with {result.payments:,} payments and "
                  f"{result.fraud_labels:,} fraud labels; "
                  f"{result.review_cases:,} review cases opened again; the catalogue's "
                  f"state with {result.catalogue_payments:,} payments")


@app.command("stats")
def history_stats() -> None:
    """Payments, fraud (by each payment's latest label) and decisions per day."""
    from stores.history import HistoryStore

    df = HistoryStore(get_settings().history_dir).daily_stats()
    table = Table(*df.columns, title="history")
    for row in df.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console.print(table)
