"""Overload: one API process driven past what it sustains, with and without admission control.

    python benchmarks/bench_overload.py [--rates 200,300,400,500,600] [--duration 10]
        [--repeat 3] [--api-cpus 0.5]

Starts its own stack (as ``bench_api.py``), then with one uvicorn worker held to
``--api-cpus`` cores (a cgroup's CPU quota; 0: no budget). Why a budget: on this machine of
two cores the load generator, Redis, Kafka and the stream worker share the cores with the
API, and without one the machine saturates before the API does; the floor is about the API
process past its own capacity, as in production where the stores run elsewhere.

1. the rate it *sustains*: the highest of ``--rates`` at which, admission control off, p99
   stays within the deadline with no error (median of ``--repeat`` runs);
2. twice that rate, admission control on (``--share``) and off: p50, p99,
   p99.9 and the slowest answer, answers degraded by the shed, errors (no answer within
   vegeta's 2 s, or not 200), CPU per payment by process.

The floor (issue 21): at twice the sustained rate, admission control on, p99 <= the
deadline + 20 ms, every request answered, 0 errors. Writes docs/benchmarks-overload.md
and a plot.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson
import typer
from rich.table import Table

if TYPE_CHECKING:
    from model.config import Settings

from common import (
    ROOT,
    console,
    cpu_budget,
    cpu_seconds,
    fresh_home,
    machine,
    prepare,
    restart_api,
    stream_lag,
    vegeta,
    write_targets,
)

SHARE = "FRAUDSTREAM_SHED_QUEUE_SHARE"
MARGIN_MS = 20.0  # the floor: p99 within the deadline plus this


def summary(res: np.ndarray, duration: float) -> dict[str, float]:
    """``res``: ``common.vegeta``'s rows, marked where the shed answered."""
    lat, ok, shed = res[:, 0], res[:, 1] == 200, res[:, 2]
    # Every request counts in the percentiles: one unanswered within 2 s counts as 2 s.
    return {"sent": float(len(res)), "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "p999": float(np.percentile(lat, 99.9)),
            "max": float(lat.max()), "errors": float((~ok).sum()),
            "shed": float(shed.mean()) * 100, "throughput": float(ok.sum()) / duration}


def main(
    rates: str = typer.Option("200,300,400,500,600,800,1000",
                              help="rates tried for the sustained one"),
    duration: float = typer.Option(10.0),
    repeat: int = typer.Option(3, min=1),
    share: float = typer.Option(0.2, help="FRAUDSTREAM_SHED_QUEUE_SHARE when on"),
    api_cpus: float = typer.Option(0.5, min=0, help="the API process's CPU budget (cores)"),
    out_doc: Path = typer.Option(ROOT / "docs" / "benchmarks-overload.md"),
) -> None:
    home = fresh_home("overload")
    from fraudstream_dev import launcher as services
    from model.config import Settings
    from training.simulator import SimulationConfig, simulate
    from training.traffic import payment_body

    s = Settings()
    deadline = float(s.default_deadline_ms)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        with console.status("starting Redis and Kafka, training a model on simulated history"):
            key, _, _ = prepare(s, home, today)
        url = f"{s.api_url}/v1/payments/score"
        bodies = [orjson.dumps(payment_body(r)) for _, r in
                  simulate(SimulationConfig(days=7, cards=12000, terminals=300, seed=7,
                                            start=today - timedelta(days=7),
                                            id_prefix="ovl")).iterrows()]
        proc = services.api_proc(s)
        runs = 0

        def run(rate: int, share: str) -> tuple[dict[str, float], dict[str, float]]:
            nonlocal runs
            runs += 1
            os.environ[SHARE] = share
            restart_api(s, 1)
            if api_cpus > 0:
                pid = proc.pid()
                assert pid is not None
                cpu_budget(pid, api_cpus)
            n = int(rate * duration)
            tag = f"r{runs}_".encode()
            chunk = [bodies[i % len(bodies)].replace(b'"payment_id":"',
                                                     b'"payment_id":"' + tag + b"%d_" % i, 1)
                     for i in range(n)]
            targets = home / "targets.jsonl"
            write_targets(targets, chunk, url, key)
            pids = {"API": proc.pid(), "stream worker": services.stream_proc(s).pid(),
                    "Redis": services.redis_proc(s).pid(), "Kafka": services.kafka_proc(s).pid()}
            before = cpu_seconds(pids)
            rows, gen_cpu = vegeta(targets, rate, duration, home / "results.bin",
                                   max_workers=4000, mark=b'"degraded_overload"')
            used = {k: (v - before[k]) / n * 1e3 for k, v in cpu_seconds(pids).items()}
            used["load generator"] = gen_cpu / n * 1e3
            m = summary(rows, duration)
            console.print(f"rate {rate}/s, shed share {share}: p50 {m['p50']:.1f} ms, p99 "
                          f"{m['p99']:.1f} ms, max {m['max']:.0f} ms, shed {m['shed']:.1f}%, "
                          f"errors {m['errors']:.0f}")
            services.wait_until(lambda: asyncio.run(stream_lag(s)) == 0,
                                "the stream worker to catch up", 600)
            return m, used

        def median(rate: int, share: str) -> tuple[dict[str, float], dict[str, float]]:
            got = [run(rate, share) for _ in range(repeat)]
            return ({k: statistics.median(g[0][k] for g in got) for k in got[0][0]},
                    {k: statistics.median(g[1][k] for g in got) for k in got[0][1]})

        # ---- 1. what one process sustains, admission control off --------------------------
        sustain: dict[int, dict[str, float]] = {}
        sustained = 0
        for rate in sorted(int(r) for r in rates.split(",")):
            sustain[rate] = median(rate, "0")[0]
            if sustain[rate]["p99"] > deadline or sustain[rate]["errors"] > 0:
                break
            sustained = rate
        if sustained == 0:
            raise SystemExit(f"no rate of {rates} was sustained: try lower ones")

        # ---- 2. twice that, on and off ------------------------------------------------------
        twice = 2 * sustained
        on, on_cpu = median(twice, str(share))
        off, off_cpu = median(twice, "0")
        proc.stop()
    finally:
        services.stop_all(s)

    t1 = Table("rate (/s)", "p50 ms", "p99 ms", "p99.9 ms", "errors",
               title="1. one API process, admission control off")
    for rate, m in sustain.items():
        t1.add_row(str(rate), f"{m['p50']:.1f}", f"{m['p99']:.1f}", f"{m['p999']:.1f}",
                   f"{m['errors']:.0f}")
    console.print(t1)
    t2 = Table("admission control", "rate (/s)", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
               "shed %", "errors", "answered (/s)", title="2. twice the sustained rate")
    for name, m in (("on", on), ("off", off)):
        t2.add_row(name, str(twice), f"{m['p50']:.1f}", f"{m['p99']:.1f}", f"{m['p999']:.1f}",
                   f"{m['max']:.0f}", f"{m['shed']:.1f}", f"{m['errors']:.0f}",
                   f"{m['throughput']:.0f}")
    console.print(t2)
    met = on["p99"] <= deadline + MARGIN_MS and on["errors"] == 0
    verdict = (f"floor {'met' if met else 'NOT met'}: p99 {on['p99']:.1f} ms against "
               f"{deadline + MARGIN_MS:g} ms, {on['errors']:.0f} errors")
    console.print(verdict)
    _write(out_doc, s, sustain, sustained, twice, on, off, on_cpu, off_cpu, str(share),
           duration, repeat, verdict, api_cpus)


def _write(out: Path, s: Settings, sustain: dict[int, dict[str, float]], sustained: int,
           twice: int, on: dict[str, float], off: dict[str, float], on_cpu: dict[str, float],
           off_cpu: dict[str, float], share: str, duration: float, repeat: int,
           verdict: str, api_cpus: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    deadline = float(s.default_deadline_ms)
    when = datetime.now(UTC)
    lines = [
        "# Overload: one API process past what it sustains", "",
        f"Measured {when:%Y-%m-%d %H:%M} UTC with "
        f"`{' '.join(['python benchmarks/bench_overload.py', *sys.argv[1:]])}` "
        f"(median of {repeat} runs of {duration:g} s each; vegeta, open loop, 2 s timeout).", "",
        f"Machine: {machine()}.", "",
        (f"The API process is held to {api_cpus:g} of a core (a cgroup's CPU quota, "
         "`--api-cpus`), so that it is what saturates: without a budget the two cores "
         "shared by the load generator, Redis, Kafka and the stream worker saturate first, "
         "which measures the machine rather than the API's admission control."
         if api_cpus > 0 else "The API process has no CPU budget (`--api-cpus 0`)."), "",
        f"Deadline: {deadline:g} ms (the default). Admission control sheds, while a queue "
        f"stands, a payment that waited more than {share} of its deadline from its first "
        "byte (`FRAUDSTREAM_SHED_QUEUE_SHARE`, [operations](operations.md#overload)). "
        "Percentiles are over every request sent; one not answered within 2 s counts as 2 s.",
        "", "## 1. The rate one process sustains (admission control off)", "",
        "| rate (/s) | p50 ms | p99 ms | p99.9 ms | errors |", "|---|---|---|---|---|",
        *(f"| {r} | {m['p50']:.1f} | {m['p99']:.1f} | {m['p999']:.1f} | {m['errors']:.0f} |"
          for r, m in sustain.items()), "",
        f"Sustained: **{sustained}/s** (the highest rate with p99 within the deadline and no "
        "error).", "", f"## 2. Twice that: {twice}/s", "",
        "| admission control | p50 ms | p99 ms | p99.9 ms | slowest ms | shed % | errors | "
        "answered (/s) |", "|---|---|---|---|---|---|---|---|",
        *(f"| {n} | {m['p50']:.1f} | {m['p99']:.1f} | {m['p999']:.1f} | {m['max']:.0f} | "
          f"{m['shed']:.1f} | {m['errors']:.0f} | {m['throughput']:.0f} |"
          for n, m in (("on", on), ("off", off))), "",
        f"**{verdict}** (the floor: p99 <= the deadline + {MARGIN_MS:g} ms, every request "
        "answered, 0 errors).", "",
        "CPU per payment (ms), by process:", "",
        "| admission control | " + " | ".join(on_cpu) + " |",
        "|---|" + "---|" * len(on_cpu),
        *(f"| {n} | " + " | ".join(f"{v:.2f}" for v in c.values()) + " |"
          for n, c in (("on", on_cpu), ("off", off_cpu))), "",
        "![overload](benchmarks-overload.png)", "",
    ]
    out.write_text("\n".join(lines))
    fig, ax = plt.subplots(figsize=(7, 4))
    names = ["p50", "p99", "p999"]
    x = np.arange(len(names))
    ax.bar(x - 0.2, [on[n] for n in names], 0.4, label="admission control on")
    ax.bar(x + 0.2, [off[n] for n in names], 0.4, label="off")
    ax.axhline(deadline + MARGIN_MS, color="red", linestyle="--", label="deadline + 20 ms")
    ax.set_xticks(x, ["p50", "p99", "p99.9"])
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"one API process at {twice}/s (twice the {sustained}/s it sustains)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    console.print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
