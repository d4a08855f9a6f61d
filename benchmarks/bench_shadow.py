"""Does a challenger in shadow move the scoring hook? Shadow off and on, alternately, in one
run, at the same rate.

    python benchmarks/bench_shadow.py [--rate 1000] [--duration 10] [--repeat 3]

Starts its own stack (as ``bench_api.py``), trains a champion and a second model, then runs
``2 x repeat`` rounds of open-loop load with vegeta, alternating: no challenger, then the
second model in shadow (the stream worker scores it on every payment it records). Prints
and writes (``docs/benchmarks-shadow.md``) p50/p99 per mode (medians over rounds), their
ratio, the CPU per payment of every process, and checks that the history holds a shadow
score for the payments of the shadow rounds.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import typer
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_api import (  # noqa: E402
    _stream_lag,
    cpu_seconds,
    machine,
    summarise,
    vegeta,
    write_targets,
)

console = Console()


def main(
    rate: int = typer.Option(1000),
    duration: float = typer.Option(10.0),
    repeat: int = typer.Option(3, min=1),
    out_doc: Path = typer.Option(ROOT / "docs" / "benchmarks-shadow.md"),
) -> None:
    if shutil.which("vegeta") is None:
        raise typer.Exit("vegeta not found: ./scripts/setup.sh --bench builds it")
    home = ROOT / "var" / "bench-shadow"
    shutil.rmtree(home, ignore_errors=True)
    from ops.services import isolated_env

    os.environ.update(isolated_env(home, "fraudstream-bench-shadow"))
    os.environ["FRAUDSTREAM_MODEL_POLL_SECONDS"] = "0.5"

    from model.api_keys import create_key
    from model.config import Settings
    from model.history import HistoryStore
    from model.label_join import JoinState
    from model.online_features import OnlineStore
    from model.registry import Registry
    from ops import services
    from training.backfill import backfill_online
    from training.importer import import_history
    from training.simulator import SimulationConfig, simulate
    from training.traffic import payment_body
    from training.train import TrainConfig, train

    s = Settings()
    registry = Registry(s.models_dir)
    store = HistoryStore(s.history_dir)
    try:
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        with console.status("starting Redis and Kafka, training two models"):
            services.start_redis(s)
            services.start_kafka(s)
            hist = home / "history.parquet"
            simulate(SimulationConfig(days=30, cards=3000, terminals=300,
                                      start=today - timedelta(days=37))).to_parquet(hist)
            import_history(store, hist)
            champion = train(store, registry, TrainConfig(force=True, baselines=False))
            challenger = registry.register(
                *_refit(store, registry, TrainConfig(force=True, baselines=False, seed=1)))

            async def warm() -> None:
                from redis.asyncio import Redis

                r = Redis.from_url(s.redis_url)
                await backfill_online(store, OnlineStore(r), JoinState(r))
                await r.aclose()

            asyncio.run(warm())
            assert s.api_keys_file is not None
            key, _ = create_key(s.api_keys_file, "bench", {"score"})
            services.start_stream(s)
            services.start_api(s)
        console.print(f"champion {champion.version}, challenger {challenger.version}")
        bodies = [orjson.dumps(payment_body(r)) for _, r in
                  simulate(SimulationConfig(days=7, cards=12000, terminals=300, seed=7,
                                            start=today - timedelta(days=7),
                                            id_prefix="shadow")).iterrows()]
        url = f"{s.api_url}/v1/payments/score"
        results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        cpu: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        used = 0
        for rnd in range(repeat):
            for mode in ("off", "on"):
                if mode == "on":
                    registry.set_challenger(challenger.version, since=time.time())
                else:
                    registry.clear_challenger()
                time.sleep(3)  # the stream worker follows the registry within 2 s
                n = int(rate * duration)
                if used + n > len(bodies):
                    used = 0
                tag = f"{mode}{rnd}_".encode()
                chunk = [b.replace(b'"payment_id":"', b'"payment_id":"' + tag, 1)
                         for b in bodies[used:used + n]]
                used += n
                targets = home / "targets.jsonl"
                write_targets(targets, chunk, url, key)
                pids = {"API": services.api_proc(s).pid(),
                        "stream worker": services.stream_proc(s).pid(),
                        "Redis": services.redis_proc(s).pid(),
                        "Kafka": services.kafka_proc(s).pid()}
                before = cpu_seconds(pids)
                res, gen_cpu = vegeta(targets, rate, duration, home / "results.bin")
                # The stream's share is what it spends on these payments, lag included.
                services.wait_until(lambda: asyncio.run(_stream_lag(s)) == 0,
                                    "the stream worker to catch up", 300)
                spent = {k: v - before[k] for k, v in cpu_seconds(pids).items()}
                row = summarise(res, duration)
                results[mode].append(row)
                cpu[mode].append({k: v / row["sent"] * 1e3 for k, v in
                                  {**spent, "load generator": gen_cpu}.items()})
                console.print(f"round {rnd + 1} shadow {mode}: p50 {row['p50']:.2f} ms "
                              f"p99 {row['p99']:.2f} ms errors {int(row['errors'])}")
        registry.clear_challenger()
        shadowed = store.query(
            "SELECT count(*) FILTER (WHERE shadow_version = ?) AS with_shadow, count(*) AS n "
            "FROM payments WHERE payment_id LIKE 'on%'", [challenger.version]).iloc[0]
        off_shadow = int(store.query(
            "SELECT count(*) AS n FROM payments WHERE payment_id LIKE 'off%' "
            "AND shadow_version IS NOT NULL")["n"].iloc[0])
    finally:
        services.stop_all(s)

    med = {m: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
           for m, rows in results.items()}
    cpu_med = {m: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
               for m, rows in cpu.items()}
    table = Table("shadow", "p50 ms", "p99 ms", "p99.9 ms", "throughput", "errors",
                  title=f"{rate}/s, median of {repeat} rounds of {duration:g}s each")
    for mode in ("off", "on"):
        m = med[mode]
        table.add_row(mode, f"{m['p50']:.2f}", f"{m['p99']:.2f}", f"{m['p999']:.2f}",
                      f"{m['throughput']:.0f}", f"{m['errors']:.0f}")
    console.print(table)
    ratio = med["on"]["p99"] / med["off"]["p99"]
    pair_ratios = [on["p99"] / off["p99"] for on, off in zip(results["on"], results["off"],
                                                             strict=True)]
    console.print(f"p99 on/off: {ratio:.3f} (per round: "
                  f"{', '.join(f'{r:.2f}' for r in pair_ratios)})")
    names = list(cpu_med["off"])
    lines = [
        "# Shadow scoring and the scoring hook",
        "",
        f"`python benchmarks/bench_shadow.py --rate {rate} --duration {duration:g} --repeat "
        f"{repeat}`, {datetime.now(UTC):%Y-%m-%d}, {machine()}; everything (Redis, Kafka, "
        "the stream worker, one API process, vegeta) on this machine.",
        "",
        "Rounds alternate: no challenger, then a second model in shadow (the stream worker "
        "scores it on every payment it records). Medians over rounds.",
        "",
        "| shadow | p50 ms | p99 ms | p99.9 ms | throughput /s | errors |",
        "|---|---|---|---|---|---|",
        *(f"| {mode} | {med[mode]['p50']:.2f} | {med[mode]['p99']:.2f} | "
          f"{med[mode]['p999']:.2f} | {med[mode]['throughput']:.0f} | "
          f"{med[mode]['errors']:.0f} |" for mode in ("off", "on")),
        "",
        f"**p99 with the shadow on / off: {ratio:.3f}** (per pair of rounds: "
        f"{', '.join(f'{r:.2f}' for r in pair_ratios)}).",
        "",
        "CPU per payment (ms), by process, medians:",
        "",
        "| shadow | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        *(f"| {mode} | " + " | ".join(f"{cpu_med[mode][k]:.3f}" for k in names) + " |"
          for mode in ("off", "on")),
        "",
        f"Shadow scores recorded: {int(shadowed['with_shadow']):,} of "
        f"{int(shadowed['n']):,} payments of the shadow rounds (degraded answers have no "
        f"features to score); {off_shadow} in the rounds without a challenger.",
        "",
    ]
    out_doc.write_text("\n".join(lines))
    console.print(f"wrote {out_doc}")


def _refit(store, registry, cfg):  # type: ignore[no-untyped-def]
    """A second model without touching the champion: trained into a scratch registry."""
    import tempfile

    from model.registry import Registry
    from training.train import train

    scratch = Registry(Path(tempfile.mkdtemp(prefix="fraudstream-shadow-")))
    result = train(store, scratch, cfg)
    mv = scratch.get(result.version)
    meta = {k: v for k, v in mv.metadata.items() if k not in ("version", "sha256",
                                                              "created_at")}
    return mv.load_estimator(), meta


if __name__ == "__main__":
    typer.run(main)
