"""Data and models: ``simulate``, ``train``, ``retrain-worker``, ``backtest``, ``replay``.

Every default is the use case's own (``SimulationConfig``, ``TrainConfig``,
``BacktestConfig``, ``ReplayConfig``, the settings): the options read them from there.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, cast, get_args

import pandas as pd
import typer
from rich.table import Table

from model.config import Settings, get_settings
from ops.cli.output import (
    console,
    err,
    fail,
    metrics_table,
    progress_bar,
    renames,
    step_progress,
    utc,
)
from training.backtest import BacktestConfig
from training.replay import ReplayConfig
from training.simulator import PRESETS, SimulationConfig
from training.traffic import TrafficReport
from training.train import TrainConfig, TrainResult

ThresholdsBy = Literal["budget", "cost"]


class Preset(StrEnum):
    """``SimulationConfig.preset``'s choices, as typer offers an Enum's values."""

    pos = "pos"
    ecom = "ecom"


_PRESET_HELP = "; ".join(f"{name}: {what}" for name, what in PRESETS.items())


# ---- simulate ------------------------------------------------------------------------
def simulate(
    out: Annotated[Path | None, typer.Option(help="write the history to .parquet/.csv")] = None,
    to_api: Annotated[str | None, typer.Option(help="send the traffic to this API URL")] = None,
    days: int = typer.Option(SimulationConfig.days, min=1, help="simulated days"),
    start: Annotated[datetime | None, typer.Option(help="first simulated day (UTC)")] = None,
    cards: int = typer.Option(SimulationConfig.cards, min=1),
    terminals: int = typer.Option(SimulationConfig.terminals, min=2),
    seed: int = typer.Option(SimulationConfig.seed,
                             help="the same seed simulates the same cards and terminals"),
    id_prefix: str = typer.Option(SimulationConfig.id_prefix,
                                  help="payment ids start with this (default sim<seed>)"),
    rate: float = typer.Option(50.0, min=0.001, help="payments per second with --to-api"),
    count: int = typer.Option(0, min=0, help="with --to-api: send N payments spread evenly"),
    api_key: str | None = typer.Option(None, envvar="FRAUDSTREAM_CLIENT_API_KEY",
                                       help="X-API-Key for --to-api (scopes score, labels)"),
    preset: Preset = typer.Option(
        Preset(SimulationConfig.preset),
        help=_PRESET_HELP),
) -> None:
    """Generate payment traffic with labelled fraud patterns and delayed labels."""
    from training.simulator import write_traffic
    from training.traffic import spread_sample

    if out is None and to_api is None:
        raise fail("say where the traffic goes: --out FILE and/or --to-api URL")
    if out is not None and out.suffix.lower() not in (".parquet", ".csv"):
        raise fail(f"--out {out}: use a .parquet or .csv file name")
    cfg = SimulationConfig(days=days, cards=cards, terminals=terminals, seed=seed,
                           start=start.replace(tzinfo=UTC) if start else SimulationConfig.start,
                           id_prefix=id_prefix, preset=preset.value)
    traffic = simulate_with_progress(cfg)
    if out is not None:
        write_traffic(traffic, out)
        console.print(f"wrote {out}")
    if to_api is not None:
        show_traffic(send_with_progress(to_api, spread_sample(traffic, count), rate, api_key))


def simulate_with_progress(cfg: SimulationConfig) -> pd.DataFrame:
    """The simulated traffic, a bar while it is drawn, then what it holds."""
    from training.simulator import simulate as run_simulation

    with progress_bar() as bar:
        task = bar.add_task(f"simulating {cfg.cards} cards x {cfg.days} days", total=cfg.cards)
        traffic = run_simulation(cfg, progress=lambda n: bar.advance(task, n))
    fraud = int(traffic["is_fraud"].sum())
    console.print(f"simulated {len(traffic):,} payments, {fraud:,} fraud "
                  f"({fraud / max(len(traffic), 1):.2%}): "
                  + ", ".join(f"{k} {v}" for k, v in
                              traffic["fraud_pattern"].value_counts().items()))
    return traffic


def send_with_progress(api_url: str, traffic: pd.DataFrame, rate: float,
                       api_key: str | None) -> TrafficReport:
    from training.traffic import send_traffic

    with progress_bar() as bar:
        task = bar.add_task(f"sending to {api_url} at {rate:g}/s", total=len(traffic))
        return asyncio.run(send_traffic(
            api_url, traffic, rate, headers={"X-API-Key": api_key} if api_key else None,
            progress=lambda n: bar.advance(task, n)))


def show_traffic(report: TrafficReport) -> None:
    """The answers to traffic sent; requests that failed fail the command."""
    table = Table("sent", "labels", "retried", "errors", "approve", "review", "decline",
                  "p50 ms", "p99 ms", title="traffic sent")
    table.add_row(str(report.sent), str(report.labels_sent), str(report.retried),
                  str(sum(report.errors.values())),
                  *(str(report.decisions[d]) for d in ("approve", "review", "decline")),
                  f"{report.percentile(50):.2f}", f"{report.percentile(99):.2f}")
    console.print(table)
    if report.errors:
        raise fail(f"requests failed: {dict(report.errors)}")


# ---- train ---------------------------------------------------------------------------
def train(
    force: bool = typer.Option(TrainConfig.force, "--force",
                               help="promote even without a significant gain"),
    test_days: float = typer.Option(TrainConfig.test_days, min=0.5,
                                    help="length of the matured test window"),
    maturity_days: float | None = typer.Option(
        TrainConfig.maturity_days, min=0.0,
        help="how long labels take to mature (default: the 90th percentile of the label "
             "delays in the history)"),
    train_days: float | None = typer.Option(TrainConfig.train_days, min=1.0,
                                            help="default: every matured payment"),
    cutoff: Annotated[datetime | None, typer.Option(help="use only labels reported by then")]
    = None,
    thresholds_by: str = typer.Option(TrainConfig.thresholds_by,
                                      help="budget (review/decline rates) or cost"),
    review_rate: float = typer.Option(TrainConfig.review_rate, min=0.0, max=1.0),
    decline_rate: float = typer.Option(TrainConfig.decline_rate, min=0.0, max=1.0),
    review_cost: float = typer.Option(TrainConfig.review_cost, min=0.0,
                                      help="cost of one review, with --thresholds-by cost"),
    k: int = typer.Option(TrainConfig.k, min=1, help="cards investigators check per day"),
    baselines: bool = typer.Option(TrainConfig.baselines,
                                   help="fit every model family and choose (the "
                                        "baselines among them); --no-baselines: the "
                                        "gradient boosting alone"),
    features: str = typer.Option(TrainConfig.features,
                                 help="today (the 25 features) or catalogue (the default "
                                      "catalogue and the home's features.toml)"),
    search_seconds: float = typer.Option(
        TrainConfig.search_seconds, min=0.0,
        help="seconds the gradient boosting's hyperparameter search may take, on a "
             "validation slice before the test window (0: the tuned settings)"),
    calibrate: bool = typer.Option(TrainConfig.calibrate,
                                   help="calibrate the scores on the matured test window "
                                        "(isotonic or Platt): a score is a probability"),
) -> None:
    """Retrain from the history; promote the new model only on a significant gain."""
    if thresholds_by not in get_args(ThresholdsBy):
        raise fail(f"--thresholds-by {thresholds_by!r}: use budget or cost")
    if features not in ("today", "catalogue"):
        raise fail(f"--features {features!r}: use today or catalogue")
    cfg = TrainConfig(
        test_days=test_days, maturity_days=maturity_days, train_days=train_days, force=force,
        cutoff=utc(cutoff), thresholds_by=cast(ThresholdsBy, thresholds_by),
        review_rate=review_rate, decline_rate=decline_rate, review_cost=review_cost, k=k,
        baselines=baselines, features=cast(Literal["today", "catalogue"], features),
        calibrate=calibrate, search_seconds=search_seconds,
    )
    show_training(train_with_progress(cfg), cfg)


def train_with_progress(cfg: TrainConfig) -> TrainResult:
    """``train`` on the configured history and registry, a bar per step."""
    from model.registry import Registry
    from stores.history import HistoryStore
    from training.train import TrainingError
    from training.train import train as run_training

    s = get_settings()
    catalogue = None
    if cfg.features == "catalogue":
        from model.catalogue import CatalogueError
        from model.catalogue_file import installation_catalogue

        try:
            catalogue = installation_catalogue(s.features_file, s.features_cost_budget)
        except CatalogueError as exc:
            raise fail(str(exc)) from exc
    with step_progress(close_previous=True) as progress:
        try:
            return run_training(HistoryStore(s.history_dir), Registry(s.models_dir), cfg,
                                progress, catalogue)
        except TrainingError as exc:
            raise fail(str(exc)) from exc


def show_training(result: TrainResult, cfg: TrainConfig) -> None:
    w = result.window
    console.print(
        f"labels mature in {w['maturity_days']:g}d; evaluated: train {w['train_start'][:10]} → "
        f"{w['train_end'][:10]} ({w['train_payments']:,} payments, {w['train_fraud']:,} fraud), "
        f"test {w['test_start'][:10]} → {w['test_end'][:10]} ({w['test_payments']:,} payments, "
        f"{w['test_fraud']:,} fraud); promoted artifact refitted on {w['refit_start'][:10]} → "
        f"{w['refit_end'][:10]} ({w['refit_payments']:,} payments)")
    rows = {(f"{name} (chosen)" if name == result.family else name): m
            for name, m in result.comparison.items()}
    console.print(metrics_table(f"matured test window (k = {cfg.k}, alert budget "
                                f"{cfg.alert_rate:.0%}, 95% intervals)", rows))
    show_search(result.search)
    console.print(f"candidate: {result.family.replace('_', ' ')} ({result.selection})")
    show_calibration(result.calibration)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    verdict = "[green]promoted[/]" if result.promoted else "[yellow]not promoted[/]"
    console.print(f"{result.version}: {verdict} ({result.decision})")


def show_search(report: dict[str, Any]) -> None:
    """What the hyperparameter search tried on its validation slice, and kept."""
    tried = report.get("tried")
    if not tried:
        console.print(f"hyperparameters: {report.get('why', 'not searched')}")
        return
    tuned = tried[0]["average_precision"]
    chosen = report["chosen"]
    best = max(t["average_precision"] for t in tried)
    console.print(
        f"hyperparameters: {len(tried)} settings of the gradient boosting in "
        f"{report['seconds']:g} s (budget {report['budget_s']:g} s) on the validation slice "
        f"{report['validation_start'][:10]} → {report['validation_end'][:10]}: "
        + (f"kept {chosen} (AP {best:.3f} against the tuned settings' {tuned:.3f})" if chosen
           else f"the tuned settings kept (AP {tuned:.3f})"))


def show_calibration(report: dict[str, Any]) -> None:
    """The calibration's reliability curve: by band of scores, the mean score before and
    after calibration beside the fraud rate observed (on the half it was not fitted on)."""
    kind = report.get("kind", "identity")
    if kind == "identity":
        console.print("scores not calibrated" + (f" ({report['why']})" if "why" in report
                                                   else ""))
        return
    console.print(f"scores calibrated: {kind} on {report['fraud']:,} fraud of "
                  f"{report['payments']:,} matured payments")
    before, after = report.get("before"), report.get("after")
    if not before or not after:
        console.print(f"  {report.get('check', '')}")
        return
    table = Table("payments (by score)", "score before", "score after", "fraud observed",
                  title=f"calibration, {report['check']}")
    start = 0
    total = sum(before["payments"])
    for n, b, a_, r in zip(before["payments"], before["mean_score"], after["mean_score"],
                           after["fraud_rate"], strict=True):
        table.add_row(f"{start / total:.1%} to {(start + n) / total:.1%}", f"{b:.4f}",
                      f"{a_:.4f}", f"{r:.4f}")
        start += n
    console.print(table)
    console.print(f"expected calibration error: {before['ece']:.4f} before, "
                  f"{after['ece']:.4f} after" + (f"; plot: {report['plot']}" if "plot" in report
                                                 else ""))


# ---- retrain-worker ------------------------------------------------------------------
def retrain_worker(
    once: bool = typer.Option(False, "--once", help="one tick, then exit"),
    force: bool = typer.Option(False, "--force", help="with --once: retrain now, due or not"),
    baselines: bool | None = typer.Option(None, help="fit every family and choose in each "
                                                     "run "
                                                     "(default: FRAUDSTREAM_RETRAIN_BASELINES)"),
) -> None:
    """Retrain by itself: on a schedule and when enough labels matured; a candidate that
    passes the gate runs in shadow, and is promoted after a significant gain there.
    Settings: FRAUDSTREAM_RETRAIN_* , FRAUDSTREAM_SHADOW_DAYS, FRAUDSTREAM_MATURITY_DAYS."""
    import logging

    from model.registry import Registry
    from stores.history import HistoryStore
    from training.retrain import Busy, RetrainPolicy, RetrainWorker

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    s = get_settings()
    policy = RetrainPolicy.from_settings(s, baselines=baselines)
    worker = RetrainWorker(HistoryStore(s.history_dir), Registry(s.models_dir), policy,
                           progress=lambda step, n: None if n else err.print(f"  {step}…"))
    if once:
        try:
            report = worker.tick(force=force)
        except Busy as exc:
            raise fail(str(exc)) from exc
        console.print("; ".join(report.actions) or worker.idle_status(report.now))
        if report.run is not None and report.run["status"] == "failed":
            raise fail(f"run failed: {report.run.get('error')}")
        return
    console.print(f"retrain worker: every {policy.every_hours:g} h or "
                  f"{policy.min_new_labels} matured labels, shadow {policy.shadow_days:g} d, "
                  f"clock {policy.clock}; checking every {s.retrain_check_seconds:g} s")
    worker.forever(s.retrain_check_seconds,
                   lambda line: console.print(f"{datetime.now(UTC):%H:%M:%S} {line}"))


# ---- backtest, replay ----------------------------------------------------------------
def backtest(
    start: Annotated[datetime | None, typer.Option("--from", help="first day (UTC)")] = None,
    end: Annotated[datetime | None, typer.Option("--to", help="end, exclusive (UTC)")] = None,
    file: Annotated[Path | None, typer.Option(help="score this file's payments instead "
                                                   "(CSV or Parquet, as history import)")]
    = None,
    mapping: Annotated[list[str], typer.Option("--map", help="with --file: SOURCE=TARGET")]
    = [],  # noqa: B006 -- typer reads the default, never mutates it
    label_delay_days: float = typer.Option(BacktestConfig.label_delay_days,
                                           help="with --file: label delay when the "
                                                "file gives none"),
    model: Annotated[list[str], typer.Option("--model", help="a registered version; repeat "
                                                             "to compare (default: current)")]
    = [],  # noqa: B006
    k: int = typer.Option(BacktestConfig.k, min=1, help="cards investigators check per day"),
    out: Annotated[Path | None, typer.Option(help="report directory (default: "
                                                  "$FRAUDSTREAM_HOME/backtests/<time>)")]
    = None,
) -> None:
    """Score a past period, point in time, as the live system would have; report and plot."""
    from model.registry import Registry, RegistryError
    from stores import pii_key
    from stores.history import HistoryStore
    from training.backtest import BacktestError
    from training.backtest import backtest as run_backtest
    from training.importer import ImportError_

    if file is not None and (start or end):
        raise fail("give --file or --from/--to, not both")
    s = get_settings()
    try:  # a file's e-mails and IPs become the pseudonyms the history holds
        key = pii_key.load(s) if file is not None else None
    except pii_key.PiiKeyError as exc:
        raise fail(str(exc)) from exc
    cfg = BacktestConfig(start=utc(start), end=utc(end), file=file,
                         mapping=renames(mapping), label_delay_days=label_delay_days,
                         pii_key=key, versions=tuple(model), k=k)
    out = out or s.home / "backtests" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    with step_progress() as progress:
        try:
            report = run_backtest(HistoryStore(s.history_dir), Registry(s.models_dir), cfg,
                                  out, progress)
        except (BacktestError, RegistryError) as exc:
            raise fail(str(exc)) from exc
        except ImportError_ as exc:
            raise fail(f"{file}: {exc}") from exc
    p = report.period
    console.print(f"backtest of {p['payments']:,} payments ({p['fraud']:,} fraud), "
                  f"{p['first'][:10]} → {p['last'][:10]}, from {p['source']}")
    console.print(metrics_table(f"k = {k}, alert budget 1%, 95% intervals", report.metrics))
    console.print(f"report, decisions and plot in {out}")


def replay(
    file: Path = typer.Argument(..., help="payments (and labels) not yet in the history"),
    mapping: Annotated[list[str], typer.Option("--map", help="rename a column: SOURCE=TARGET")]
    = [],  # noqa: B006 -- typer reads the default, never mutates it
    label_delay_days: float = typer.Option(ReplayConfig.label_delay_days,
                                           help="label delay when the file gives none"),
    rate: float = typer.Option(ReplayConfig.rate, min=0.001, help="payments per second"),
    exact: bool = typer.Option(ReplayConfig.exact,
                               help="pause until labels due are in the features "
                                    "before sending later payments"),
    api_key: str | None = typer.Option(None, envvar="FRAUDSTREAM_CLIENT_API_KEY",
                                       help="X-API-Key (scopes score, labels)"),
) -> None:
    """Send a file through the live API, labels as reported, and compare every decision
    with the backtest of the same payments."""
    from contextlib import ExitStack

    from rich.progress import TaskID

    from training.replay import ReplayError, replay_file

    s = get_settings()
    cfg = ReplayConfig(file=file, mapping=renames(mapping), label_delay_days=label_delay_days,
                       rate=rate, exact=exact, api_key=api_key)
    with ExitStack() as shown:
        tasks: dict[str, TaskID] = {}
        bar = None

        def progress(step: str, total: int | None, done: int) -> None:
            nonlocal bar
            if total is None:  # a step of unknown length: a spinner, until the next step
                shown.enter_context(console.status(step))
                return
            if bar is None:
                shown.close()
                bar = shown.enter_context(progress_bar())
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=total)
            if done:
                bar.advance(tasks[step], done)

        try:
            result = replay_file(s, cfg, progress, default_key=lambda: demo_key(s))
        except ReplayError as exc:
            raise fail(str(exc)) from exc
    agreement, report = result.agreement, result.report
    table = Table("payments", "answered", "same decision", "different", "max |score diff|",
                  "p50 ms", "p99 ms", title=f"replay vs backtest, model {result.version}")
    table.add_row(f"{agreement.payments:,}", f"{agreement.answered:,}",
                  f"{agreement.same_decision:,}", f"{agreement.different_decision:,}",
                  f"{agreement.max_score_difference:.2e}",
                  f"{report.percentile(50):.2f}", f"{report.percentile(99):.2f}")
    console.print(table)
    if result.differences_file is not None:
        console.print(f"the differing payments are in {result.differences_file}")
    if report.errors:
        raise fail(f"requests failed: {dict(report.errors)}")


def demo_key(s: Settings) -> str | None:
    """The demo client's key (None without authentication); says so when it is new."""
    from model.api_keys import demo_key as stashed_demo_key

    assert s.api_keys_file is not None
    if not s.auth_enabled:
        return None
    demo = stashed_demo_key(s.api_keys_file)
    if demo.created:
        console.print(f"  created API key 'demo-client' for the demo traffic ({demo.stash})")
    return demo.key


def register(app: typer.Typer) -> None:
    app.command()(simulate)
    app.command()(train)
    app.command("retrain-worker")(retrain_worker)
    app.command()(backtest)
    app.command()(replay)
