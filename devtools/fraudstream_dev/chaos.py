"""Chaos: payments and labels at a fixed rate while parts of the stack are killed, hung and
restarted, then an audit from the raw stores.

The load is open loop (payment ``i`` is due at ``start + i / rate`` whatever the earlier
answers took) and behaves like a gateway: an attempt that fails or times out is sent again
with the same ``payment_id`` and body. One payment in ``label_every`` gets a fraud label a
moment after its answer, retried until accepted.

Faults are ``kill`` (SIGKILL, then restarted as ``fraudstream up`` would) or ``hang``
(SIGSTOP, then SIGCONT) of the API, the stream worker, Kafka or Redis, one part or several
at once, on a schedule or drawn from a seed.

The audit reads the raw Parquet files and Redis, not the de-duplicating views:

- every answered payment is in the raw history, each of its scorings once (two only when a
  retry was scored anew after an API process died holding it), the last scoring's
  decision the one answered;
- every accepted label is in the raw history once, and in the terminal's and the card's
  fraud aggregates (a set per entity: once, and nothing there that was not labelled);
- the features served equal the point-in-time features recomputed from the history: those
  that do not depend on labels exactly (payments answered degraded, without Redis, are not
  in the online windows, so not in the recomputed ones either); the two that count fresh
  labels may lag (a label counts online once the stream applied it, offline from its
  ``reported_at``), never lead;
- answers against the deadline, and per fault: requests, answered, degraded, errors, lost,
  doubled, late and the time to recover.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
import numpy as np
import pandas as pd

from fraudstream_dev import launcher
from fraudstream_dev.testenv import redis_client
from model.config import Settings
from model.features import FEATURE_NAMES
from model.point_in_time import compute_features
from stores.history import FEATURE_PREFIX, HistoryStore
from stores.online_features import card_fraud_known_key, terminal_fraud_known_key

TARGETS = ("api", "stream", "redis", "kafka")
# Restarted in this order: what the others need first.
_START_ORDER = ("redis", "kafka", "stream", "api")
_STARTS = 5  # a restarted part that dies during start-up is started again, this often
# Features that count labels reported lately: online they see a label once applied.
LABEL_FRESH = ("card_fraud_known_30d", "terminal_fraud_fresh_7d")


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the load starts
    kind: Literal["kill", "hang"]
    targets: tuple[str, ...]
    down: float  # seconds dead before the restart, or hung before SIGCONT

    def __post_init__(self) -> None:
        unknown = set(self.targets) - set(TARGETS)
        if unknown or not self.targets:
            raise ValueError(f"fault targets must be among {TARGETS}, got {self.targets}")
        if self.kind not in ("kill", "hang") or self.at < 0 or self.down < 0:
            raise ValueError(f"bad fault {self}")

    @property
    def name(self) -> str:
        return f"{self.kind} {'+'.join(self.targets)}"


def default_schedule(duration: float) -> list[Fault]:
    """Each part killed once and hung once, then two at once, spread over ``duration``."""
    faults: list[tuple[Literal["kill", "hang"], tuple[str, ...]]] = [
        ("kill", ("stream",)), ("hang", ("api",)), ("kill", ("redis",)),
        ("kill", ("api",)), ("hang", ("redis",)), ("kill", ("kafka",)),
        ("hang", ("stream",)), ("kill", ("api", "stream"))]
    step = duration / (len(faults) + 1)
    return [Fault(at=step * (i + 0.5), kind=kind, targets=targets,
                  down=min(4.0, step / 3))
            for i, (kind, targets) in enumerate(faults)]


def seeded_schedule(seed: int, duration: float, count: int) -> list[Fault]:
    """``count`` faults drawn from ``seed``: kind, one or two targets, time and length."""
    rng = random.Random(seed)
    step = duration / (count + 1)
    out = []
    for i in range(count):
        targets = tuple(sorted(rng.sample(TARGETS, 2 if rng.random() < 0.3 else 1)))
        out.append(Fault(at=step * i + rng.uniform(0.2, 0.5) * step,
                         kind=rng.choice(("kill", "hang")),
                         targets=targets, down=round(rng.uniform(1.0, min(5.0, step / 3)), 1)))
    return out


@dataclass
class PaymentLog:
    payment_id: str
    card_id: str
    terminal_id: str
    due: float  # seconds after the start
    sent: float | None = None  # first attempt actually sent (client lag = sent - due)
    answered: float | None = None
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    decision: str | None = None
    degraded: bool = False
    replay: bool = False
    server_ms: float | None = None  # the answer's own latency_ms
    attempt_ms: float | None = None  # the answered attempt, as the client saw it


@dataclass
class LabelLog:
    payment_id: str
    terminal_id: str
    card_id: str
    reported_at: str
    accepted: float | None = None
    attempts: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class VerdictLog:
    """An analyst's verdict on a payment decided review (a case in the review queue)."""

    payment_id: str
    terminal_id: str
    card_id: str
    verdict: str
    accepted: float | None = None
    decided_at: str | None = None
    attempts: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class FaultLog:
    fault: Fault
    start: float
    end: float | None = None  # every target restarted and ready (kill), or continued (hang)
    error: str | None = None
    ready: dict[str, float] = field(default_factory=dict)  # per target, for kills
    # Starts that died during start-up (another fault took a part they need), per target.
    crashed_starts: dict[str, int] = field(default_factory=dict)


@dataclass
class ChaosConfig:
    duration: float = 60.0
    rate: float = 100.0
    label_every: int = 10
    cards: int = 400
    terminals: int = 60
    attempt_timeout: float = 2.0  # the gateway's own time-out per attempt
    give_up_after: float = 30.0  # a gateway stops retrying a payment this long after it
    deadline_ms: int = 250
    slack_ms: float = 50.0
    seed: int = 1
    # The gateway's retry budget, as a share of the payments' rate (Envoy's and Finagle's
    # retry budgets): retries of every kind together are spent from a bucket refilled at
    # ``rate * retry_share`` a second (at least 10), holding five seconds of it. Without
    # one, an outage's backlog retried every second or two outgrew the key's rate limit,
    # and every attempt, new payments' too, was answered 429 for as long as the run lasted.
    retry_share: float = 1.0


@dataclass
class ChaosRun:
    config: ChaosConfig
    run_id: str
    payments: list[PaymentLog]
    labels: list[LabelLog]
    faults: list[FaultLog]
    t0_epoch: float
    verdicts: list[VerdictLog] = field(default_factory=list)


# ---- the load -----------------------------------------------------------------------------
class _Load:
    def __init__(self, settings: Settings, cfg: ChaosConfig, headers: dict[str, str],
                 analyst: dict[str, str] | None = None) -> None:
        self.settings, self.cfg = settings, cfg
        self.rng = random.Random(cfg.seed)
        self.run_id = f"chaos{uuid.uuid4().hex[:6]}"
        self.payments: list[PaymentLog] = []
        self.labels: list[LabelLog] = []
        self.verdicts: list[VerdictLog] = []
        self.headers = headers
        self.analyst = analyst
        self.client: aiohttp.ClientSession | None = None
        self.t0 = 0.0
        # At least 10 retries a second (Finagle's floor), and five seconds' worth saved up:
        # the retries an outage of a few seconds leaves behind go out once it ends.
        self._retry_rate = max(10.0, cfg.rate * cfg.retry_share)
        self._retry_burst = 5 * self._retry_rate
        self._retry_next = 0.0
        self.jitter = random.Random(cfg.seed + 1)  # apart from the payments' own draws

    def _retry_wait(self) -> float:
        """How long the next retry waits for its turn in the retry budget. Turns are handed
        out in the order asked for (a retry polling for a free token could starve for the
        whole give-up time, as three payments did behind a restarting API)."""
        now = self.now()
        turn = max(self._retry_next, now - self._retry_burst / self._retry_rate)
        self._retry_next = turn + 1 / self._retry_rate
        return max(0.0, turn - now)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def _post(self, path: str, body: dict[str, Any],
                    log: PaymentLog | LabelLog | VerdictLog, ok: int,
                    headers: dict[str, str] | None = None,
                    give_up_after: float | None = None) -> dict[str, Any] | None:
        """Attempts until one answers ``ok`` or the gateway gives up: back-off 0.1 s .. 2 s
        with jitter, at least the answer's ``Retry-After``, and each retry spent from the
        retry budget. (aiohttp: with hundreds of requests waiting on a hung API, httpx's
        pool spends quadratic CPU and the load generator itself falls behind.)"""
        assert self.client is not None
        start, pause = self.now(), 0.1
        give_up = give_up_after or self.cfg.give_up_after
        while self.now() - start < give_up:
            if log.attempts:
                await asyncio.sleep(self._retry_wait())
            log.attempts += 1
            began = time.perf_counter()
            if isinstance(log, PaymentLog) and log.sent is None:
                log.sent = self.now()
            try:
                async with self.client.post(path, json=body, headers=headers) as resp:
                    if resp.status == ok:
                        answer: dict[str, Any] = await resp.json()
                        if isinstance(log, PaymentLog):
                            log.attempt_ms = (time.perf_counter() - began) * 1000
                        return answer
                    await resp.read()
                    log.errors.append(f"HTTP {resp.status}")
                    told = resp.headers.get("Retry-After", "")
                    if told.isdigit():
                        pause = max(pause, float(told))
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.errors.append(type(exc).__name__)
            await asyncio.sleep(pause * (0.5 + self.jitter.random()))
            pause = min(pause * 2, 2.0)
        return None

    async def _payment(self, log: PaymentLog, body: dict[str, Any]) -> None:
        answer = await self._post("/v1/payments/score", body, log, 200)
        if answer is None:
            return
        log.answered = self.now()
        log.decision, log.degraded = answer["decision"], bool(answer.get("degraded"))
        log.replay, log.server_ms = bool(answer.get("replay")), float(answer["latency_ms"])
        index = int(log.payment_id.rsplit("_", 1)[1])
        if index % self.cfg.label_every == 0:
            await asyncio.sleep(0.5)
            await self._label(log)
        elif log.decision == "review" and self.analyst is not None:
            await asyncio.sleep(0.5)
            await self._verdict(log, "fraud" if index % 2 else "legitimate")

    async def _verdict(self, paid: PaymentLog, verdict: str) -> None:
        """Retried until the API takes it: 404 until the stream has made the case."""
        log = VerdictLog(paid.payment_id, paid.terminal_id, paid.card_id, verdict)
        self.verdicts.append(log)
        answer = await self._post(f"/v1/reviews/{paid.payment_id}/verdict",
                                  {"verdict": verdict, "note": "chaos"}, log, 200,
                                  headers=self.analyst,
                                  give_up_after=2 * self.cfg.give_up_after)
        if answer is not None:
            log.accepted = self.now()
            log.decided_at = answer["case"]["decided_at"]

    async def _label(self, paid: PaymentLog) -> None:
        reported = datetime.now(UTC).isoformat()
        log = LabelLog(paid.payment_id, paid.terminal_id, paid.card_id, reported)
        self.labels.append(log)
        body = {"payment_id": paid.payment_id, "is_fraud": True, "source": "chargeback",
                "reported_at": reported}
        if await self._post("/v1/labels", body, log, 202) is not None:
            log.accepted = self.now()

    async def run(self) -> None:
        cfg = self.cfg
        tasks = []
        self.client = aiohttp.ClientSession(
            base_url=self.settings.api_url, headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=cfg.attempt_timeout),
            # No pool limit: with one, a 10-minute run at 300/s once stalled for good after
            # a hung API (512 connections open and idle, every attempt timing out waiting
            # for one), while the API answered fresh connections at once. A gateway opens
            # what it needs; the API's own backlog is what bounds it.
            connector=aiohttp.TCPConnector(limit=0))
        self.t0 = time.perf_counter()
        for i in range(int(cfg.duration * cfg.rate)):
            due = i / cfg.rate
            delay = due - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            card = f"{self.run_id}_c{self.rng.randrange(cfg.cards)}"
            terminal = f"{self.run_id}_t{self.rng.randrange(cfg.terminals)}"
            log = PaymentLog(f"{self.run_id}_{i:06d}", card, terminal, due)
            self.payments.append(log)
            body = {"payment_id": log.payment_id, "timestamp": datetime.now(UTC).isoformat(),
                    "card_id": card, "terminal_id": terminal,
                    "amount": round(self.rng.lognormvariate(3.5, 1.0), 2), "currency": "EUR",
                    "country": self.rng.choice(("FR", "DE", "ES")), "channel": "ecom"}
            tasks.append(asyncio.create_task(self._payment(log, body)))
        await asyncio.gather(*tasks)
        await self.client.close()


# ---- the faults ---------------------------------------------------------------------------
def _proc(settings: Settings, target: str) -> launcher.Proc:
    return {"api": launcher.api_proc, "stream": launcher.stream_proc,
            "redis": launcher.redis_proc, "kafka": launcher.kafka_proc}[target](settings)


def _start(settings: Settings, target: str) -> None:
    {"api": launcher.start_api, "stream": launcher.start_stream,
     "redis": launcher.start_redis, "kafka": launcher.start_kafka}[target](settings)


def _signal_all(settings: Settings, targets: tuple[str, ...], sig: int) -> None:
    for target in targets:
        _proc(settings, target).signal(sig)  # not running (died since): nothing to signal


async def _inject(settings: Settings, fault: Fault, clock: Callable[[], float],
                  logs: list[FaultLog]) -> None:
    await asyncio.sleep(max(0.0, fault.at - clock()))
    log = FaultLog(fault, start=clock())
    logs.append(log)
    try:
        if fault.kind == "hang":
            _signal_all(settings, fault.targets, signal.SIGSTOP)
            await asyncio.sleep(fault.down)
            _signal_all(settings, fault.targets, signal.SIGCONT)
        else:
            _signal_all(settings, fault.targets, signal.SIGKILL)
            await asyncio.sleep(fault.down)
            # Each part restarted on its own, as a supervisor would: the API does not wait
            # for the stream worker's rebalance, the worker waits for Kafka by itself. A
            # start that dies because the next fault took Kafka from a worker still joining
            # its group is started again, as a supervisor does.
            async def restart(target: str) -> None:
                for attempt in range(_STARTS):
                    try:
                        await asyncio.to_thread(_start, settings, target)
                        break
                    except launcher.ServiceError:
                        if attempt == _STARTS - 1 or _proc(settings, target).running():
                            raise  # not a crash, or crashing each time: the audit says so
                        log.crashed_starts[target] = attempt + 1
                        await asyncio.sleep(1.0)
                log.ready[target] = clock() - log.start

            await asyncio.gather(*(restart(t) for t in _START_ORDER if t in fault.targets))
    except Exception as exc:  # the audit reports it; the run goes on
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{os.path.basename(frame.filename)}:{frame.lineno}"
        log.error = f"{type(exc).__name__}: {exc} ({where})"
    log.end = clock()


Progress = Callable[[float, int, int, list[FaultLog]], None]


async def _report(load: _Load, faults: list[FaultLog], progress: Progress) -> None:
    while True:
        await asyncio.sleep(5.0)
        answered = sum(p.answered is not None for p in load.payments)
        progress(load.now(), answered, len(load.payments), faults)


async def _run(settings: Settings, cfg: ChaosConfig, schedule: list[Fault],
               headers: dict[str, str], progress: Progress | None,
               analyst: dict[str, str] | None) -> ChaosRun:
    load = _Load(settings, cfg, headers, analyst)
    faults: list[FaultLog] = []
    t0_epoch = time.time()
    running = asyncio.create_task(load.run())
    await asyncio.sleep(0)  # the load's clock starts first
    injected = [asyncio.create_task(_inject(settings, f, load.now, faults)) for f in schedule]
    reporter = asyncio.create_task(_report(load, faults, progress)) if progress else None
    await asyncio.gather(running, *injected)
    if reporter is not None:
        reporter.cancel()
    return ChaosRun(cfg, load.run_id, load.payments, load.labels,
                    sorted(faults, key=lambda f: f.start), t0_epoch, load.verdicts)


def run_chaos(settings: Settings, cfg: ChaosConfig, schedule: list[Fault],
              headers: dict[str, str], progress: Progress | None = None,
              analyst: dict[str, str] | None = None) -> ChaosRun:
    """Run the load and the faults (the stack must be up), then make sure every part runs
    again. Call ``audit`` afterwards. ``progress(elapsed_s, answered, sent, faults)`` is
    called every 5 s. With ``analyst`` headers (a key with the review scope), payments
    answered ``review`` get an analyst's verdict through the review queue."""
    run = asyncio.run(_run(settings, cfg, schedule, headers, progress, analyst))
    for target in _START_ORDER:  # a fault whose restart failed: try once more
        _signal_all(settings, (target,), signal.SIGCONT)
        _start(settings, target)
    return run


# ---- the audit ----------------------------------------------------------------------------
def wait_recorded(settings: Settings, run: ChaosRun, timeout: float = 180.0,
                  progress: Callable[[int, int], None] | None = None) -> bool:
    """Wait until the history holds every answered payment and accepted label of the run."""
    store = HistoryStore(settings.history_dir)
    want_p = sum(p.answered is not None for p in run.payments)
    want_l = sum(lb.accepted is not None for lb in run.labels) + \
        sum(v.accepted is not None for v in run.verdicts)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got_p, got_l = _counts(store, run.run_id)
        if progress is not None:
            progress(got_p + got_l, want_p + want_l)
        if got_p >= want_p and got_l >= want_l:
            return True
        time.sleep(1.0)
    return False


def _counts(store: HistoryStore, run_id: str) -> tuple[int, int]:
    like = [f"{run_id}_%"]
    try:
        p = store.query("SELECT count(DISTINCT payment_id) AS n FROM payments_raw "
                        "WHERE payment_id LIKE ?", like)["n"][0]
        lb = store.query("SELECT count(DISTINCT payment_id) AS n FROM labels_raw "
                         "WHERE payment_id LIKE ?", like)["n"][0]
    except Exception:  # no file of that kind yet
        return 0, 0
    return int(p), int(lb)


def audit(settings: Settings, run: ChaosRun) -> dict[str, Any]:
    """Everything the module docstring promises, as plain data (and ``per_fault`` rows)."""
    cfg = run.config
    store = HistoryStore(settings.history_dir)
    like = [f"{run.run_id}_%"]
    # A payment's scorings: normally one; two when the gateway's retry was scored anew
    # after an API process died holding it, and then the last is the one it acted on
    # (``stream.recording``). One scoring recorded twice is a double.
    raw = store.query(
        "SELECT payment_id, count(*) AS n, count(DISTINCT scored_at) AS scorings, "
        "arg_max(decision, scored_at) AS decision, bool_or(degraded) AS degraded "
        "FROM payments_raw WHERE payment_id LIKE ? GROUP BY payment_id",
        like).set_index("payment_id")
    label_raw = store.query("SELECT payment_id, count(*) AS n FROM labels_raw "
                            "WHERE payment_id LIKE ? GROUP BY payment_id",
                            like).set_index("payment_id")["n"]
    pay = pd.DataFrame([asdict(p) for p in run.payments]).set_index("payment_id")
    pay["answered_ok"] = pay["answered"].notna()
    recorded = raw.reindex(pay.index)
    pay["rows"] = recorded["n"].fillna(0).astype(int)
    pay["scorings"] = recorded["scorings"].fillna(0).astype(int)
    pay["lost"] = pay["answered_ok"] & (pay["rows"] == 0)
    pay["doubled"] = pay["rows"] > pay["scorings"]
    pay["decision_differs"] = pay["answered_ok"] & (pay["rows"] > 0) & (
        recorded["decision"] != pay["decision"])
    pay["total_ms"] = (pay["answered"] - pay["due"]) * 1000
    pay["late"] = pay["answered_ok"] & (pay["total_ms"] > cfg.deadline_ms + cfg.slack_ms)
    pay["errors_n"] = pay["errors"].map(len)

    labels = pd.DataFrame([asdict(lb) for lb in run.labels])
    accepted = labels[labels["accepted"].notna()] if len(labels) else labels
    label_rows = label_raw.reindex(accepted["payment_id"]).fillna(0).astype(int) \
        if len(accepted) else pd.Series(dtype=int)
    # Verdicts: each accepted one is one analyst label in the raw history; a fraud verdict
    # puts its payment in the fraud sets, a legitimate one does not.
    verdicts = pd.DataFrame([asdict(v) for v in run.verdicts],
                            columns=[f.name for f in fields(VerdictLog)])
    decided = verdicts[verdicts["accepted"].notna()]
    analyst_raw = store.query(
        "SELECT payment_id, count(*) AS n, bool_and(source = 'analyst') AS analyst, "
        "bool_and(is_fraud) AS fraud FROM labels_raw WHERE payment_id LIKE ? "
        "GROUP BY payment_id", like).set_index("payment_id")
    verdict_rows = analyst_raw.reindex(decided["payment_id"])
    verdict_wrong = int(((verdict_rows["analyst"] != True) |  # noqa: E712 (NA-safe)
                         (verdict_rows["fraud"] != (decided["verdict"] == "fraud").to_numpy()))
                        .sum()) if len(decided) else 0
    fraud_known = pd.concat([accepted, decided[decided["verdict"] == "fraud"]])
    # What the features may hold beyond those: fraud labels the API took after the client
    # had given up on them (an attempt timed out, yet went through) are in the history.
    fraud_recorded = set(store.query(
        "SELECT DISTINCT payment_id FROM labels_raw WHERE payment_id LIKE ? AND is_fraud",
        like)["payment_id"])
    in_features = _labels_in_features(settings, fraud_known, fraud_recorded)

    # Answered by a second scoring (no replay after failed attempts): its first attempt may
    # have reached the card's window before its API process died, earlier than the
    # history's record of it says. The card's payments scored since that first attempt
    # are uncertain, like those after a degraded one.
    again = pay[pay["answered_ok"] & (pay["attempts"] > 1)
                & ~pay["replay"].fillna(False).astype(bool)]
    rescored = (run.t0_epoch + again["sent"]).groupby(again["card_id"]).min()
    parity = _feature_parity(store, run.run_id,
                             {str(k): float(v) for k, v in rescored.items()})
    answered = pay[pay["answered_ok"]]
    # Every attempt's error, payments, labels and verdicts alike: a 503 is a "retry" the
    # API chose to give (Redis or Kafka away); any other 5xx is a failure of the API.
    logs: list[PaymentLog | LabelLog | VerdictLog] = [*run.payments, *run.labels,
                                                      *run.verdicts]
    attempt_errors = [e for log in logs for e in log.errors]
    totals = {
        "http_503": sum(e == "HTTP 503" for e in attempt_errors),
        "http_429": sum(e == "HTTP 429" for e in attempt_errors),
        "http_5xx_other": sum(e.startswith("HTTP 5") and e != "HTTP 503"
                              for e in attempt_errors),
        "requests": len(pay), "answered": int(pay["answered_ok"].sum()),
        "unanswered": int((~pay["answered_ok"]).sum()),
        "degraded": int(answered["degraded"].sum()), "replays": int(answered["replay"].sum()),
        "retried": int((pay["attempts"] > 1).sum()), "lost": int(pay["lost"].sum()),
        "doubled": int(pay["doubled"].sum()), "rescored": int((pay["scorings"] > 1).sum()),
        "decision_differs": int(pay["decision_differs"].sum()),
        "late": int(pay["late"].sum()),
        "client_p50_ms": _q(answered["total_ms"], 50),
        "client_p99_ms": _q(answered["total_ms"], 99),
        "client_max_ms": float(answered["total_ms"].max()) if len(answered) else float("nan"),
        "answered_attempt_p99_ms": _q(answered["attempt_ms"], 99),
        "server_p99_ms": _q(answered["server_ms"], 99),
        "server_max_ms": float(answered["server_ms"].max()) if len(answered) else float("nan"),
        "client_lag_p99_ms": _q((pay["sent"] - pay["due"]) * 1000, 99),
        "labels": len(labels), "labels_accepted": len(accepted),
        "labels_lost": int((label_rows == 0).sum()), "labels_doubled": int((label_rows > 1).sum()),
        "verdicts": len(verdicts), "verdicts_accepted": len(decided),
        "verdicts_fraud": int((decided["verdict"] == "fraud").sum()),
        "verdicts_lost": int(verdict_rows["n"].isna().sum()) if len(decided) else 0,
        "verdicts_doubled": int((verdict_rows["n"] > 1).sum()) if len(decided) else 0,
        "verdicts_wrong_label": verdict_wrong,
        "labels_missing_in_features": in_features["missing"],
        "labels_unexpected_in_features": in_features["unexpected"],
        **parity,
    }
    unanswered = pay[~pay["answered_ok"]]
    return {"run_id": run.run_id, "totals": totals,
            # What the gateway got for each payment it gave up on, attempt by attempt.
            "unanswered": [{"payment_id": row.Index, "due_s": round(float(row.due), 3),
                            "errors": list(row.errors)} for row in _rows(unanswered)],
            "per_fault": _per_fault(pay, run),
            "timeline": _timeline(pay, run), "faults": [
                {"fault": f.fault.name, "start": f.start, "end": f.end, "error": f.error,
                 "ready_after_s": f.ready, "crashed_starts": f.crashed_starts}
                for f in run.faults]}


def _rows(frame: pd.DataFrame) -> Iterator[Any]:
    """``itertuples`` rows, typed as what they are to the code reading them: named tuples of
    the frame's columns, which pandas' stubs cannot name."""
    return iter(frame.itertuples())


def _q(values: pd.Series, q: float) -> float:
    values = values.dropna()
    return float(np.percentile(values, q)) if len(values) else float("nan")


def _labels_in_features(settings: Settings, accepted: pd.DataFrame,
                        recorded: set[str]) -> dict[str, int]:
    """Each accepted fraud label in its terminal's and card's fraud sets, and nothing there
    that the history holds no fraud label for."""
    client = redis_client(settings)
    try:
        missing = unexpected = 0
        for key_of, column in ((terminal_fraud_known_key, "terminal_id"),
                               (card_fraud_known_key, "card_id")):
            if not len(accepted):
                continue
            for entity, group in accepted.groupby(column):
                members = {m.decode() for m in client.zrange(key_of(str(entity)), 0, -1)}
                missing += len(set(group["payment_id"]) - members)
                unexpected += len(members - recorded)
        return {"missing": missing, "unexpected": unexpected}
    finally:
        client.close()


def _feature_parity(store: HistoryStore, run_id: str,
                    rescored: dict[str, float] | None = None) -> dict[str, Any]:
    """Served features against the point-in-time recomputation from the raw history.
    ``rescored``: card -> the first attempt (epoch) of its earliest payment answered by a
    second scoring."""
    cols = ", ".join(f"{FEATURE_PREFIX}{f}" for f in FEATURE_NAMES)
    payments = store.query(
        "SELECT payment_id, epoch_us(ts) / 1e6 AS ts, epoch_us(scored_at) / 1e6 AS scored, "
        "card_id, terminal_id, amount, country, "
        f"merchant_category, degraded, {cols} FROM payments WHERE payment_id LIKE ? "
        "ORDER BY coalesce(scored_at, ts), ts, payment_id", [f"{run_id}_%"])
    labels = store.query("SELECT payment_id, is_fraud, epoch_us(reported_at) / 1e6 AS "
                         "reported_at FROM labels WHERE payment_id LIKE ?", [f"{run_id}_%"])
    if payments.empty:
        return {"parity_checked": 0}
    served = payments[[FEATURE_PREFIX + f for f in FEATURE_NAMES]].set_axis(
        list(FEATURE_NAMES), axis=1)
    # A payment answered degraded may or may not have reached the online windows (Redis
    # down: not; Redis hung past the deadline: perhaps later), and one answered by a
    # second scoring reached them at its first attempt, so its card's later payments
    # cannot be held to exact equality. (The terminal's windows end 7 days ago:
    # the run's own payments are not in them.) Labels count whatever their payment's answer.
    # "Later" counts from the degraded payment's arrival, not from its scored_at: that is
    # the API's clock when it gave up, and its script may have run in Redis just before,
    # ahead of a payment whose scored_at is then earlier (seen once in a chaos run: the
    # next payment on the card saw it, the history's order did not).
    degraded = payments["degraded"].fillna(False).astype(bool)
    first_degraded = payments["ts"].where(degraded).groupby(payments["card_id"]).transform("min")
    after = (payments["scored"] >= first_degraded).fillna(False) & ~degraded
    since = payments["card_id"].map(rescored or {})
    after |= (payments["scored"] >= since).fillna(False) & ~degraded
    offline = compute_features(payments, labels)
    check = (~degraded & ~after & served.notna().all(axis=1)).to_numpy()
    on, windows = served[check], offline[check]
    with_labels = offline[~degraded.to_numpy() & served.notna().all(axis=1).to_numpy()]
    on_all = served.loc[with_labels.index]
    exact = [f for f in FEATURE_NAMES if f not in LABEL_FRESH]
    fresh = list(LABEL_FRESH)
    return {"parity_checked": int(check.sum()),
            "parity_skipped_degraded": int(degraded.sum()),
            "parity_skipped_after_degraded": int(after.sum()),
            "parity_exact_differs": int((on[exact] != windows[exact]).any(axis=1).sum()),
            "parity_differing_features": sorted(
                f for f in exact if (on[f] != windows[f]).any()),
            "parity_label_fresh_lagging": int(
                (on_all[fresh] < with_labels[fresh]).any(axis=1).sum()),
            "parity_label_fresh_leading": int(
                (on_all[fresh] > with_labels[fresh]).any(axis=1).sum())}


def _per_fault(pay: pd.DataFrame, run: ChaosRun) -> list[dict[str, Any]]:
    """Per fault, the payments due from its start until the next fault's (or the end),
    and the time from its start until answers were on time again: the start of the
    first 2-second slice after the fault ended in which every payment due was answered,
    undegraded, within the deadline + slack."""
    cfg = run.config
    starts = [f.start for f in run.faults] + [cfg.duration]
    rows = []
    phases: list[tuple[str, FaultLog | None, float, float]] = [("steady", None, 0.0, starts[0])]
    phases += [(f.fault.name, f, f.start, starts[i + 1]) for i, f in enumerate(run.faults)]
    for name, fault, lo, hi in phases:
        win = pay[(pay["due"] >= lo) & (pay["due"] < hi)]
        recovered = float("nan")
        if fault is not None:
            # from the end of the fault on, whatever the next faults do
            end = fault.end or fault.start
            later = pay[pay["due"] >= end]
            on_time = ~later["late"] & later["answered_ok"] & ~later["degraded"]
            ok = on_time.groupby((later["due"] - end) // 2.0).all()
            recovered = float(end - lo + ok[ok].index.min() * 2.0) if ok.any() \
                else float("inf")
        rows.append({
            "phase": name, "from_s": round(lo, 1),
            "fault_s": round((fault.end or fault.start) - lo, 1) if fault else float("nan"),
            "ready_after_s": ", ".join(f"{t} {v:.1f}" for t, v in fault.ready.items())
            if fault else "",
            "requests": len(win), "answered": int(win["answered_ok"].sum()),
            "degraded": int(win["degraded"].sum()), "failed_attempts": int(win["errors_n"].sum()),
            "lost": int(win["lost"].sum()), "doubled": int(win["doubled"].sum()),
            "late": int(win["late"].sum()),
            "p99_ms": _q(win.loc[win["answered_ok"], "total_ms"], 99),
            # where a late answer's time went: the load generator's own lag, the answered
            # attempt as the client saw it, and the part the API itself measured
            "lag_p99_ms": _q((win["sent"] - win["due"]) * 1000, 99),
            "attempt_p99_ms": _q(win["attempt_ms"], 99),
            "server_p99_ms": _q(win["server_ms"], 99),
            "recovered_s": recovered, "error": fault.error if fault else None,
        })
    return rows


def _timeline(pay: pd.DataFrame, run: ChaosRun) -> pd.DataFrame:
    """Per second of the run (by due time): answered, degraded, unanswered, p99 ms."""
    sec = pay["due"].floordiv(1.0).astype(int)
    g = pay.groupby(sec)
    return pd.DataFrame({
        "answered": g["answered_ok"].sum(), "degraded": g["degraded"].sum(),
        "unanswered": g["answered_ok"].apply(lambda s: int((~s).sum())),
        "p99_ms": g["total_ms"].apply(lambda s: _q(s, 99)),
        "max_ms": g["total_ms"].max(),
    })
