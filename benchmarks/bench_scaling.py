"""Scaling benchmark: the highest rate the scoring hook serves at p99 <= 10 ms, by the
number of API processes and stream workers; what each process spends per payment there;
and the same figures projected for N hosts.

    python benchmarks/bench_scaling.py [--layouts 1x1,1x2,2x1,2x2] [--rates 250,500,...]
                                       [--duration 8] [--repeat 3] [--p99 10]

A layout "AxS" runs A API processes (uvicorn workers behind one port) and S stream workers
(one consumer group). The stack is that of benchmarks/common.py: its own Redis, Kafka and
trained model under var/bench-scaling, vegeta as the open-loop load generator on the same
machine. For each layout the rates are tried in increasing order, each ``repeat`` times
(a fresh API each time, the stream worker caught up before each); a rate passes when the
median p99 is within the target and no request failed. The ladder goes on past the
target (the CPU per payment under more load is what the projection needs) and stops at the
first rate with failed requests or a p99 ten times the target.

Pinning, where it fits: with fewer API processes than cores, the API gets the last cores
and everything else (Redis, Kafka, stream workers, the load generator) the others; with as
many or more, nothing is pinned. Writes docs/scaling.md and a plot.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import common  # the stack, the load generator and CPU accounting
from common import ROOT

console = Console()

if TYPE_CHECKING:  # imported where used: the path to the project is set up above
    from fraudstream_dev.launcher import Proc
    from model.config import Settings
# The processes the CPU is accounted to, in the tables' order.
ROLES = ["API", "stream workers", "Redis", "Kafka", "load generator"]
# Projected core utilisation: the API's answers wait in its queue, so its cores are kept
# well below full; the other tiers are off the answer's path and only have to keep up
# (room left for bursts and catching up).
API_UTILISATION = 0.5
BACKGROUND_UTILISATION = 0.7


@dataclass
class Step:
    rate: int
    runs: list[dict[str, float]] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)

    def median(self, metric: str) -> float:
        return statistics.median(r[metric] for r in self.runs)

    def cpu_median(self) -> dict[str, float]:
        return {k: statistics.median(c[k] for c in self.cpu) for k in ROLES}

    def passes(self, p99_target: float) -> bool:
        return self.median("p99") <= p99_target and self.median("errors") == 0


@dataclass
class Layout:
    api: int
    stream: int
    pinned: str = ""
    steps: list[Step] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.api}x{self.stream}"

    def best(self, p99_target: float) -> Step | None:
        passing = [s for s in self.steps if s.passes(p99_target)]
        return passing[-1] if passing else None


def main(
    layouts: str = typer.Option("1x1,1x2,2x1,2x2", help="API processes x stream workers"),
    rates: str = typer.Option("100,200,400,700,1000"),
    duration: float = typer.Option(6.0),
    repeat: int = typer.Option(3, min=1),
    p99: float = typer.Option(10.0, help="the latency target (ms)"),
    out_doc: Path = typer.Option(ROOT / "docs" / "scaling.md"),
) -> None:
    home = common.fresh_home("bench-scaling")
    from fraudstream_dev import launcher as services
    from model.config import Settings
    from training.simulator import SimulationConfig, simulate
    from training.traffic import payment_body

    s = Settings()
    cores = sorted(os.sched_getaffinity(0))
    plan = [Layout(int(api), int(stream))
            for api, stream in (x.split("x") for x in layouts.split(","))]
    if max(layout.stream for layout in plan) > s.kafka_partitions:
        raise SystemExit(f"{s.kafka_partitions} partitions: at most that many stream workers "
                         "have work (FRAUDSTREAM_KAFKA_PARTITIONS)")
    rate_list = sorted(int(r) for r in rates.split(","))
    extra_workers: list[services.Proc] = []
    try:
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        with console.status("starting Redis and Kafka, training a model on simulated history"):
            key, _, current = common.prepare(s, home, today)
        console.print(f"model {current}; {len(cores)} cores")
        bodies = [orjson.dumps(payment_body(r)) for _, r in simulate(SimulationConfig(
            days=7, cards=12000, terminals=300, seed=7, start=today - timedelta(days=7),
            id_prefix="scale")).iterrows()]
        url = f"{s.api_url}/v1/payments/score"
        api = services.api_proc(s)
        # The machine's own floor at the same rates: an empty endpoint, pinned like one API
        # process (the ratio to it is what travels between machines and days).
        if len(cores) > 1:
            common.PIN.update(api=str(cores[-1]), others=",".join(map(str, cores[:-1])))
        floor = common.floor(rate_list, duration, repeat, home)
        used = 0
        total_runs = len(plan) * len(rate_list) * repeat
        with Progress(console=console) as progress:
            task = progress.add_task("layouts x rates x rounds", total=total_runs)
            for layout in plan:
                extra_workers = _stream_workers(s, layout.stream)
                api_cores = cores[-layout.api:] if layout.api < len(cores) else []
                common.PIN.clear()
                if api_cores:
                    common.PIN.update(api=",".join(map(str, api_cores)),
                                         others=",".join(map(str, cores[:-layout.api])))
                    layout.pinned = (f"API on core(s) {common.PIN['api']}, the rest on "
                                     f"{common.PIN['others']}")
                else:
                    layout.pinned = "not pinned"
                for rate in rate_list:
                    step = Step(rate)
                    layout.steps.append(step)
                    for rnd in range(repeat):
                        api.stop()
                        api.spawn([*common.taskset("api"), sys.executable, "-m", "ops.cli",
                                   "api", "--workers", str(layout.api)])
                        services.wait_until(
                            lambda: services.http_ok(f"{s.api_url}/healthz"), "API", 60, api)
                        stream_pids = [services.stream_proc(s).pid(),
                                       *(w.pid() for w in extra_workers)]
                        if common.PIN:
                            common.pin_running([*stream_pids, services.redis_proc(s).pid(),
                                                   services.kafka_proc(s).pid()])
                        time.sleep(1)
                        n = int(rate * duration)
                        if used + n > len(bodies):
                            used = 0
                        tag = f"{layout.name}r{rnd}x{rate}_".encode()
                        chunk = [b.replace(b'"payment_id":"', b'"payment_id":"' + tag, 1)
                                 for b in bodies[used:used + n]]
                        used += n
                        targets = home / "targets.jsonl"
                        common.write_targets(targets, chunk, url, key)
                        pids = {"API": api.pid(), "Redis": services.redis_proc(s).pid(),
                                "Kafka": services.kafka_proc(s).pid(),
                                **{f"stream {i}": p for i, p in enumerate(stream_pids)}}
                        before = common.cpu_seconds(pids)
                        res, vegeta_cpu = common.vegeta(targets, rate, duration,
                                                           home / "results.bin")
                        spent = {k: v - before[k]
                                 for k, v in common.cpu_seconds(pids).items()}
                        row = common.summarise(res, duration)
                        step.runs.append(row)
                        per = 1e3 / max(row["sent"], 1)
                        step.cpu.append({
                            "API": spent["API"] * per, "Redis": spent["Redis"] * per,
                            "Kafka": spent["Kafka"] * per, "load generator": vegeta_cpu * per,
                            "stream workers": sum(v for k, v in spent.items()
                                                  if k.startswith("stream ")) * per})
                        progress.console.print(
                            f"{layout.name} {rate}/s round {rnd + 1}: p50 {row['p50']:.2f} "
                            f"p99 {row['p99']:.2f} ms, errors {int(row['errors'])}")
                        progress.advance(task)
                        # each run starts from a quiet machine: the stream worker caught up
                        services.wait_until(lambda: _lag(s) == 0,
                                            "the stream workers to catch up", 300)
                    if step.median("errors") > 0 or step.median("p99") > 10 * p99:
                        # saturated: the higher rates would only fail more (the rates
                        # between the target and this still give CPU per payment under load)
                        progress.advance(task, (len(rate_list) - len(layout.steps)) * repeat)
                        break
                api.stop()
                for w in extra_workers:
                    w.stop()
                extra_workers = []
        _report(plan, floor, p99, repeat, duration, len(cores), out_doc)
    finally:
        for w in extra_workers:
            w.stop()
        services.stop_all(s)


def _lag(s: Settings) -> int:
    import asyncio

    return asyncio.run(common.stream_lag(s))


def _stream_workers(s: Settings, n: int) -> list[Proc]:
    """Stream workers beyond the first, in its consumer group; returns once every worker
    holds some of the partitions."""
    from fraudstream_dev import launcher as services

    workers = []
    ports = [s.stream_web_port]
    for i in range(2, n + 1):
        proc = services.Proc(f"stream-{i}", s.home)
        port = services.free_port()
        proc.spawn([sys.executable, "-m", "ops.cli", "stream"],
                   env={"FRAUDSTREAM_STREAM_WEB_PORT": str(port)}, nice=s.background_nice)
        workers.append(proc)
        ports.append(port)
    services.wait_until(lambda: all(_partitions(p) > 0 for p in ports),
                        "the stream workers to share the partitions", 120)
    return workers


def _partitions(port: int) -> int:
    import httpx

    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/ready/", timeout=2)
    except httpx.HTTPError:
        return 0
    return int(answer.json().get("partitions", 0)) if answer.status_code == 200 else 0


def heaviest(layout: Layout) -> Step | None:
    """The highest rate of the layout that failed no request: its CPU per payment is the
    closest to the marginal cost (at low rates the background loops' fixed cost is spread
    over few payments)."""
    clean = [s for s in layout.steps if s.median("errors") == 0]
    return clean[-1] if clean else None


def projection(step: Step, hosts: int, cores_per_host: int) -> float:
    """Payments per second N hosts serve, from the measured CPU per payment: the API's
    cores kept at ``API_UTILISATION`` (where an open-loop queue still answers within a few
    service times), the other tiers', off the answer's path, at ``BACKGROUND_UTILISATION``.
    Cores are shared between the tiers in proportion to what a payment needs of each."""
    cpu = step.cpu_median()
    background_ms = sum(cpu[k] for k in ("stream workers", "Redis", "Kafka"))
    need = cpu["API"] / 1e3 / API_UTILISATION + background_ms / 1e3 / BACKGROUND_UTILISATION
    return hosts * cores_per_host / need


def _report(plan: list[Layout], floor: dict[int, dict[str, float]], p99: float,
            repeat: int, duration: float, n_cores: int, out_doc: Path) -> None:
    table = Table("layout", "rate (/s)", "p50 ms", "p99 ms", "floor p99", "errors",
                  *(f"{r} ms" for r in ROLES), "total ms",
                  title=f"median of {repeat} runs of {duration:g} s; CPU per payment by "
                        f"process")
    lines = [
        "# Scaling", "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} with `python benchmarks/bench_scaling.py` "
        f"(median of {repeat} runs of {duration:g} s per rate).", "",
        f"Machine: {common.machine()}.", "",
        "A layout `AxS` is A API processes (uvicorn workers on one port) and S stream workers "
        "(one consumer group). Each rate is tried in increasing order; a rate passes when "
        f"the median p99 is at most {p99:g} ms with no failed request; the ladder goes on "
        "until requests fail or p99 passes ten times the target. CPU per payment is each "
        "process's CPU time (user + system) during a run divided by the payments sent. "
        "The floor is an empty Go endpoint driven by the same load generator at the same "
        "rate, pinned like one API process: what the machine and the load generator cost "
        "alone.", "",
        "## Every rate tried", "",
        "| layout | pinning | rate (/s) | p50 ms | p99 ms | floor p99 ms | errors | "
        + " | ".join(f"{r} ms" for r in ROLES) + " | total ms |",
        "|---|---|---|---|---|---|---|" + "---|" * (len(ROLES) + 1),
    ]
    for layout in plan:
        for step in layout.steps:
            cpu = step.cpu_median()
            fl = f"{floor[step.rate]['p99']:.2f}" if step.rate in floor else "-"
            cells = [layout.name, layout.pinned, str(step.rate), f"{step.median('p50'):.2f}",
                     f"{step.median('p99'):.2f}", fl, f"{step.median('errors'):.0f}",
                     *(f"{cpu[r]:.2f}" for r in ROLES), f"{sum(cpu.values()):.2f}"]
            table.add_row(cells[0], *cells[2:])
            lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    lines += ["", f"## Throughput at p99 <= {p99:g} ms", "",
              "| layout | highest rate passed (/s) | its p99 ms | floor p99 ms there | "
              "CPU per payment without the load generator, at the highest clean rate (ms) |",
              "|---|---|---|---|---|"]
    heavy: list[tuple[Layout, Step]] = []
    for layout in plan:
        best, top = layout.best(p99), heaviest(layout)
        if top is not None:
            heavy.append((layout, top))
        stack = (f"{sum(v for k, v in top.cpu_median().items() if k != 'load generator'):.2f}"
                 f" at {top.rate}/s" if top else "-")
        if best is None:
            lines.append(f"| {layout.name} | none of the rates tried | | | {stack} |")
            continue
        fl = f"{floor[best.rate]['p99']:.2f}" if best.rate in floor else "-"
        lines.append(f"| {layout.name} | {best.median('throughput'):.0f} | "
                     f"{best.median('p99'):.2f} | {fl} | {stack} |")
    hosts = [1, 2, 4, 8, 16]
    if heavy:
        lines += [
            "", "## Projected for N hosts", "",
            f"Hosts of {n_cores} cores like this one, from each layout's CPU per payment at "
            "its highest rate without a failed request: the API's cores kept at "
            f"{API_UTILISATION:.0%} busy (an open-loop queue then answers within a few "
            "service times), the stream workers', Redis's and Kafka's, off the answer's "
            f"path, at {BACKGROUND_UTILISATION:.0%}; cores shared between tiers in "
            "proportion to what a payment needs of each. It assumes what the cluster tests "
            "show works: Redis sharded by card and terminal (Redis Cluster), at least as "
            "many partitions as stream workers, a load balancer in front of the API hosts. "
            "Not in it: the network between hosts (a loopback round trip here; across a "
            "LAN each Redis call waits 0.1-0.5 ms more, which eats into the latency budget, "
            "not the CPU), and Kafka's three copies (each broker also writes the others' "
            "replicas: about three times the Kafka CPU measured here with one broker).", "",
            "| layout measured | " + " | ".join(f"{h} host{'s' if h > 1 else ''}"
                                                for h in hosts) + " |",
            "|---|" + "---|" * len(hosts),
        ]
        for layout, top in heavy:
            lines.append(f"| {layout.name} (CPU at {top.rate}/s) | " + " | ".join(
                f"{projection(top, h, n_cores):,.0f}/s" for h in hosts) + " |")
    lines += ["", f"![throughput at the target by layout, and projected]({out_doc.stem}.png)",
              ""]
    marker = "## What this shows"
    old = out_doc.read_text() if out_doc.exists() else ""
    kept = old[old.index(marker):] if marker in old else ""
    out_doc.write_text("\n".join(lines) + ("\n" + kept if kept else ""))
    console.print(f"wrote {out_doc}")
    _plot(out_doc.with_suffix(".png"), plan, heavy, hosts, n_cores, p99)


def _plot(path: Path, plan: list[Layout], heavy: list[tuple[Layout, Step]], hosts: list[int],
          n_cores: int, p99: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for layout in plan:
        left.plot([s.rate for s in layout.steps], [s.median("p99") for s in layout.steps],
                  "-o", label=layout.name)
    left.axhline(p99, color="red", linewidth=0.8, label=f"target {p99:g} ms")
    left.set_yscale("log")
    left.set_xlabel("offered rate (payments/s)")
    left.set_ylabel("p99 latency (ms)")
    left.set_title("Measured: API processes x stream workers")
    left.legend(fontsize=8)
    for layout, top in heavy:
        right.plot(hosts, [projection(top, h, n_cores) for h in hosts], "-o",
                   label=f"from {layout.name}")
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel(f"hosts ({n_cores} cores each)")
    right.set_ylabel("payments/s")
    right.set_title("Projected from CPU per payment")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    typer.run(main)
