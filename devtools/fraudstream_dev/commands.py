"""``fraudstream up``, ``down`` and ``status``: the whole stack on this machine.

Registered into ``fraudstream`` through the ``fraudstream.commands`` entry point. ``up``
calls the same use cases as ``simulate``, ``history import``, ``train`` and ``history
backfill-online``, with their config objects: their defaults stay theirs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import typer
from rich.table import Table

from model.config import get_settings
from ops.cli.output import console

# The demo traffic replays the last simulated week.
DEMO_DAYS = 7


def up(
    demo_payments: int = typer.Option(400, help="simulated payments sent once it is up (0: none)"),
    demo_rate: float = typer.Option(40.0, help="payments per second of the demo traffic"),
    history_days: int = typer.Option(90, help="days of simulated history if no model exists"),
) -> None:
    """Start Kafka, Redis, the stream worker, the API and the retrain worker; train a first
    model if none; load the history into a Redis that knows no card; send demo traffic."""
    from dataclasses import replace

    from fraudstream_dev import launcher
    from model.registry import Registry
    from ops.cli import history, training
    from training.importer import DEFAULT_LABEL_DELAY_DAYS
    from training.simulator import SimulationConfig, write_traffic
    from training.traffic import spread_sample
    from training.train import TrainConfig

    s = get_settings()
    console.print(f"[bold]fraudstream[/] home: {s.home.resolve()}")
    steps = [("Kafka jars", lambda: launcher.ensure_kafka_libs()),
             ("Redis", lambda: launcher.start_redis(s)),
             ("Kafka", lambda: launcher.start_kafka(s))]
    for name, start in steps:
        with console.status(f"starting {name}…"):
            start()
        console.print(f"  [green]✓[/] {name}")

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    # The demo's world: the simulator's cards and terminals (its default seed), so the demo
    # traffic meets the cards and terminals the first model learnt on.
    world = SimulationConfig()
    if Registry(s.models_dir).current_version() is None:
        console.print("no model yet: simulating history, importing it, training a first model")
        path = s.home / "bootstrap" / "history.parquet"
        # History ends a week ago; the demo traffic replays that last week, so labels of
        # its fraud (reported days later, but before now) flow in during the demo.
        bootstrap = replace(world, days=history_days,
                            start=today - timedelta(days=history_days + DEMO_DAYS))
        write_traffic(training.simulate_with_progress(bootstrap), path)
        console.print(f"wrote {path}")
        history.show_import(history.import_with_progress(path, {}, DEFAULT_LABEL_DELAY_DAYS))
        first = TrainConfig(force=True)
        training.show_training(training.train_with_progress(first), first)
    # A new Redis beside an existing history (a flushed one, or a switch to a Redis
    # Cluster) would score every card as never seen.
    history.show_backfill(history.backfill_with_status(if_empty=True))
    with console.status("starting the stream worker…"):
        launcher.start_stream(s)
    console.print("  [green]✓[/] stream worker")
    demo_key = training.demo_key(s)
    with console.status("starting the API…"):
        launcher.start_api(s)
    pages = f"OpenAPI: {s.api_url}/docs" if s.docs_public else \
        "OpenAPI pages closed; FRAUDSTREAM_DOCS_PUBLIC=true opens /docs"
    console.print(f"  [green]✓[/] API on {s.api_url}  ({pages})")
    launcher.start_retrain(s)
    console.print("  [green]✓[/] retrain worker")
    if demo_payments:
        # The history's world a week on; ids of their own, so nothing collides.
        demo = replace(world, days=DEMO_DAYS, start=today - timedelta(days=DEMO_DAYS),
                       id_prefix=f"demo{today:%Y%m%d}")
        traffic = spread_sample(training.simulate_with_progress(demo), demo_payments)
        training.show_traffic(training.send_with_progress(s.api_url, traffic, demo_rate,
                                                          demo_key))
    status()


def down() -> None:
    """Stop everything ``up`` started."""
    from fraudstream_dev import launcher

    stopped = launcher.stop_all(get_settings())
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


def status() -> None:
    """What is running."""
    from fraudstream_dev import launcher

    s = get_settings()
    table = Table("component", "pid", "where")
    where = {"kafka": s.kafka_brokers[0], "redis": s.redis_url, "api": s.api_url,
             "stream": f"http://127.0.0.1:{s.stream_web_port}",
             "retrain": str(s.models_dir)}
    # the other brokers and cluster nodes started here
    where |= {f"kafka-{i}": address for i, address in enumerate(s.kafka_brokers) if i}
    if s.redis_cluster:
        where |= {f"redis-{i}": f"port {port}"
                  for i, (port, _) in enumerate(launcher.redis_ports(s)) if i}
    for name, pid in launcher.status(s).items():
        table.add_row(name, str(pid) if pid else "[red]stopped[/]", where.get(name, ""))
    console.print(table)


def register(app: typer.Typer) -> None:
    """The ``fraudstream.commands`` entry point: adds ``up``, ``down`` and ``status``."""
    app.command()(up)
    app.command()(down)
    app.command()(status)
