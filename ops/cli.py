"""The ``fraudstream`` command."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from model.config import Settings, get_settings

app = typer.Typer(help="fraudstream: real-time payment fraud detection.", no_args_is_help=True,
                  add_completion=False)
history_app = typer.Typer(help="The recorded history (Parquet + DuckDB).", no_args_is_help=True)
model_app = typer.Typer(help="The model registry.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys of the callers.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(history_app, name="history")
app.add_typer(model_app, name="model")
console = Console(soft_wrap=True)
DEMO_DAYS = 7
err = Console(stderr=True, soft_wrap=True)


def fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)


# ---- running the service -------------------------------------------------------------
@app.command()
def api(workers: int | None = typer.Option(None, min=1, help="API processes behind the one "
                                                             "port (default: "
                                                             "FRAUDSTREAM_API_WORKERS)")
        ) -> None:
    """Run the scoring API in the foreground."""
    import shutil

    import uvicorn

    s = get_settings()
    workers = workers or s.api_workers
    if workers > 1:
        # Each process counts in files of its own here; /metrics adds them up. Emptied at
        # every start: the counts of processes gone are not this run's.
        shared = s.home / "run" / "prometheus"
        shutil.rmtree(shared, ignore_errors=True)
        shared.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(shared.resolve())
    # No proxy-headers layer: nothing here reads the client's address, and it was one
    # more ASGI call per request. No Server header: it tells callers what to attack.
    uvicorn.run("api.main:app_factory", factory=True, host=s.api_host, port=s.api_port,
                workers=workers, log_level="warning", access_log=False,
                proxy_headers=False, server_header=False)


@app.command()
def stream() -> None:
    """Run the stream worker (faust) in the foreground; waits for Kafka first."""
    import mode.loop

    # Before faust is imported, which sets up the loop: asyncio's own selector loop was a
    # sixth of the worker's CPU in a profile at 1,000 payments/s (epoll, callbacks, writes).
    mode.loop.use("uvloop")
    from ops import services
    from stream.app import app as faust_app

    # faust exits when it cannot bootstrap: a worker (re)started while Kafka is down or
    # still starting must wait for it, not die.
    s = get_settings()
    waited = 0.0
    while not services.kafka_answers(s):
        if waited % 10 < 1:
            console.print(f"waiting for Kafka at {s.kafka_bootstrap} ({waited:.0f} s)")
        time.sleep(1.0)
        waited += 1.0

    sys.argv = [sys.argv[0], "worker", "--loglevel", "info"]
    faust_app.main()


@app.command()
def up(
    demo_payments: int = typer.Option(400, help="simulated payments sent once it is up (0: none)"),
    demo_rate: float = typer.Option(40.0, help="payments per second of the demo traffic"),
    history_days: int = typer.Option(90, help="days of simulated history if no model exists"),
) -> None:
    """Start Kafka, Redis, the stream worker, the API and the retrain worker; train a first
    model if none; load the history into a Redis that knows no card; send demo traffic."""
    from model.registry import Registry
    from ops import services

    s = get_settings()
    console.print(f"[bold]fraudstream[/] home: {s.home.resolve()}")
    steps = [("Kafka jars", lambda: services.ensure_kafka_libs()),
             ("Redis", lambda: services.start_redis(s)),
             ("Kafka", lambda: services.start_kafka(s))]
    for name, start in steps:
        with console.status(f"starting {name}…"):
            start()
        console.print(f"  [green]✓[/] {name}")

    registry = Registry(s.models_dir)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if registry.current_version() is None:
        console.print("no model yet: simulating history, importing it, training a first model")
        path = s.home / "bootstrap" / "history.parquet"
        # History ends a week ago; the demo traffic replays that last week, so labels of
        # its fraud (reported days later, but before now) flow in during the demo.
        simulate(out=path, days=history_days,
                 start=today - timedelta(days=history_days + DEMO_DAYS),
                 cards=2000, terminals=200, seed=7, id_prefix="", to_api=None, rate=50.0,
                 count=0, api_key=None)
        history_import(path, mapping=[], label_delay_days=14.0)
        train(force=True, test_days=7.0, maturity_days=None, train_days=None, cutoff=None,
              thresholds_by="budget", review_rate=0.03, decline_rate=0.005, review_cost=5.0,
              k=100, baselines=True)
    # A new Redis beside an existing history (a flushed one, or a switch to a Redis
    # Cluster) would score every card as never seen.
    history_backfill_online(if_empty=True)
    with console.status("starting the stream worker…"):
        services.start_stream(s)
    console.print("  [green]✓[/] stream worker")
    demo_key = _demo_key(s)
    with console.status("starting the API…"):
        services.start_api(s)
    console.print(f"  [green]✓[/] API on {s.api_url}  (OpenAPI: {s.api_url}/docs)")
    services.start_retrain(s)
    console.print("  [green]✓[/] retrain worker")
    if demo_payments:
        simulate(out=None, days=DEMO_DAYS, start=today - timedelta(days=DEMO_DAYS), cards=2000,
                 # The history's cards and terminals (same seed), a week on: features as
                 # the model knows them. Ids of their own, so nothing collides.
                 terminals=200, seed=7, id_prefix=f"demo{today:%Y%m%d}", to_api=s.api_url,
                 rate=demo_rate, count=demo_payments,
                 api_key=demo_key)
    status()


def _demo_key(s: Settings) -> str | None:
    """A key for the demo traffic, created once and kept (mode 600) beside the key file."""
    from model.api_keys import create_key

    assert s.api_keys_file is not None
    if not s.auth_enabled:
        return None
    stash = s.api_keys_file.with_name("demo-client.key")
    if stash.exists():
        return stash.read_text().strip()
    key, _ = create_key(s.api_keys_file, "demo-client", {"score", "labels"})
    stash.touch(mode=0o600)
    stash.write_text(key)
    console.print(f"  created API key 'demo-client' for the demo traffic ({stash})")
    return key


@app.command()
def down() -> None:
    """Stop everything ``up`` started."""
    from ops import services

    stopped = services.stop_all(get_settings())
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command()
def status() -> None:
    """What is running."""
    from ops import services

    s = get_settings()
    table = Table("component", "pid", "where")
    where = {"kafka": s.kafka_brokers[0], "redis": s.redis_url, "api": s.api_url,
             "stream": f"http://127.0.0.1:{s.stream_web_port}",
             "retrain": str(s.models_dir)}
    # the other brokers and cluster nodes started here
    where |= {f"kafka-{i}": address for i, address in enumerate(s.kafka_brokers) if i}
    if s.redis_cluster:
        where |= {f"redis-{i}": f"port {port}"
                  for i, (port, _) in enumerate(services.redis_ports(s)) if i}
    for name, pid in services.status(s).items():
        table.add_row(name, str(pid) if pid else "[red]stopped[/]", where.get(name, ""))
    console.print(table)


@app.command()
def monitor(
    plot_to: Annotated[Path | None, typer.Option("--plot", help="where the plot goes "
                                                 "(default: $FRAUDSTREAM_HOME/monitor/"
                                                 "<time>.png)")] = None,
) -> None:
    """Drift and freshness as the API sees them: health, decisions, score and feature PSI
    against the training window, stream and label lag, label delays, the review queue."""
    import httpx

    from ops.monitor import plot, psi_reading, scrape

    s = get_settings()
    try:
        with httpx.Client(base_url=s.api_url, timeout=5.0) as client:
            snap = scrape(client)
    except httpx.HTTPError as exc:
        raise fail(f"the API at {s.api_url} did not answer ({type(exc).__name__}): is it up?"
                   ) from exc
    h = snap.health
    colour = "green" if h.get("status") == "ok" else "yellow"
    console.print(f"health: [{colour}]{h.get('status')}[/]  model {h.get('model_version')}  "
                  f"kafka {h.get('kafka')}")
    for warning in h.get("warnings", []):  # type: ignore[attr-defined]
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


# ---- data and models -----------------------------------------------------------------
@app.command()
def simulate(
    out: Annotated[Path | None, typer.Option(help="write the history to .parquet/.csv")] = None,
    to_api: Annotated[str | None, typer.Option(help="send the traffic to this API URL")] = None,
    days: int = typer.Option(45, min=1, help="simulated days"),
    start: Annotated[datetime | None, typer.Option(help="first simulated day (UTC)")] = None,
    cards: int = typer.Option(2000, min=1),
    terminals: int = typer.Option(200, min=2),
    seed: int = typer.Option(7, help="the same seed simulates the same cards and terminals"),
    id_prefix: str = typer.Option("", help="payment ids start with this (default sim<seed>)"),
    rate: float = typer.Option(50.0, min=0.001, help="payments per second with --to-api"),
    count: int = typer.Option(0, min=0, help="with --to-api: send N payments spread evenly"),
    api_key: str | None = typer.Option(None, envvar="FRAUDSTREAM_CLIENT_API_KEY",
                                       help="X-API-Key for --to-api (scopes score, labels)"),
) -> None:
    """Generate payment traffic with labelled fraud patterns and delayed labels."""
    from training.simulator import SimulationConfig
    from training.simulator import simulate as run_simulation

    if out is None and to_api is None:
        raise fail("say where the traffic goes: --out FILE and/or --to-api URL")
    if out is not None and out.suffix.lower() not in (".parquet", ".csv"):
        raise fail(f"--out {out}: use a .parquet or .csv file name")
    first = (start or datetime(2026, 9, 1)).replace(tzinfo=UTC)
    cfg = SimulationConfig(days=days, cards=cards, terminals=terminals, start=first, seed=seed,
                           id_prefix=id_prefix)
    with _progress() as bar:
        task = bar.add_task(f"simulating {cards} cards x {days} days", total=cards)
        traffic = run_simulation(cfg, progress=lambda n: bar.advance(task, n))
    fraud = int(traffic["is_fraud"].sum())
    console.print(f"simulated {len(traffic):,} payments, {fraud:,} fraud "
                  f"({fraud / max(len(traffic), 1):.2%}): "
                  + ", ".join(f"{k} {v}" for k, v in
                              traffic["fraud_pattern"].value_counts().items()))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".csv":
            traffic.to_csv(out, index=False)
        else:
            traffic.to_parquet(out, index=False)
        console.print(f"wrote {out}")
    if to_api is not None:
        from training.traffic import send_traffic

        # Spread evenly over the simulated period, so that labels mature during the run.
        step = max(1, len(traffic) // count) if count else 1
        sample = traffic.iloc[::step].head(count) if count else traffic
        with _progress() as bar:
            task = bar.add_task(f"sending to {to_api} at {rate:g}/s", total=len(sample))
            report = asyncio.run(send_traffic(
                to_api, sample, rate, headers={"X-API-Key": api_key} if api_key else None,
                progress=lambda n: bar.advance(task, n)))
        table = Table("sent", "labels", "retried", "errors", "approve", "review", "decline",
                      "p50 ms", "p99 ms", title="traffic sent")
        table.add_row(str(report.sent), str(report.labels_sent), str(report.retried),
                      str(sum(report.errors.values())),
                      *(str(report.decisions[d]) for d in ("approve", "review", "decline")),
                      f"{report.percentile(50):.2f}", f"{report.percentile(99):.2f}")
        console.print(table)
        if report.errors:
            raise fail(f"requests failed: {dict(report.errors)}")


@history_app.command("import")
def history_import(
    file: Path = typer.Argument(..., help="CSV or Parquet of past payments"),
    mapping: Annotated[list[str], typer.Option("--map", help="rename a column: SOURCE=TARGET")]
    = [],  # noqa: B006 -- typer reads the default, never mutates it
    label_delay_days: float = typer.Option(14.0, help="label delay when the file gives none"),
) -> None:
    """Import past payments with their fraud labels into the history.

    The whole file is checked first (a bad file changes nothing); payments already in the
    history are skipped, so importing the same file again adds nothing."""
    from rich.progress import TaskID, TaskProgressColumn

    from stores.history import HistoryStore
    from training.importer import ImportError_, import_history
    from training.importer import Progress as Step

    renames = _renames(mapping)
    s = get_settings()
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

    try:
        with bar:
            result = import_history(HistoryStore(s.history_dir), file, renames,
                                    label_delay_days, progress=show)
    except ImportError_ as exc:
        raise fail(f"{file}: {exc}; nothing was imported") from exc
    span = (f" ({result.first:%Y-%m-%d} to {result.last:%Y-%m-%d})"
            if result.first is not None and result.last is not None else "")
    console.print(f"imported {result.payments:,} payments{span} and {result.labels:,} labels "
                  f"({result.fraud:,} fraud) into {s.history_dir}")
    if result.skipped_payments or result.skipped_labels:
        console.print(f"skipped {result.skipped_payments:,} payments and "
                      f"{result.skipped_labels:,} labels already in the history")
    if result.future_labels:
        console.print(f"left out {result.future_labels:,} labels reported after now")


@history_app.command("backfill-online")
def history_backfill_online(
    if_empty: bool = typer.Option(False, "--if-empty",
                                  help="only if the online store knows no card yet"),
) -> None:
    """Load the recent history into the online feature store (Redis), and open again the
    review cases of the last 30 days that have no label yet (a lost Redis lost them)."""
    from stores import redis_client
    from stores.history import HistoryStore
    from stores.label_join import JoinState
    from stores.online_features import OnlineStore
    from stores.reviews import ReviewQueue
    from training.backfill import backfill_if_empty, backfill_online

    s = get_settings()
    warm = backfill_if_empty if if_empty else backfill_online

    async def run() -> object:
        redis = redis_client.connect(s)
        try:
            return await warm(HistoryStore(s.history_dir), OnlineStore(redis),
                              JoinState(redis), ReviewQueue(redis))
        finally:
            await redis.aclose()

    with console.status("loading history into Redis…"):
        try:
            result = asyncio.run(run())
        except OSError as exc:
            raise fail(f"Redis at {s.redis_url} unreachable: {exc}") from exc
    if result is None:
        console.print("online store already in use: left as it is")
        return
    console.print(f"online store warmed with {result.payments:,} payments and "  # type: ignore[attr-defined]
                  f"{result.fraud_labels:,} fraud labels; "  # type: ignore[attr-defined]
                  f"{result.review_cases:,} review cases opened again")  # type: ignore[attr-defined]


@history_app.command("stats")
def history_stats() -> None:
    """Payments, fraud (by each payment's latest label) and decisions per day."""
    from stores.history import HistoryStore

    df = HistoryStore(get_settings().history_dir).query(
        "SELECT strftime(p.ts, '%Y-%m-%d') AS day, count(*) AS payments, "
        "count(*) FILTER (WHERE p.source = 'api') AS scored, "
        "count(l.payment_id) AS fraud_now, "
        "count(*) FILTER (WHERE p.decision = 'decline') AS declined "
        "FROM payments p LEFT JOIN (SELECT payment_id FROM label_state WHERE is_fraud) l "
        "USING (payment_id) GROUP BY day ORDER BY day"
    )
    table = Table(*df.columns, title="history")
    for row in df.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console.print(table)


METRIC_COLUMNS = (("auc_roc", "AUC"), ("average_precision", "AP"),
                  ("card_precision_at_k", "card P@k/day"), ("recall_at_budget", "recall@budget"),
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


@app.command()
def train(
    force: bool = typer.Option(False, "--force", help="promote even without a significant gain"),
    test_days: float = typer.Option(7.0, min=0.5, help="length of the matured test window"),
    maturity_days: float | None = typer.Option(
        None, min=0.0, help="how long labels take to mature (default: the 90th percentile "
                            "of the label delays in the history)"),
    train_days: float | None = typer.Option(None, min=1.0,
                                            help="default: every matured payment"),
    cutoff: Annotated[datetime | None, typer.Option(help="use only labels reported by then")]
    = None,
    thresholds_by: str = typer.Option("budget", help="budget (review/decline rates) or cost"),
    review_rate: float = typer.Option(0.03, min=0.0, max=1.0),
    decline_rate: float = typer.Option(0.005, min=0.0, max=1.0),
    review_cost: float = typer.Option(5.0, min=0.0,
                                      help="cost of one review, with --thresholds-by cost"),
    k: int = typer.Option(100, min=1, help="cards investigators check per day"),
    baselines: bool = typer.Option(True, help="also fit the logistic regression and random "
                                              "forest baselines"),
) -> None:
    """Retrain from the history; promote the new model only on a significant gain."""
    from model.registry import Registry
    from stores.history import HistoryStore
    from training.train import TrainConfig, TrainingError
    from training.train import train as run_training

    if thresholds_by not in ("budget", "cost"):
        raise fail(f"--thresholds-by {thresholds_by!r}: use budget or cost")
    s = get_settings()
    cfg = TrainConfig(
        test_days=test_days, maturity_days=maturity_days, train_days=train_days, force=force,
        cutoff=cutoff.replace(tzinfo=cutoff.tzinfo or UTC).timestamp() if cutoff else None,
        thresholds_by=thresholds_by,  # type: ignore[arg-type]
        review_rate=review_rate, decline_rate=decline_rate, review_cost=review_cost, k=k,
        baselines=baselines,
    )
    with _progress() as bar:
        tasks: dict[str, int] = {}

        def progress(step: str, advance: int | None) -> None:
            if step not in tasks:
                for t in tasks.values():
                    bar.update(t, completed=bar.tasks[t].total or 1, total=bar.tasks[t].total or 1)
                tasks[step] = bar.add_task(step, total=None)
            if advance:
                bar.advance(tasks[step], advance)

        try:
            result = run_training(HistoryStore(s.history_dir), Registry(s.models_dir), cfg,
                                  progress)
        except TrainingError as exc:
            raise fail(str(exc)) from exc
        for t in tasks.values():
            bar.update(t, completed=bar.tasks[t].total or 1, total=bar.tasks[t].total or 1)

    w = result.window
    console.print(
        f"labels mature in {w['maturity_days']:g}d; evaluated: train {w['train_start'][:10]} → "
        f"{w['train_end'][:10]} ({w['train_payments']:,} payments, {w['train_fraud']:,} fraud), "
        f"test {w['test_start'][:10]} → {w['test_end'][:10]} ({w['test_payments']:,} payments, "
        f"{w['test_fraud']:,} fraud); promoted artifact refitted on {w['refit_start'][:10]} → "
        f"{w['refit_end'][:10]} ({w['refit_payments']:,} payments)")
    console.print(metrics_table(f"matured test window (k = {cfg.k}, alert budget "
                                f"{cfg.alert_rate:.0%}, 95% intervals)", result.comparison))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    verdict = "[green]promoted[/]" if result.promoted else "[yellow]not promoted[/]"
    console.print(f"{result.version}: {verdict} ({result.decision})")


@app.command("retrain-worker")
def retrain_worker(
    once: bool = typer.Option(False, "--once", help="one tick, then exit"),
    force: bool = typer.Option(False, "--force", help="with --once: retrain now, due or not"),
    baselines: bool | None = typer.Option(None, help="fit the baselines in each run too "
                                                     "(default: FRAUDSTREAM_RETRAIN_BASELINES)"),
) -> None:
    """Retrain by itself: on a schedule and when enough labels matured; a candidate that
    passes the gate runs in shadow, and is promoted after a significant gain there.
    Settings: FRAUDSTREAM_RETRAIN_* , FRAUDSTREAM_SHADOW_DAYS, FRAUDSTREAM_MATURITY_DAYS."""
    import logging

    from model.registry import Registry
    from stores.history import HistoryStore
    from training.retrain import Busy, RetrainPolicy, RetrainWorker
    from training.train import TrainConfig

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    s = get_settings()
    policy = RetrainPolicy(
        every_hours=s.retrain_every_hours, min_new_labels=s.retrain_min_new_labels,
        shadow_days=s.shadow_days, max_shadow_days=s.max_shadow_days,
        min_shadow_fraud=s.min_shadow_fraud, maturity_days=s.maturity_days,
        clock=s.retrain_clock,
        train=TrainConfig(shadow=True, test_days=s.retrain_test_days,
                          baselines=s.retrain_baselines if baselines is None else baselines))
    worker = RetrainWorker(HistoryStore(s.history_dir), Registry(s.models_dir), policy,
                           progress=lambda step, n: None if n else err.print(f"  {step}…"))
    if once:
        try:
            report = worker.tick(force=force)
        except Busy as exc:
            raise fail(str(exc)) from exc
        console.print("; ".join(report.actions) or worker._idle_status(report.now))
        if report.run is not None and report.run["status"] == "failed":
            raise fail(f"run failed: {report.run.get('error')}")
        return
    console.print(f"retrain worker: every {policy.every_hours:g} h or "
                  f"{policy.min_new_labels} matured labels, shadow {policy.shadow_days:g} d, "
                  f"clock {policy.clock}; checking every {s.retrain_check_seconds:g} s")
    worker.forever(s.retrain_check_seconds,
                   lambda line: console.print(f"{datetime.now(UTC):%H:%M:%S} {line}"))


def _renames(mapping: list[str]) -> dict[str, str]:
    renames: dict[str, str] = {}
    for item in mapping:
        source, sep, target = item.partition("=")
        if not sep or not source or not target:
            raise fail(f"--map {item!r}: write SOURCE=TARGET, e.g. --map tx_id=payment_id")
        renames[source] = target
    return renames


def _utc(value: datetime | None) -> float | None:
    return value.replace(tzinfo=value.tzinfo or UTC).timestamp() if value else None


@app.command()
def backtest(
    start: Annotated[datetime | None, typer.Option("--from", help="first day (UTC)")] = None,
    end: Annotated[datetime | None, typer.Option("--to", help="end, exclusive (UTC)")] = None,
    file: Annotated[Path | None, typer.Option(help="score this file's payments instead "
                                                   "(CSV or Parquet, as history import)")]
    = None,
    mapping: Annotated[list[str], typer.Option("--map", help="with --file: SOURCE=TARGET")]
    = [],  # noqa: B006 -- typer reads the default, never mutates it
    label_delay_days: float = typer.Option(14.0, help="with --file: label delay when the "
                                                      "file gives none"),
    model: Annotated[list[str], typer.Option("--model", help="a registered version; repeat "
                                                             "to compare (default: current)")]
    = [],  # noqa: B006
    k: int = typer.Option(100, min=1, help="cards investigators check per day"),
    out: Annotated[Path | None, typer.Option(help="report directory (default: "
                                                  "$FRAUDSTREAM_HOME/backtests/<time>)")]
    = None,
) -> None:
    """Score a past period, point in time, as the live system would have; report and plot."""
    from model.registry import Registry, RegistryError
    from stores.history import HistoryStore
    from training.backtest import BacktestConfig, BacktestError
    from training.backtest import backtest as run_backtest
    from training.importer import ImportError_

    if file is not None and (start or end):
        raise fail("give --file or --from/--to, not both")
    s = get_settings()
    cfg = BacktestConfig(start=_utc(start), end=_utc(end), file=file,
                         mapping=_renames(mapping), label_delay_days=label_delay_days,
                         versions=tuple(model), k=k)
    out = out or s.home / "backtests" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    with _progress() as bar:
        tasks: dict[str, int] = {}

        def progress(step: str, advance: int | None) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=None)
            if advance:
                bar.advance(tasks[step], advance)

        try:
            report = run_backtest(HistoryStore(s.history_dir), Registry(s.models_dir), cfg,
                                  out, progress)
        except (BacktestError, RegistryError) as exc:
            raise fail(str(exc)) from exc
        except ImportError_ as exc:
            raise fail(f"{file}: {exc}") from exc
        for t in tasks.values():
            bar.update(t, completed=bar.tasks[t].total or 1, total=bar.tasks[t].total or 1)
    p = report.period
    console.print(f"backtest of {p['payments']:,} payments ({p['fraud']:,} fraud), "
                  f"{p['first'][:10]} → {p['last'][:10]}, from {p['source']}")
    console.print(metrics_table(f"k = {k}, alert budget 1%, 95% intervals", report.metrics))
    console.print(f"report, decisions and plot in {out}")


@app.command()
def replay(
    file: Path = typer.Argument(..., help="payments (and labels) not yet in the history"),
    mapping: Annotated[list[str], typer.Option("--map", help="rename a column: SOURCE=TARGET")]
    = [],  # noqa: B006 -- typer reads the default, never mutates it
    label_delay_days: float = typer.Option(14.0, help="label delay when the file gives none"),
    rate: float = typer.Option(400.0, min=0.001, help="payments per second"),
    exact: bool = typer.Option(True, help="pause until labels due are in the features "
                                          "before sending later payments"),
    api_key: str | None = typer.Option(None, envvar="FRAUDSTREAM_CLIENT_API_KEY",
                                       help="X-API-Key (scopes score, labels)"),
) -> None:
    """Send a file through the live API, labels as reported, and compare every decision
    with the backtest of the same payments."""
    from model.registry import Registry
    from stores import redis_client
    from stores.history import HistoryStore
    from training.backtest import BacktestConfig, BacktestError, load_file
    from training.backtest import backtest as run_backtest
    from training.importer import ImportError_
    from training.replay import ReplayError, compare, traffic_frame
    from training.replay import replay as run_replay

    s = get_settings()
    registry = Registry(s.models_dir)
    version = registry.current_version()
    if version is None:
        raise fail("no current model: train or promote one first")
    renames = _renames(mapping)
    try:
        payments, labels = load_file(file, renames, label_delay_days)
        with console.status("backtest of the same payments…"):
            bt = run_backtest(HistoryStore(s.history_dir), registry, BacktestConfig(
                file=file, mapping=renames, label_delay_days=label_delay_days,
                versions=(version,), bootstrap=0))
    except (BacktestError, ImportError_) as exc:
        raise fail(f"{file}: {exc}") from exc
    frame = traffic_frame(payments, labels)

    async def go() -> object:
        redis = redis_client.connect(s) if exact else None
        try:
            with _progress() as bar:
                task = bar.add_task(f"replaying to {s.api_url} at {rate:g}/s", total=len(frame))
                return await run_replay(s.api_url, api_key or _demo_key(s), frame, rate, redis,
                                        progress=lambda n: bar.advance(task, n))
        finally:
            if redis is not None:
                await redis.aclose()

    try:
        report = asyncio.run(go())
        agreement = compare(report, bt.decisions, version)  # type: ignore[arg-type]
    except ReplayError as exc:
        raise fail(str(exc)) from exc
    table = Table("payments", "answered", "same decision", "different", "max |score diff|",
                  "p50 ms", "p99 ms", title=f"replay vs backtest, model {version}")
    table.add_row(f"{agreement.payments:,}", f"{agreement.answered:,}",
                  f"{agreement.same_decision:,}", f"{agreement.different_decision:,}",
                  f"{agreement.max_score_difference:.2e}",
                  f"{report.percentile(50):.2f}", f"{report.percentile(99):.2f}")  # type: ignore[attr-defined]
    console.print(table)
    if agreement.different_decision:
        out = s.home / "replays" / f"{datetime.now(UTC):%Y%m%dT%H%M%S}-differences.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        agreement.differences.to_csv(out, index=False)
        console.print(f"the differing payments are in {out}")
    if report.errors:  # type: ignore[attr-defined]
        raise fail(f"requests failed: {dict(report.errors)}")  # type: ignore[attr-defined]


@keys_app.command("create")
def keys_create(
    name: str,
    # typer reads the default, never mutates it
    scope: Annotated[list[str], typer.Option(
        help="score, labels, review or admin; repeat for more")] = ["score"],  # noqa: B006
    signing: bool = typer.Option(False, help="also require an HMAC signature of each body"),
) -> None:
    """Create an API key; it is shown once, only its sha256 is kept."""
    from model.api_keys import SCOPES, create_key

    bad = [s for s in scope if s not in SCOPES]
    if bad:
        raise fail(f"unknown scope(s) {bad}; use {', '.join(SCOPES)}")
    s = get_settings()
    assert s.api_keys_file is not None
    try:
        key, secret = create_key(s.api_keys_file, name, set(scope), signing)  # type: ignore[arg-type]
    except ValueError as exc:
        raise fail(str(exc)) from exc
    console.print(f"key {name!r} ({', '.join(sorted(scope))}) created; keep it now, it is "
                  "not shown again:")
    console.print(f"  X-API-Key: {key}")
    if secret:
        console.print(f"  signing secret: {secret}")
    console.print("restart the API to load it")


@keys_app.command("list")
def keys_list() -> None:
    """Key names and scopes (never the keys)."""
    from model.api_keys import load_keys

    s = get_settings()
    assert s.api_keys_file is not None
    table = Table("name", "scopes", "signed", "sha256 (first 12)")
    for digest, key in load_keys(s.api_keys_file).items():
        table.add_row(key.name, ", ".join(sorted(key.scopes)),
                      "yes" if key.signing_secret else "", digest[:12])
    console.print(table)


@model_app.command("list")
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


@model_app.command("promote")
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


@model_app.command("rollback")
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


@model_app.command("shadow")
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


@model_app.command("compare")
def model_compare(
    version: str = typer.Argument(None, help="default: the challenger in shadow"),
    maturity_days: float | None = typer.Option(
        None, min=0.0, help="payments younger than this are left out (default: "
                            "FRAUDSTREAM_MATURITY_DAYS, else the observed label delays' "
                            "90th percentile)"),
    now: Annotated[datetime | None, typer.Option(help="compare as of (default: now; with "
                                                      "FRAUDSTREAM_RETRAIN_CLOCK=events the "
                                                      "newest payment)")] = None,
    k: int = typer.Option(100, min=1, help="cards investigators check per day"),
) -> None:
    """Champion against challenger on the shadow-scored payments whose labels matured."""
    from model.registry import Registry
    from stores.history import HistoryStore
    from training.evaluate import EvalConfig
    from training.retrain import RetrainPolicy, RetrainWorker
    from training.shadow import CompareError, compare

    s = get_settings()
    store, registry = HistoryStore(s.history_dir), Registry(s.models_dir)
    worker = RetrainWorker(store, registry, RetrainPolicy(
        maturity_days=maturity_days if maturity_days is not None else s.maturity_days,
        clock=s.retrain_clock))
    at = _utc(now) or worker.now()
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


@model_app.command("show")
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
