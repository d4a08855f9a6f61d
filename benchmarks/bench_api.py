"""Benchmark of the scoring hook over HTTP, open loop, at fixed rates; and of its steps.

    python benchmarks/bench_api.py [--rates 250,500,750,1000] [--duration 10] [--repeat 3]

Starts its own Redis, Kafka, stream worker and API (1 and 2 uvicorn workers) under
var/bench on free ports, trains a model on simulated history, then drives the API with
vegeta (an open-loop load generator: requests leave at the set rate whatever the answers
take) running on the same machine. Prints p50/p99/p99.9 latency, throughput and errors per
rate; the CPU each process spent per payment; the same rates against an empty Go endpoint
(the floor: what the machine and the load generator cost alone); the steps of one payment
alone; and checks that a model hot reload and a rules change during a run fail no request.
Writes docs/benchmarks.md and a plot.
Needs vegeta on PATH (`go install github.com/tsenart/vegeta/v12@latest`), and Go for the
floor (skipped without it).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import orjson
import typer
from rich.table import Table

from common import (
    PIN,
    ROOT,
    console,
    cpu_seconds,
    fresh_home,
    machine,
    prepare,
    restart_api,
    stream_lag,
    summarise,
    vegeta,
    write_targets,
)
from common import floor as measure_floor

if TYPE_CHECKING:
    from model.config import Settings

Medians = dict[tuple[int, int], dict[str, float]]  # (workers, rate) -> measure -> median
Floor = dict[int, dict[str, float]]  # rate -> measure -> median


def main(
    rates: str = typer.Option("250,500,750,1000"),
    duration: float = typer.Option(10.0),
    repeat: int = typer.Option(3, min=1),
    workers: str = typer.Option("1,2", help="uvicorn worker counts to measure"),
    out_doc: Path = typer.Option(ROOT / "docs" / "benchmarks.md"),
    pin: bool = typer.Option(False, help="API on the last core, everything else on the "
                                         "others (to see the API's own cost)"),
) -> None:
    home = fresh_home("bench")
    from fraudstream_dev import launcher as services
    from model.config import Settings
    from model.registry import Registry
    from model.schemas import Payment
    from model.scorer import Scorer
    from stores.online_features import OnlineStore
    from training.simulator import SimulationConfig, simulate
    from training.traffic import payment_body

    s = Settings()
    if pin:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            raise SystemExit("--pin needs at least 2 cores")
        PIN.update(api=str(cores[-1]), others=",".join(map(str, cores[:-1])))
    try:
        rate_list = [int(r) for r in rates.split(",")]
        worker_list = [int(w) for w in workers.split(",")]
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        with console.status("starting Redis and Kafka, training a model on simulated history"):
            key, first, current = prepare(s, home, today)
        console.print(f"model {current} (and {first} for the reload test)")

        # ---- the steps alone -------------------------------------------------------------
        traffic = simulate(SimulationConfig(days=7, cards=3000, terminals=300, seed=99,
                                            start=today - timedelta(days=7), id_prefix="step"))
        current_model = Registry(s.models_dir).current()
        assert current_model is not None  # prepare() trained and promoted one
        scorer = Scorer.from_version(current_model)
        rows = [Payment.model_validate(payment_body(r))
                for _, r in traffic.head(2000).iterrows()]

        async def feature_step() -> tuple[list[float], list[dict[str, float]]]:
            """As the API does it: the Lua script on the pipelined connection, lists too."""
            from stores import redis_client

            r = redis_client.connect(s)
            store = OnlineStore(r)
            out, vectors = [], []
            for p in rows:
                t = time.perf_counter()
                obs = await store.observe(p, "h" + p.payment_id, check_lists=True)
                out.append((time.perf_counter() - t) * 1e3)
                vectors.append(obs.features or {})
            await r.aclose()
            return out, vectors

        feat_ms, observed = asyncio.run(feature_step())
        forest = scorer.compiled
        assert forest is not None  # every family training picks is compiled
        X = np.array([scorer.vector(f) for f in observed[:300]])
        compiled_us = _timed_us(lambda x: forest.explain(x), X)
        sklearn_us = _timed_us(lambda x: scorer.estimator.predict_proba(x[None, :]), X[:100])
        steps = Table("step (alone)", "p50", "p99", title="the steps of one payment")
        pct = np.percentile
        steps.add_row("features: one Redis round trip (4 calls)", f"{pct(feat_ms, 50):.3f} ms",
                      f"{pct(feat_ms, 99):.3f} ms")
        steps.add_row("model: compiled trees + contributions", f"{pct(compiled_us, 50):.1f} us",
                      f"{pct(compiled_us, 99):.1f} us")
        steps.add_row("model: scikit-learn predict_proba (1 row)",
                      f"{pct(sklearn_us, 50):.1f} us", f"{pct(sklearn_us, 99):.1f} us")
        console.print(steps)

        # ---- over HTTP, open loop ---------------------------------------------------------
        url = f"{s.api_url}/v1/payments/score"
        bodies_all = [orjson.dumps(payment_body(r)) for _, r in
                      simulate(SimulationConfig(days=7, cards=12000, terminals=300, seed=7,
                                                start=today - timedelta(days=7),
                                                id_prefix="bench")).iterrows()]
        results: dict[tuple[int, int], list[dict[str, float]]] = {}
        cpu: dict[tuple[int, int], list[dict[str, float]]] = {}
        used = 0
        reload_check: dict[str, float] = {}
        proc = services.api_proc(s)
        for n_workers in worker_list:
            for rnd in range(repeat):
                for rate in rate_list:
                    restart_api(s, n_workers)
                    time.sleep(1)
                    n = int(rate * duration)
                    if used + n > len(bodies_all):
                        used = 0  # reuse bodies under fresh ids
                    chunk = bodies_all[used:used + n]
                    used += n
                    tag = f"w{n_workers}r{rnd}x{rate}_"
                    chunk = [b.replace(b'"payment_id":"', b'"payment_id":"' + tag.encode(), 1)
                             for b in chunk]
                    targets = home / "targets.jsonl"
                    write_targets(targets, chunk, url, key)
                    flips = None
                    if rate == rate_list[len(rate_list) // 2 - 1] and rnd == 0 and \
                            n_workers == worker_list[-1]:
                        flips = threading.Thread(target=_flip, args=(s, key, first, current,
                                                                     duration))
                        flips.start()
                    pids = {"API": proc.pid(), "stream worker": services.stream_proc(s).pid(),
                            "Redis": services.redis_proc(s).pid(),
                            "Kafka": services.kafka_proc(s).pid()}
                    before = cpu_seconds(pids)
                    res, vegeta_cpu = vegeta(targets, rate, duration, home / "results.bin")
                    used_cpu = {k: v - before[k] for k, v in cpu_seconds(pids).items()}
                    if flips is not None:
                        flips.join()
                    row = summarise(res, duration)
                    results.setdefault((n_workers, rate), []).append(row)
                    cpu.setdefault((n_workers, rate), []).append(
                        {k: v / row["sent"] * 1e3 for k, v in
                         {**used_cpu, "load generator": vegeta_cpu}.items()})
                    if flips is not None:
                        reload_check = {"rate": float(rate), "requests": row["sent"],
                                        "errors": row["errors"]}
                    console.print(f"workers={n_workers} rate={rate}/s round {rnd + 1}: "
                                  f"p50 {row['p50']:.2f} ms p99 {row['p99']:.2f} ms "
                                  f"errors {int(row['errors'])}")
                    # The stream worker yields the CPU under load and lags: let it catch up,
                    # so that each run starts from the same quiet machine.
                    services.wait_until(lambda: asyncio.run(stream_lag(s)) == 0,
                                        "the stream worker to catch up", 300)
        proc.stop()

        floor = measure_floor(rate_list, duration, repeat, home)

        med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in results.items()}
        cpu_med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in cpu.items()}
        table = Table("API workers", "rate (/s)", "p50 ms", "p99 ms", "p99.9 ms", "throughput (/s)",
                      "errors", title=f"over HTTP, open loop, median of {repeat} runs of "
                                      f"{duration:g}s")
        for (w, rate), m in sorted(med.items()):
            table.add_row(str(w), str(rate), f"{m['p50']:.2f}", f"{m['p99']:.2f}",
                          f"{m['p999']:.2f}", f"{m['throughput']:.0f}", f"{m['errors']:.0f}")
        console.print(table)
        names = list(next(iter(cpu_med.values())))
        ctable = Table("API workers", "rate (/s)", *names, "total",
                       title="CPU per payment (ms), by process")
        for (w, rate), m in sorted(cpu_med.items()):
            ctable.add_row(str(w), str(rate), *(f"{m[k]:.2f}" for k in names),
                           f"{sum(m.values()):.2f}")
        console.print(ctable)
        if floor:
            ftable = Table("rate (/s)", "p50 ms", "p99 ms", "p99.9 ms", "errors",
                           title="the floor: an empty Go endpoint, same load generator")
            for rate, m in sorted(floor.items()):
                ftable.add_row(str(rate), f"{m['p50']:.2f}", f"{m['p99']:.2f}",
                               f"{m['p999']:.2f}", f"{m['errors']:.0f}")
            console.print(ftable)
        console.print(f"hot reload + rules change during a run: {reload_check}")
        _write_doc(out_doc, machine(), med, cpu_med, floor, repeat, duration, feat_ms,
                   compiled_us, sklearn_us, reload_check)
        _plot(out_doc.with_name(f"{out_doc.stem}_latency.png"), med, floor)
    finally:
        # Also when a run fails: no Kafka or Redis left behind.
        services.stop_all(s)


def _timed_us(fn: Callable[[np.ndarray], object], X: np.ndarray) -> list[float]:
    out = []
    for _ in range(3):
        for x in X:
            t = time.perf_counter()
            fn(x)
            out.append((time.perf_counter() - t) * 1e6)
    return out


def _flip(s: Settings, key: str, a: str, b: str, duration: float) -> None:
    """During a run: promote the other model, then change the rules, several times."""
    from model.registry import Registry

    registry = Registry(s.models_dir)
    end = time.monotonic() + duration - 1
    i = 0
    with httpx.Client(base_url=s.api_url, headers={"X-API-Key": key}) as client:
        while time.monotonic() < end:
            registry.promote(a if i % 2 else b)
            rules = {"rules": [{"id": f"r{i}", "action": "review",
                                "when": [{"feature": "amount", "op": ">=", "value": 5000 + i}]}]}
            client.put("/v1/admin/rules", json=rules).raise_for_status()
            i += 1
            time.sleep(1.5)


def _write_doc(path: Path, machine_desc: str, med: Medians, cpu_med: Medians,
               floor: Floor, repeat: int, duration: float, feat_ms: list[float],
               compiled_us: list[float], sklearn_us: list[float],
               reload_check: dict[str, float]) -> None:
    lines = [
        "# Benchmarks", "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} with `python benchmarks/bench_api.py` "
        f"(median of {repeat} runs of {duration:g} s per rate).", "",
        f"Machine: {machine_desc}.", "",
        "## The scoring hook over HTTP (open loop, vegeta)", "",
        "| API workers | rate (/s) | p50 ms | p99 ms | p99.9 ms | throughput (/s) | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for (w, rate), m in sorted(med.items()):
        lines.append(f"| {w} | {rate} | {m['p50']:.2f} | {m['p99']:.2f} | {m['p999']:.2f} | "
                     f"{m['throughput']:.0f} | {m['errors']:.0f} |")
    lines += ["", f"![latency by rate]({path.stem}_latency.png)", ""]
    if floor:
        lines += [
            "## The floor: an empty endpoint, same load generator", "",
            "`benchmarks/floor/main.go`: Go's net/http answering `{\"ok\":true}`, nothing "
            "else, driven by the same vegeta at the same rates (the rest of the stack idle). "
            "Its latency is what the machine and the load generator cost alone.", "",
            "| rate (/s) | p50 ms | p99 ms | p99.9 ms | errors |", "|---|---|---|---|---|",
        ]
        lines += [f"| {rate} | {m['p50']:.2f} | {m['p99']:.2f} | {m['p999']:.2f} | "
                  f"{m['errors']:.0f} |" for rate, m in sorted(floor.items())]
        lines.append("")
    names = list(next(iter(cpu_med.values())))
    lines += [
        "## CPU per payment, by process", "",
        "CPU time (user + system) each process used during a run, divided by the payments "
        "sent: what one payment costs the machine, end to end. Two cores give 2,000 ms of "
        "CPU per second, so a total of t ms per payment caps the rate near 2000/t per "
        "second before anything queues.", "",
        "| API workers | rate (/s) | " + " | ".join(names) + " | total |",
        "|---|---|" + "---|" * (len(names) + 1),
    ]
    lines += [f"| {w} | {rate} | " + " | ".join(f"{m[k]:.2f}" for k in names)
              + f" | {sum(m.values()):.2f} |" for (w, rate), m in sorted(cpu_med.items())]
    lines += [
        "",
        "## The steps alone", "",
        "| step | p50 | p99 |", "|---|---|---|",
        "| features: one Redis round trip (Lua script, pipelined connection) | "
        f"{np.percentile(feat_ms, 50):.3f} ms | {np.percentile(feat_ms, 99):.3f} ms |",
        f"| model: compiled trees, with contributions | {np.percentile(compiled_us, 50):.1f} us "
        f"| {np.percentile(compiled_us, 99):.1f} us |",
        f"| model: scikit-learn `predict_proba`, one row | {np.percentile(sklearn_us, 50):.1f} "
        f"us | {np.percentile(sklearn_us, 99):.1f} us |",
        "", "## Hot reload and rules change under load", "",
        f"During one run at {int(reload_check.get('rate', 0))}/s the current model was "
        f"swapped and the rules replaced every 1.5 s: "
        f"{int(reload_check.get('requests', 0))} requests, "
        f"{int(reload_check.get('errors', 0))} failed.", "",
    ]
    # The analysis below the tables is written by people: keep it across reruns.
    marker = "## Where the time goes"
    old = path.read_text() if path.exists() else ""
    kept = old[old.index(marker):] if marker in old else ""
    path.write_text("\n".join(lines) + ("\n" + kept if kept else ""))
    console.print(f"wrote {path}")


def _plot(path: Path, med: Medians, floor: Floor) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for w in sorted({w for w, _ in med}):
        rates = sorted(r for ww, r in med if ww == w)
        for q, style in (("p50", "-o"), ("p99", "--o")):
            ax.plot(rates, [med[(w, r)][q] for r in rates], style,
                    label=f"{w} worker{'s' if w > 1 else ''} {q}")
    if floor:
        rates = sorted(floor)
        ax.plot(rates, [floor[r]["p99"] for r in rates], ":", color="grey",
                label="empty Go endpoint p99 (floor)")
    ax.axhline(5, color="red", linewidth=0.8, label="target p99 5 ms")
    ax.set_xlabel("offered rate (payments/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("Scoring latency over HTTP, open loop")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    typer.run(main)
