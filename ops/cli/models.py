"""``model``: the registry's versions, the champion and the challenger in shadow."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from typing import Annotated

import typer
from rich.table import Table

from model.config import get_settings
from ops.cli.output import console, fail, metrics_table, utc
from training.evaluate import EvalConfig

app = typer.Typer(help="The model registry.", no_args_is_help=True)


@app.command("list")
def model_list(runs: int = typer.Option(10, min=0, help="also show the last N retraining "
                                                         "runs")) -> None:
    """Registered versions (champion ●, challenger in shadow ◐), their test metrics, and
    the last retraining runs."""
    from model.registry import Registry

    registry = Registry(get_settings().models_dir)
    current, challenger = registry.current_version(), registry.challenger_version()
    table = Table("version", "role", "AUC", "AP", "card P@k", "test window", "fitted on")
    for mv in registry.versions():
        m, w = mv.metadata.get("metrics", {}), mv.metadata.get("training", {})
        role = ("● champion" if mv.version == current
                else "◐ challenger" if mv.version == challenger else "")
        table.add_row(mv.version, role,
                      f"{m.get('auc_roc', float('nan')):.4f}",
                      f"{m.get('average_precision', float('nan')):.4f}",
                      f"{m.get('card_precision_at_k', float('nan')):.4f}",
                      f"{w.get('test_start', '')[:10]} → {w.get('test_end', '')[:10]}",
                      f"{w.get('refit_start', '')[:10]} → {w.get('refit_end', '')[:10]}")
    console.print(table)
    if runs:
        history = registry.runs(last=runs)
        if not history:
            console.print("no retraining run yet (`fraudstream retrain-worker`)")
            return
        table = Table("run", "kind", "trigger", "clock", "status", "version",
                      "trained on", "tested on", "AP", "s", "decision",
                      title="retraining runs")
        for r in history:
            w, m = r.get("window") or {}, r.get("metrics") or {}
            ap = m.get("average_precision")
            table.add_row(r["run"][:22], r.get("kind", ""), r.get("trigger", ""),
                          str(r.get("clock_iso", ""))[:16], r.get("status", ""),
                          r.get("version") or "",
                          f"{w['train_start'][:10]} → {w['train_end'][:10]}" if w else "",
                          f"{w['test_start'][:10]} → {w['test_end'][:10]}" if w else "",
                          f"{ap:.4f}" if ap is not None else "",
                          str(r.get("duration_s", "")),
                          r.get("decision") or r.get("error") or "")
        console.print(table)


@app.command("promote")
def model_promote(
    version: str = typer.Argument(..., help="a registered version (`model list`)"),
    why: str = typer.Option(..., "--why", help="the reason, kept in the promotion log"),
) -> None:
    """Make VERSION the champion by hand (every API process within seconds); logged with
    who ($USER) and why. A challenger promoted leaves the shadow."""
    from model.registry import Registry, RegistryError

    registry = Registry(get_settings().models_dir)
    was = registry.current_version()
    if not why.strip():
        raise fail("--why must say why: it is what the promotion log keeps")
    try:
        registry.promote(version, by=_who(), why=why.strip())
    except RegistryError as exc:
        raise fail(str(exc)) from exc
    console.print(f"promoted: {version} is the champion (was {was})")


@app.command("rollback")
def model_rollback(
    why: str = typer.Option("", "--why", help="the reason, kept in the promotion log"),
) -> None:
    """Make the previous champion current again (every API process within seconds). A
    second rollback goes one champion further back."""
    from model.registry import Registry, RegistryError

    registry = Registry(get_settings().models_dir)
    was = registry.current_version()
    try:
        mv = registry.rollback(by=_who(), why=why.strip())
    except RegistryError as exc:
        raise fail(str(exc)) from exc
    console.print(f"rolled back: {mv.version} is current again (was {was})")


def _who() -> str:
    """Who changed the champion by hand, for the promotion log."""
    return f"cli:{os.environ.get('USER') or os.environ.get('LOGNAME') or 'unknown'}"


@app.command("shadow")
def model_shadow(
    version: str = typer.Argument(None, help="the version to score in shadow"),
    clear: bool = typer.Option(False, "--clear", help="end the shadow: no challenger"),
) -> None:
    """Put a registered version in shadow as the challenger (or end the shadow)."""
    from model.registry import Registry, RegistryError

    registry = Registry(get_settings().models_dir)
    if clear:
        registry.clear_challenger()
        console.print("no challenger in shadow")
        return
    if version is None:
        raise fail("give a VERSION, or --clear")
    try:
        registry.set_challenger(version, since=time.time())
    except RegistryError as exc:
        raise fail(str(exc)) from exc
    console.print(f"{version} is in shadow: the stream scores it beside the champion")


@app.command("compare")
def model_compare(
    version: str = typer.Argument(None, help="default: the challenger in shadow"),
    maturity_days: float | None = typer.Option(
        None, min=0.0, help="payments younger than this are left out (default: "
                            "FRAUDSTREAM_MATURITY_DAYS, else the observed label delays' "
                            "90th percentile)"),
    now: Annotated[datetime | None, typer.Option(help="compare as of (default: now; with "
                                                      "FRAUDSTREAM_RETRAIN_CLOCK=events the "
                                                      "newest payment)")] = None,
    k: int = typer.Option(EvalConfig.k, min=1, help="cards investigators check per day"),
) -> None:
    """Champion against challenger on the shadow-scored payments whose labels matured."""
    from model.registry import Registry
    from stores.history import HistoryStore
    from training.retrain import RetrainPolicy, RetrainWorker
    from training.shadow import CompareError, compare

    s = get_settings()
    store, registry = HistoryStore(s.history_dir), Registry(s.models_dir)
    worker = RetrainWorker(store, registry, RetrainPolicy(
        maturity_days=maturity_days if maturity_days is not None else s.maturity_days,
        clock=s.retrain_clock))
    at = utc(now) or worker.now()
    try:
        result = compare(store, registry, at, worker.maturity(), EvalConfig(k=k), version)
    except CompareError as exc:
        raise fail(str(exc)) from exc
    console.print(f"challenger {result.challenger} against champion(s) "
                  f"{', '.join(result.champions) or '-'}: {result.payments:,} shadow-scored "
                  f"payments paid before {result.matured_before[:16]} (labels matured), "
                  f"{result.fraud:,} fraud")
    if not result.metrics:
        console.print("[yellow]nothing to compare yet:[/] the shadow needs matured payments "
                      "with fraud among them")
        return
    console.print(metrics_table(f"same payments, same features (k = {k}, 95% intervals)",
                                result.metrics))
    g = result.gain
    verdict = "[green]significant[/]" if result.significant else "not significant"
    console.print(f"AP gain of the challenger: {g['gain']:+.4f} (95% CI {g['low']:+.4f} .. "
                  f"{g['high']:+.4f}): {verdict}")


@app.command("show")
def model_show(version: str = typer.Argument(None, help="default: the current one")) -> None:
    from model.registry import Registry, RegistryError

    registry = Registry(get_settings().models_dir)
    try:
        mv = registry.get(version) if version else registry.current()
    except RegistryError as exc:
        raise fail(str(exc)) from exc
    if mv is None:
        raise fail("no model is current yet: run `fraudstream train`")
    console.print_json(json.dumps({k: v for k, v in mv.metadata.items() if k != "reference"},
                                  default=str))
