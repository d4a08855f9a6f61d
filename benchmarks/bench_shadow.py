"""Does a challenger in shadow move the scoring hook? Shadow off and on, alternately, in one
run, at the same rates.

    python benchmarks/bench_shadow.py [--rates 250,500,1000] [--duration 10] [--repeat 3]
                                      [--pin]

Starts its own stack (as ``bench_api.py``), trains a champion and a second model, then, per
rate, runs ``2 x repeat`` rounds of open-loop load with vegeta, alternating: no challenger,
then the second model in shadow (the stream worker scores it on every payment it records).
Prints and writes (``docs/benchmarks-shadow.md``) per rate and mode (medians over rounds):
p50/p99 at the client, the API's own scoring time (each answer's ``latency_ms``: request
parsed to response built), their on/off ratios, the CPU per payment of every process; and
checks that the history holds a shadow score for the payments of the shadow rounds.

Also, per rate, the scoring p99 of all rounds of a mode pooled, and the on/off ratio's 95%
interval from resampling whole rounds (a round is the unit the machine's noise moves).
``--pin``: the API alone on the last core, everything else on the others (the API's own
latency, as a host with cores to spare would see it), written to
``docs/benchmarks-shadow-pinned.md``. A section of the page headed "## Reading this run",
written by hand, is kept when the page is written again.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import os
import statistics
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import typer
from rich.console import Console
from rich.table import Table

import common
from common import (
    BENCH_MATURITY_DAYS,
    ROOT,
    cpu_seconds,
    fresh_home,
    machine,
    stream_lag,
    summarise,
    vegeta,
    write_targets,
)

if TYPE_CHECKING:
    from stores.history import HistoryStore
    from training.train import TrainConfig

console = Console()


def scoring_ms(results: Path) -> np.ndarray:
    """The API's own ``latency_ms`` of every 200 answer of a vegeta run."""
    out = subprocess.run(["vegeta", "encode", "--to=csv", str(results)], check=True,
                         capture_output=True, text=True).stdout
    values = []
    for row in csv.reader(io.StringIO(out)):
        if row and row[1] == "200":
            values.append(orjson.loads(base64.b64decode(row[6]))["latency_ms"])
    return np.array(values)


def main(
    rates: str = typer.Option("250,500,1000"),
    duration: float = typer.Option(10.0),
    repeat: int = typer.Option(3, min=1),
    out_doc: Path | None = typer.Option(None, help="default: docs/benchmarks-shadow.md, "
                                        "or -pinned.md with --pin"),
    pin: bool = typer.Option(False, help="the API alone on the last core"),
) -> None:
    if out_doc is None:
        out_doc = ROOT / "docs" / f"benchmarks-shadow{'-pinned' if pin else ''}.md"
    if pin:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            raise SystemExit("--pin needs at least 2 cores")
        common.PIN.update(api=str(cores[-1]), others=",".join(map(str, cores[:-1])))
    home = fresh_home("bench-shadow")
    os.environ["FRAUDSTREAM_MODEL_POLL_SECONDS"] = "0.5"

    from fraudstream_dev import launcher as services
    from model.api_keys import create_key
    from model.config import Settings
    from model.registry import Registry
    from stores import pii_key
    from stores.history import HistoryStore
    from stores.label_join import JoinState
    from stores.online_features import OnlineStore
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
            import_history(store, hist, pii_key=pii_key.load(s))
            champion = train(store, registry, TrainConfig(
                force=True, baselines=False, maturity_days=BENCH_MATURITY_DAYS))
            challenger = registry.register(
                *_refit(store, TrainConfig(force=True, baselines=False, seed=1,
                                                     maturity_days=BENCH_MATURITY_DAYS)))

            async def warm() -> None:
                from stores import redis_client

                r = redis_client.connect(s)
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
        rate_list = [int(r) for r in rates.split(",")]
        results: dict[tuple[int, str], list[dict[str, float]]] = {}
        cpu: dict[tuple[int, str], list[dict[str, float]]] = {}
        latencies: dict[tuple[int, str], list[np.ndarray]] = {}
        used = 0
        for rate in rate_list:
            for rnd in range(repeat):
                # Each order half the time: a round must not always follow the same mode.
                for mode in (("off", "on") if rnd % 2 == 0 else ("on", "off")):
                    common.restart_api(s)
                    if mode == "on":
                        registry.set_challenger(challenger.version, since=time.time())
                    else:
                        registry.clear_challenger()
                    time.sleep(3)  # the stream worker follows the registry within 2 s
                    n = int(rate * duration)
                    if used + n > len(bodies):
                        used = 0
                    tag = f"{mode}{rate}x{rnd}_".encode()
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
                    own = scoring_ms(home / "results.bin")
                    # The stream's share: what it spends on these payments, lag included.
                    services.wait_until(lambda: asyncio.run(stream_lag(s)) == 0,
                                        "the stream worker to catch up", 600)
                    spent = {k: v - before[k] for k, v in cpu_seconds(pids).items()}
                    row = summarise(res, duration)
                    row["scoring_p50"] = float(np.percentile(own, 50)) if len(own) else np.nan
                    row["scoring_p99"] = float(np.percentile(own, 99)) if len(own) else np.nan
                    latencies.setdefault((rate, mode), []).append(own)
                    results.setdefault((rate, mode), []).append(row)
                    cpu.setdefault((rate, mode), []).append(
                        {k: v / row["sent"] * 1e3 for k, v in
                         {**spent, "load generator": gen_cpu}.items()})
                    console.print(f"{rate}/s round {rnd + 1} shadow {mode}: client p50 "
                                  f"{row['p50']:.2f} p99 {row['p99']:.2f} ms; scoring p99 "
                                  f"{row['scoring_p99']:.2f} ms; errors {int(row['errors'])}")
        registry.clear_challenger()
        shadowed = store.query(
            "SELECT count(*) FILTER (WHERE shadow_version = ?) AS with_shadow, count(*) AS n "
            "FROM payments WHERE payment_id LIKE 'on%'", [challenger.version]).iloc[0]
        off_shadow = int(store.query(
            "SELECT count(*) AS n FROM payments WHERE payment_id LIKE 'off%' "
            "AND shadow_version IS NOT NULL")["n"].iloc[0])
    finally:
        services.stop_all(s)

    med = {key: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
           for key, rows in results.items()}
    cpu_med = {key: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
               for key, rows in cpu.items()}
    names = list(next(iter(cpu_med.values())))
    lines = [
        "# Shadow scoring and the scoring hook",
        "",
        f"`python benchmarks/bench_shadow.py --rates {rates} --duration {duration:g} "
        f"--repeat {repeat}{' --pin' if pin else ''}`, {datetime.now(UTC):%Y-%m-%d %H:%M} "
        f"UTC, {machine()}.",
        "",
        "Per rate, rounds alternate (in both orders, half the time each; a fresh API process "
        "per round): no challenger, and a second model in shadow (the stream worker scores "
        "it on every payment it records; the API does nothing more). "
        "Medians over rounds. *Client*: vegeta's latency. *Scoring*: the API's own "
        "`latency_ms` of each answer (request parsed to response built). The ratios are "
        "shadow on / off of the medians; per pair of rounds in brackets.",
        "",
        "| rate /s | shadow | client p50 ms | client p99 ms | scoring p50 ms | scoring p99 ms "
        "| throughput /s | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    table = Table("rate", "shadow", "client p50", "client p99", "scoring p50", "scoring p99",
                  "throughput", "errors", title=f"median of {repeat} rounds of {duration:g}s")
    ratios = []
    for rate in rate_list:
        for mode in ("off", "on"):
            m = med[(rate, mode)]
            cells = [f"{m['p50']:.2f}", f"{m['p99']:.2f}", f"{m['scoring_p50']:.3f}",
                     f"{m['scoring_p99']:.3f}", f"{m['throughput']:.0f}", f"{m['errors']:.0f}"]
            table.add_row(str(rate), mode, *cells)
            lines.append(f"| {rate} | {mode} | " + " | ".join(cells) + " |")
        pairs = list(zip(results[(rate, "on")], results[(rate, "off")], strict=True))

        def ratio(metric: str, rate: int = rate, pairs: list = pairs) -> str:
            each = ", ".join(f"{on[metric] / off[metric]:.2f}" for on, off in pairs)
            return f"**{med[(rate, 'on')][metric] / med[(rate, 'off')][metric]:.2f}** ({each})"

        pooled, low, high = pooled_p99_ratio(latencies[(rate, "on")],
                                             latencies[(rate, "off")])
        ratios.append(f"- {rate}/s: client p99 on/off {ratio('p99')}; scoring p99 on/off "
                      f"{ratio('scoring_p99')}; scoring p99 of the rounds pooled, on/off "
                      f"**{pooled:.3f}** (95% interval {low:.3f} .. {high:.3f})")
    console.print(table)
    console.print("\n".join(ratios))
    lines += ["", *ratios, "", "CPU per payment (ms), by process, medians:", "",
              "| rate /s | shadow | " + " | ".join(names) + " |",
              "|---|---|" + "---|" * len(names)]
    for rate in rate_list:
        for mode in ("off", "on"):
            lines.append(f"| {rate} | {mode} | " + " | ".join(
                f"{cpu_med[(rate, mode)][k]:.3f}" for k in names) + " |")
    lines += ["", f"Shadow scores recorded: {int(shadowed['with_shadow']):,} of "
              f"{int(shadowed['n']):,} payments of the shadow rounds (degraded answers have "
              f"no features to score); {off_shadow} in the rounds without a challenger.", ""]
    marker = "## Reading this run"
    old = out_doc.read_text() if out_doc.exists() else ""
    kept = old[old.index(marker):] if marker in old else ""
    out_doc.write_text("\n".join(lines) + ("\n" + kept if kept else ""))
    console.print(f"wrote {out_doc}")


def pooled_p99_ratio(on: list[np.ndarray], off: list[np.ndarray], draws: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:
    """p99 of the "on" rounds' latencies pooled over that of the "off" rounds, and a 95%
    interval from resampling whole rounds of each mode."""
    rng = np.random.default_rng(seed)

    def p99(rounds: list[np.ndarray], pick: np.ndarray) -> float:
        return float(np.percentile(np.concatenate([rounds[i] for i in pick]), 99))

    point = p99(on, np.arange(len(on))) / p99(off, np.arange(len(off)))
    boot = [p99(on, rng.integers(0, len(on), len(on)))
            / p99(off, rng.integers(0, len(off), len(off))) for _ in range(draws)]
    low, high = np.percentile(boot, [2.5, 97.5])
    return point, float(low), float(high)


def _refit(store: HistoryStore, cfg: TrainConfig) -> tuple[Any, dict[str, Any]]:
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
