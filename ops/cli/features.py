"""``features``: the installation's feature catalogue (the default one plus the team's
``features.toml``)."""

from __future__ import annotations

import typer
from rich.table import Table

from model.catalogue import Catalogue, CatalogueError
from model.config import Settings, get_settings
from ops.cli.output import console, fail, progress_bar

app = typer.Typer(help="The feature catalogue: the default one and the team's own.",
                  no_args_is_help=True)


def _catalogue(s: Settings) -> Catalogue:
    from model.catalogue_file import installation_catalogue

    try:
        return installation_catalogue(s.features_file, s.features_cost_budget)
    except CatalogueError as exc:
        raise fail(str(exc)) from exc


@app.command("list")
def features_list(group: str = typer.Option("", help="only this group (card, links...)")
                  ) -> None:
    """Every feature of the catalogue: name, group, what it is."""
    s = get_settings()
    catalogue = _catalogue(s)
    features = [f for f in catalogue.features if not group or f.group == group]
    if not features:
        groups = sorted({f.group for f in catalogue.features})
        raise fail(f"no feature in group {group!r}; groups: {', '.join(groups)}")
    table = Table("feature", "group", "kind", "description")
    for f in features:
        table.add_row(f.name, f.group, type(f).__name__.lower(), f.description)
    console.print(table)
    source = s.features_file if s.features_file and s.features_file.exists() else None
    console.print(f"{len(features)} features" + (f" (default catalogue and {source})"
                                                 if source else " (default catalogue)"))


@app.command("check")
def features_check(sample: int = typer.Option(5000, min=10, max=200_000,
                                              help="newest payments of the history to use")
                   ) -> None:
    """Check the catalogue: valid, within its cost budget, and the live Redis store equal to
    the backfill on a sample of this installation's history (under keys of its own)."""
    from training.feature_check import check

    s = get_settings()
    catalogue = _catalogue(s)
    with progress_bar() as bar:
        task = bar.add_task("payments through Redis", total=None)
        try:
            report = check(s, catalogue, sample, lambda n: bar.advance(task, n))
        except ValueError as exc:
            raise fail(str(exc)) from exc
    table = Table("feature", "group", "present", "distinct", "mean", "online = offline")
    for row in report.rows:
        parity = "-" if row.online_differs is None else (
            "yes" if row.online_differs == 0 else f"[red]{row.online_differs} differ")
        table.add_row(row.feature, row.group, f"{row.present:.0%}", str(row.distinct),
                      f"{row.mean:.4g}", parity)
    console.print(table)
    console.print(f"{report.payments:,} payments; {report.commands_per_payment} Redis commands "
                  f"per payment at most (budget {s.features_cost_budget}); "
                  f"{report.online_us_per_payment:.0f} µs per payment through Redis, batched")
    if not report.parity_ok:
        raise fail("the online store differs from the backfill: a defect, please report it")
    console.print("catalogue OK")
