"""``history``: the recorded history (Parquet + DuckDB)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from model.config import Settings, get_settings
from ops.cli.output import console, err, fail, renames
from training.backfill import BackfillResult
from training.importer import DEFAULT_LABEL_DELAY_DAYS, ImportResult

if TYPE_CHECKING:
    from stores.audit_archive import Verification
    from stores.history import HistoryStore

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


@app.command("audit")
def history_audit(
    trail: str | None = typer.Option(None, help="policy (rules and lists), reviews or keys "
                                                "(API keys created, rotated, limited, revoked)"),
    actor: str | None = typer.Option(None, help="only this key's (or analyst's) entries"),
    since: datetime | None = typer.Option(None, help="only entries from then on (UTC)"),
    limit: int = typer.Option(50, min=1, max=100_000, help="newest entries shown"),
    verify: bool = typer.Option(False, "--verify",
                                help="compare the copy with Redis's trails: every copied "
                                     "entry since removed from Redis is named (exit 1)"),
) -> None:
    """The audit trails' append-only copy in the history: who changed which rules and lists,
    who claimed and decided which review case, who created, rotated, limited or revoked
    which API key. The stream worker copies every new entry of the first two from Redis
    within seconds (FRAUDSTREAM_AUDIT_COPY_SECONDS); `keys` writes its own at once."""
    from stores.audit_archive import ALL_TRAILS
    from stores.history import HistoryStore

    if trail is not None and trail not in ALL_TRAILS:
        raise fail(f"--trail {trail!r}: one of {', '.join(ALL_TRAILS)}")
    s = get_settings()
    history = HistoryStore(s.history_dir)
    if verify:
        show_verification(asyncio.run(verify_audit(s, history)))
        return
    where: list[str] = ["TRUE"]
    params: list[object] = []
    for column, value in (("trail", trail), ("actor", actor)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        where.append("logged_at >= ?")
        params.append(since.replace(tzinfo=since.tzinfo or UTC))
    df = history.query(
        f"SELECT logged_at, trail, action, actor, entry FROM audit WHERE {' AND '.join(where)} "
        f"ORDER BY logged_at DESC, entry_id DESC LIMIT {limit}", params)
    table = Table("at (UTC)", "trail", "action", "actor", "entry", title="audit (history)")
    for row in df.itertuples(index=False):
        table.add_row(f"{row.logged_at:%Y-%m-%d %H:%M:%S}", str(row.trail), str(row.action),
                      str(row.actor), str(row.entry))
    console.print(table)
    if df.empty:
        console.print("no entries (the stream worker copies them from Redis; is it running?)")


async def verify_audit(s: Settings, history: HistoryStore) -> Verification:
    from stores import redis_client
    from stores.audit_archive import AuditArchive

    redis = redis_client.connect(s)
    try:
        return await AuditArchive(redis, history).verify()
    except OSError as exc:
        raise fail(f"Redis at {s.redis_url} unreachable: {exc}") from exc
    finally:
        await redis.aclose()


def show_verification(result: Verification) -> None:
    table = Table("trail", "in the history", "not copied yet", "copied, gone from Redis",
                  title="audit copy against Redis")
    for trail, copied in result.copied.items():
        gone = result.missing_from_redis.get(trail, [])
        table.add_row(trail, f"{copied:,}", f"{result.not_copied_yet.get(trail, 0):,}",
                      f"{len(gone):,}" + (f" (first {', '.join(gone[:3])})" if gone else ""))
    console.print(table)
    for trail in result.stream_gone:
        err.print(f"[bold red]{trail}:[/] the Redis stream is gone or empty; the history "
                  "holds its entries")
    if not result.intact:
        err.print("[bold red]the trails in Redis were changed behind the service:[/] the "
                  "history's copy (`fraudstream history audit`) is the record")
        raise typer.Exit(code=1)
    console.print("intact: every copied entry is still in Redis")
