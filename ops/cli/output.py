"""What every command prints with: the consoles, the error exit, progress bars, and the
parsing helpers the commands share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)


@contextmanager
def step_progress(close_previous: bool = False) -> Iterator[Callable[[str, int | None], None]]:
    """A bar per step of a long use case (``progress(step, advance)`` as training and
    backtests report it); every bar shown complete at the end. ``close_previous``: a new
    step completes the bars before it."""
    with progress_bar() as bar:
        tasks: dict[str, TaskID] = {}

        def complete() -> None:
            for t in tasks.values():
                bar.update(t, completed=bar.tasks[t].total or 1, total=bar.tasks[t].total or 1)

        def progress(step: str, advance: int | None) -> None:
            if step not in tasks:
                if close_previous:
                    complete()
                tasks[step] = bar.add_task(step, total=None)
            if advance:
                bar.advance(tasks[step], advance)

        yield progress
        complete()


def renames(mapping: list[str]) -> dict[str, str]:
    """``--map SOURCE=TARGET`` options as a column mapping."""
    out: dict[str, str] = {}
    for item in mapping:
        source, sep, target = item.partition("=")
        if not sep or not source or not target:
            raise fail(f"--map {item!r}: write SOURCE=TARGET, e.g. --map tx_id=payment_id")
        out[source] = target
    return out


def utc(value: datetime | None) -> float | None:
    """A date option as epoch seconds; a date without a zone is UTC."""
    return value.replace(tzinfo=value.tzinfo or UTC).timestamp() if value else None


METRIC_COLUMNS = (("auc_roc", "AUC"), ("average_precision", "AP"),
                  ("card_precision_at_k", "card P@k/day"),
                  ("card_precision_at_k_every_day", "card P@k/day, found again"),
                  ("recall_at_budget", "recall@budget"),
                  ("fraud_amount_per_alert", "fraud amount/alert"))


def metrics_table(title: str, comparison: dict[str, dict[str, float]]) -> Table:
    """Models side by side, each metric with its 95% interval."""
    if not console.is_terminal:  # a log or a pipe: no reason to squeeze the intervals
        console.width = max(console.width, 150)
    table = Table("model", *(label for _, label in METRIC_COLUMNS), title=title)
    for name, m in comparison.items():
        cells = []
        for key, _ in METRIC_COLUMNS:
            value = m.get(key, float("nan"))
            low, high = m.get(f"{key}_low"), m.get(f"{key}_high")
            if abs(value) >= 10:  # an amount
                ci = f" [{low:,.0f}, {high:,.0f}]" if low is not None and high is not None else ""
                cells.append(f"{value:,.1f}{ci}")
            else:
                ci = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
                cells.append(f"{value:.3f}{ci}")
        table.add_row(name.replace("_", " "), *cells)
    return table
