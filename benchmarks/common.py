"""What the benchmarks share: a stack of their own (a fresh home, Redis, Kafka, the stream
worker, trained models), core pinning, the load generator (vegeta) and its summary, CPU
accounting per process, the empty-endpoint floor and the machine's description.

Imported by the benchmarks as a module beside them (``python benchmarks/NAME.py`` puts
this directory first on the import path); no benchmark imports another.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import orjson
import psutil
from rich.console import Console

from model.config import Settings

ROOT = Path(__file__).resolve().parent.parent
console = Console()

BENCH_MATURITY_DAYS = 7.0

# With --pin: the cores the API gets, and the ones everything else gets (taskset lists).
PIN: dict[str, str] = {}


def taskset(role: str) -> list[str]:
    return ["taskset", "-c", PIN[role]] if PIN else []


def pin_running(pids: list[int | None]) -> None:
    """Every thread of these processes onto the non-API cores."""
    for pid in pids:
        if pid is not None:
            subprocess.run(["taskset", "-a", "-cp", PIN["others"], str(pid)], check=True,
                           capture_output=True)


def restart_api(s: Settings, workers: int = 1) -> None:
    """A fresh API process (with --pin, on its own core; what else runs then goes to the
    other cores): an overloaded run leaves a backlog of requests whose callers gave up,
    which would otherwise weigh on the next run."""
    from fraudstream_dev import launcher as services

    proc = services.api_proc(s)
    proc.stop()
    proc.spawn([*taskset("api"), sys.executable, "-m", "ops.cli", "api",
                "--workers", str(workers)])
    services.wait_until(lambda: services.http_ok(f"{s.api_url}/healthz"), "API", 60, proc)
    if PIN:
        pin_running([services.stream_proc(s).pid(), services.redis_proc(s).pid(),
                     services.kafka_proc(s).pid()])


CPU_CGROUP = Path("/sys/fs/cgroup/cpu")


def cpu_budget(pid: int, cpus: float, name: str = "fraudstream-bench-api") -> None:
    """Hold process ``pid`` (every thread) to ``cpus`` cores' worth of CPU, through a
    cgroup's CFS quota (v1 or v2), so that it saturates while the rest of the machine
    has room: on a shared machine of two cores everything else would saturate first.
    A 10 ms period: a request is held at most a few ms by the quota, not 100 ms."""
    period = 10_000
    quota = max(int(cpus * period), 1000)
    v1 = CPU_CGROUP / name
    v2 = Path("/sys/fs/cgroup") / name
    if CPU_CGROUP.is_dir():
        v1.mkdir(exist_ok=True)
        (v1 / "cpu.cfs_period_us").write_text(str(period))
        (v1 / "cpu.cfs_quota_us").write_text(str(quota))
        (v1 / "cgroup.procs").write_text(str(pid))
    elif (Path("/sys/fs/cgroup") / "cgroup.controllers").is_file():
        v2.mkdir(exist_ok=True)
        (v2 / "cpu.max").write_text(f"{quota} {period}")
        (v2 / "cgroup.procs").write_text(str(pid))
    else:
        raise SystemExit("no CPU cgroup to give the API a budget: run with --api-cpus 0")


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Linux {platform.release()}, "
            f"Python {platform.python_version()}; load generator, Redis, Kafka, the stream "
            f"worker and the API all on this machine"
            + (f"; the API pinned to core {PIN['api']}, everything else to core "
               f"{PIN['others']}" if PIN else ""))


def vegeta(targets: Path, rate: int, duration: float, out: Path,
           lazy: bool = True, max_workers: int = 2000,
           mark: bytes | None = None) -> tuple[np.ndarray, float]:
    """Attack at ``rate``/s; returns per-request (latency_ms, status) rows, and the CPU
    seconds vegeta itself used. ``lazy``: each target once, read as needed (one per
    payment); otherwise the targets are loaded first and repeated. With ``mark``, each row
    has a third column: 1 if the answer's body holds ``mark``, else 0."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [*taskset("others"), "vegeta", "attack", "-format=json", *(["-lazy"] if lazy else []),
         f"-targets={targets}",
         f"-rate={rate}/s", f"-duration={duration}s", "-timeout=2s", f"-max-workers={max_workers}",
         f"-output={out}"], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if mark is not None:
        encoded = subprocess.run(["vegeta", "encode", "--to=json", str(out)], check=True,
                                 capture_output=True).stdout.splitlines()
        answers = [orjson.loads(line) for line in encoded]
        return np.array([(a["latency"] / 1e6, a["code"],
                          float(mark in base64.b64decode(a.get("body") or b"")))
                         for a in answers]), cpu
    csv = subprocess.run(["vegeta", "encode", "--to=csv", str(out)], check=True,
                         capture_output=True, text=True).stdout
    rows = [line.split(",") for line in csv.splitlines() if line]
    # columns: timestamp, code, latency(ns), bytes out, bytes in, error, ...
    return np.array([(int(r[2]) / 1e6, int(r[1])) for r in rows]), cpu


def cpu_seconds(pids: dict[str, int | None]) -> dict[str, float]:
    """CPU (user + system) used so far by each process and its children, by name."""
    out = {}
    for name, pid in pids.items():
        total = 0.0
        if pid is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        t = proc.cpu_times()
                        total += t.user + t.system
        out[name] = total
    return out


def summarise(res: np.ndarray, duration: float) -> dict[str, float]:
    lat, codes = res[:, 0], res[:, 1]
    ok = codes == 200

    def pct(q: float) -> float:
        return float(np.percentile(lat[ok], q)) if ok.any() else float("nan")

    return {"p50": pct(50), "p99": pct(99), "p999": pct(99.9),
            "throughput": ok.sum() / duration, "errors": float((~ok).sum()),
            "sent": float(len(codes))}


def write_targets(path: Path, bodies: list[bytes], url: str, key: str) -> None:
    header = {"Content-Type": ["application/json"], "X-API-Key": [key]}
    with open(path, "wb") as fh:
        for body in bodies:
            fh.write(orjson.dumps({"method": "POST", "url": url, "header": header,
                                   "body": base64.b64encode(body).decode()}) + b"\n")


def fresh_home(name: str) -> Path:
    """var/NAME emptied, and the settings of a stack of its own there (free ports, its own
    Kafka and Redis data); vegeta checked first."""
    if shutil.which("vegeta") is None:
        raise SystemExit("vegeta not found: ./scripts/setup.sh --bench builds it")
    home = ROOT / "var" / name
    shutil.rmtree(home, ignore_errors=True)
    from fraudstream_dev.testenv import isolated_env

    os.environ.update(isolated_env(home, f"fraudstream-{name}"))
    return home


def prepare(s: Settings, home: Path, today: datetime) -> tuple[str, str, str]:
    """Redis, Kafka and the stream worker started under ``home``; two models trained on a
    simulated month (the second current; the first for reload tests); the online store
    back-filled from that month. Returns (an API key of scopes score and admin, the first
    model's version, the current one's)."""
    from fraudstream_dev import launcher as services
    from model.api_keys import create_key
    from model.registry import Registry
    from stores import pii_key
    from stores.history import HistoryStore
    from stores.label_join import JoinState
    from stores.online_features import OnlineStore
    from training.backfill import backfill_online
    from training.importer import import_history
    from training.simulator import SimulationConfig, simulate
    from training.train import TrainConfig, train

    services.start_redis(s)
    services.start_kafka(s)
    hist = home / "history.parquet"
    simulate(SimulationConfig(days=30, cards=3000, terminals=300,
                              start=today - timedelta(days=37))).to_parquet(hist)
    import_history(HistoryStore(s.history_dir), hist, pii_key=pii_key.load(s))
    # The maturity set, not measured: measured on labels cut at today's date, it varies
    # with the day the benchmark runs and once left nothing of 30 days to train on.
    # The same family every run (the tuned gradient boosting, calibrated): the hot path's
    # figures stay comparable from one date to the next; each family's model step is in
    # docs/benchmarks-model-step.md.
    same = TrainConfig(force=True, maturity_days=BENCH_MATURITY_DAYS, baselines=False,
                       search_seconds=0)
    first = train(HistoryStore(s.history_dir), Registry(s.models_dir), same)
    current = train(HistoryStore(s.history_dir), Registry(s.models_dir), replace(same, seed=1))

    async def warm() -> None:
        from stores import redis_client

        r = redis_client.connect(s)
        await backfill_online(HistoryStore(s.history_dir), OnlineStore(r), JoinState(r))
        await r.aclose()

    asyncio.run(warm())
    assert s.api_keys_file is not None
    # A gateway's key sized for the load the benchmarks drive (overload runs go past the
    # installation's default); it still takes its leases from Redis like any key.
    key, _ = create_key(s.api_keys_file, "bench", {"score", "admin"},
                        rate_per_second=100_000.0, burst=100_000)
    services.start_stream(s)
    return key, first.version, current.version


async def stream_lag(s: Settings) -> int:
    """Scored payments in Kafka that the stream worker has not committed yet."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=s.stream_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(s.topic_scored, p) for p in range(s.kafka_partitions)]
        ends = await consumer.end_offsets(tps)
        lag = 0
        for tp in tps:
            lag += ends[tp] - ((await consumer.committed(tp)) or 0)
        return lag
    finally:
        await consumer.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def floor(rates: list[int], duration: float, repeat: int,
          home: Path) -> dict[int, dict[str, float]]:
    """The same load against an endpoint that does nothing (Go), median of ``repeat``."""
    go = shutil.which("go") or ("/usr/local/go/bin/go"
                                if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        console.print("[yellow]Go not found: the floor is not measured[/yellow]")
        return {}
    binary = home / "floor"
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=ROOT / "benchmarks" / "floor",
                   check=True, env={**os.environ, "GOFLAGS": "-mod=mod"})
    from fraudstream_dev.launcher import free_port

    address = f"127.0.0.1:{free_port()}"
    server = subprocess.Popen([*taskset("api"), str(binary), address])
    try:
        from fraudstream_dev.launcher import wait_until

        wait_until(lambda: _answers(f"http://{address}/"), "the floor server", 10)
        targets = home / "floor.jsonl"
        targets.write_bytes(orjson.dumps({"method": "GET", "url": f"http://{address}/"})
                            + b"\n")
        out: dict[int, list[dict[str, float]]] = {}
        for _ in range(repeat):
            for rate in rates:
                res, _ = vegeta(targets, rate, duration, home / "floor.bin", lazy=False)
                out.setdefault(rate, []).append(summarise(res, duration))
                console.print(f"floor rate={rate}/s: p50 {out[rate][-1]['p50']:.2f} ms "
                              f"p99 {out[rate][-1]['p99']:.2f} ms")
    finally:
        server.terminate()
        server.wait()
    return {r: {m: statistics.median(x[m] for x in v) for m in v[0]} for r, v in out.items()}


def short_machine() -> str:
    """The machine in a few words, for reports that are not about latency."""
    return f"{platform.machine()} with {os.cpu_count()} cores, Python {platform.python_version()}"
