"""``rules``: the fraud team's rules, tried on the history before they go live."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from model.config import get_settings
from ops.cli.output import console, fail, step_progress, utc

app = typer.Typer(help="Rules: try a draft rule set on the history.", no_args_is_help=True)


@app.command("backtest")
def rules_backtest(
    draft: Path = typer.Argument(..., help="a rule set as PUT /v1/admin/rules takes it (JSON)"),
    start: Annotated[datetime | None, typer.Option("--from", help="first day (UTC)")] = None,
    end: Annotated[datetime | None, typer.Option("--to", help="end, exclusive (UTC)")] = None,
    model: str | None = typer.Option(None, "--model", help="a registered version (default: "
                                                          "the current one)"),
    out: Annotated[Path | None, typer.Option(help="report directory (default: "
                                                  "$FRAUDSTREAM_HOME/rule-backtests/<time>)")]
    = None,
) -> None:
    """Score a draft rule set over a past period, point in time, beside the model: per rule
    its hits, fraud caught and genuine payments hit (count and amount), precision, what it
    catches that the model would have approved, and its overlap with the others."""
    from pydantic import ValidationError

    from model.policy import RuleSet
    from model.registry import Registry, RegistryError
    from stores.history import HistoryStore
    from training.backtest import BacktestConfig, BacktestError
    from training.rules_backtest import rules_backtest as run
    from training.rules_backtest import write_rules_report

    try:
        rules = RuleSet.model_validate_json(draft.read_bytes())
    except OSError as exc:
        raise fail(f"{draft}: {exc.strerror}") from exc
    except ValidationError as exc:
        said = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                         for e in exc.errors())
        raise fail(f"{draft}: not a valid rule set: {said}") from exc
    s = get_settings()
    cfg = BacktestConfig(start=utc(start), end=utc(end), versions=(model,) if model else ())
    out = out or s.home / "rule-backtests" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    with step_progress() as progress:
        try:
            report = run(HistoryStore(s.history_dir), Registry(s.models_dir), rules, cfg,
                         progress)
        except (BacktestError, RegistryError) as exc:
            raise fail(str(exc)) from exc
    write_rules_report(report, out)
    p = report.period
    console.print(f"{len(rules.rules)} draft rules over {p['payments']:,} payments "
                  f"({p['fraud']:,} fraud, {p['fraud_amount']:,.0f} in amount), {p['first']} → "
                  f"{p['last']}, beside model {report.model} ({p['model_alerts']:,} alerts)")
    table = Table("rule", "action", "hits", "fraud", "fraud amount", "genuine",
                  "genuine amount", "precision", "beyond the model", "its amount",
                  title="the draft, rule by rule")
    for name, r in report.rules.iterrows():
        table.add_row(str(name), str(r["action"]), f"{r['hits']:,}", f"{r['fraud_hits']:,}",
                      f"{r['fraud_amount']:,.0f}", f"{r['genuine_hits']:,}",
                      f"{r['genuine_amount']:,.0f}",
                      "" if r["precision"] != r["precision"] else f"{r['precision']:.3f}",
                      f"{r['beyond_model']:,}", f"{r['beyond_model_amount']:,.0f}")
    console.print(table)
    console.print(f"per-day hits, overlaps, every payment hit and a plot in {out}")
