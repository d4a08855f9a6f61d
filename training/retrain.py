"""The retraining job that runs by itself (``fraudstream retrain-worker``).

Each tick (every ``check_seconds``), in this order:

1. **The challenger in shadow**, if there is one: after ``shadow_days`` it is compared with
   the champion on the shadow-scored payments whose labels have matured
   (``training.shadow``). A significant gain in average precision, on at least
   ``min_shadow_fraud`` frauds, promotes it; after ``max_shadow_days`` without one it is
   retired.
2. **A retraining run**, when none is in shadow and either the schedule is due
   (``every_hours`` since the last run) or ``min_new_labels`` labels have matured since
   the last run's cut-off (labels a new run can learn from that the last one could not).
   The run is ``training.train`` with ``shadow=True``: a candidate that beats the
   champion offline becomes the challenger, it does not answer.

One run at a time, across processes and hosts sharing the registry: an exclusive ``flock``
on ``<registry>/retrain.lock``. The kernel drops it when its holder dies, so a crashed run
never blocks the next; the crashed run's record is marked ``abandoned``.

Every run and every promotion or retirement is recorded in the registry (``runs/``,
``promotions.jsonl``), shown by ``fraudstream model list`` and ``GET /v1/model``.

The clock is the wall clock, or (``clock="events"``) the newest payment in the history:
a replayed or simulated month then retrains on its own calendar.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from model.config import Settings
from model.features import DAY
from model.registry import Registry
from stores.history import HistoryStore
from training.dataset import load
from training.shadow import compare, significant_enough
from training.train import TrainConfig, TrainingError, observed_maturity_days, train

log = logging.getLogger(__name__)
HOUR = 3_600.0
LOCK_FILE = "retrain.lock"


def _setting(name: str) -> Any:
    """A setting's default: the policy's defaults are the ``FRAUDSTREAM_*`` settings'
    (``model.config.Settings``), defined there once."""
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class RetrainPolicy:
    every_hours: float = _setting("retrain_every_hours")
    min_new_labels: int = _setting("retrain_min_new_labels")
    shadow_days: float = _setting("shadow_days")
    max_shadow_days: float = _setting("max_shadow_days")
    min_shadow_fraud: int = _setting("min_shadow_fraud")
    # Labels mature after this many days (None: the 90th percentile of observed delays).
    # Used to train and to compare in shadow.
    maturity_days: float | None = _setting("maturity_days")
    clock: Literal["wall", "events"] = _setting("retrain_clock")
    train: TrainConfig = field(default_factory=lambda: TrainConfig(shadow=True))


    @classmethod
    def from_settings(cls, settings: Settings, baselines: bool | None = None) -> RetrainPolicy:
        """The retrain worker's policy as the ``FRAUDSTREAM_*`` settings give it; ``baselines``
        overrides ``retrain_baselines``."""
        return cls(
            every_hours=settings.retrain_every_hours,
            min_new_labels=settings.retrain_min_new_labels,
            shadow_days=settings.shadow_days, max_shadow_days=settings.max_shadow_days,
            min_shadow_fraud=settings.min_shadow_fraud, maturity_days=settings.maturity_days,
            clock=settings.retrain_clock,
            train=TrainConfig(shadow=True, test_days=settings.retrain_test_days,
                              baselines=(settings.retrain_baselines if baselines is None
                                         else baselines)))


@dataclass
class TickReport:
    now: float
    actions: list[str] = field(default_factory=list)
    run: dict[str, Any] | None = None


class Busy(Exception):
    """Another retraining run holds the lock."""


@contextmanager
def run_lock(registry: Registry) -> Iterator[None]:
    registry.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(registry.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise Busy("another retraining run holds the lock") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


class RetrainWorker:
    def __init__(self, store: HistoryStore, registry: Registry, policy: RetrainPolicy,
                 progress: Callable[[str, int | None], None] | None = None) -> None:
        self.store = store
        self.registry = registry
        self.policy = policy
        self.progress = progress

    # ---- the clock and the triggers ----------------------------------------------------
    def now(self) -> float:
        if self.policy.clock == "wall":
            return time.time()
        newest = self.store.query("SELECT epoch_us(max(ts)) / 1e6 AS t FROM payments_raw")["t"]
        value = newest.iloc[0] if len(newest) else None
        return float(value) if value is not None and value == value else time.time()

    def last_run(self) -> dict[str, Any] | None:
        runs = [r for r in self.registry.runs() if r.get("kind") == "train"
                and r.get("status") in ("finished", "failed")]
        return runs[-1] if runs else None

    def new_matured_labels(self, since: float, now: float, maturity_days: float) -> int:
        """Labels a run at ``now`` can learn from that a run at ``since`` could not: on a
        payment matured by ``now`` (older than ``maturity_days``) and reported by then,
        but not both matured and reported by ``since``. A label on a payment still
        maturing is left for later: training leaves such payments out."""
        m = maturity_days * DAY
        return int(self.store.query(
            "SELECT count(*) AS n FROM labels l JOIN payments p USING (payment_id) "
            "WHERE p.ts <= to_timestamp(?) AND l.reported_at <= to_timestamp(?) "
            "AND NOT (p.ts <= to_timestamp(?) AND l.reported_at <= to_timestamp(?))",
            [now - m, now, since - m, since])["n"].iloc[0])

    def _maturity_of(self, last: dict[str, Any]) -> float:
        """The maturity the last run trained with (read from its window), else measured:
        measuring reads the whole history, too much for every tick."""
        if self.policy.maturity_days is not None:
            return self.policy.maturity_days
        recorded = (last.get("window") or {}).get("maturity_days")
        return float(recorded) if recorded is not None else self.maturity()

    def due(self, now: float) -> str | None:
        """Why a run is due now (``schedule`` or ``labels``), or None."""
        last = self.last_run()
        if last is None:
            return "schedule"
        if now - float(last["clock"]) >= self.policy.every_hours * HOUR:
            return "schedule"
        if self.new_matured_labels(float(last["clock"]), now, self._maturity_of(last)) \
                >= self.policy.min_new_labels:
            return "labels"
        return None

    def maturity(self) -> float:
        if self.policy.maturity_days is not None:
            return self.policy.maturity_days
        payments, labels = load(self.store)
        return observed_maturity_days(payments, labels)

    # ---- one tick ----------------------------------------------------------------------
    def tick(self, force: bool = False) -> TickReport:
        """Review the challenger, then retrain if due (``force``: now). Raises Busy."""
        with run_lock(self.registry):
            self._abandon_crashed()
            now = self.now()
            report = TickReport(now)
            if self.registry.challenger_version() is not None:
                report.actions.append(self._review_challenger(now))
            if self.registry.challenger_version() is None:
                trigger = "manual" if force else self.due(now)
                if trigger is not None:
                    report.run = self._run(trigger, now)
                    report.actions.append(f"run {report.run['run']}: {report.run['status']}"
                                          f" ({report.run.get('decision', '')})")
            return report

    def _review_challenger(self, now: float) -> str:
        version = self.registry.challenger_version()
        assert version is not None
        since = self.registry.challenger_since() or now
        in_shadow = (now - since) / DAY
        if in_shadow < self.policy.shadow_days:
            return (f"challenger {version} in shadow {in_shadow:.1f}d of "
                    f"{self.policy.shadow_days:g}d")
        result = compare(self.store, self.registry, now, self.maturity(),
                         self.policy.train.eval_config(), version)
        gain = result.gain
        summary = (f"shadow comparison on {result.payments:,} matured payments "
                   f"({result.fraud} fraud)" + (
                       f": AP gain {gain['gain']:+.4f} (95% CI {gain['low']:+.4f} .. "
                       f"{gain['high']:+.4f})" if gain else ": nothing to rank yet"))
        record = {"run": f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-shadow", "kind": "shadow",
                  "status": "finished", "clock": now, "clock_iso": _iso(now),
                  "version": version, "comparison": asdict(result)}
        if significant_enough(result, self.policy.min_shadow_fraud):
            champion = self.registry.current_version()
            self.registry.promote(version, by="retrain-worker", why=summary)
            record["decision"] = f"promoted over {champion}: {summary}"
        elif in_shadow >= self.policy.max_shadow_days:
            self.registry.clear_challenger()
            record["decision"] = f"retired after {in_shadow:.1f}d: {summary}"
        else:
            record["decision"] = f"kept in shadow: {summary}"
        self.registry.record_run(record)
        log.info("challenger %s: %s", version, record["decision"])
        return f"challenger {version}: {record['decision']}"

    def _run(self, trigger: str, now: float) -> dict[str, Any]:
        run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-train"
        cfg = replace(self.policy.train, shadow=True, cutoff=now,
                      maturity_days=self.policy.maturity_days)
        record: dict[str, Any] = {
            "run": run_id, "kind": "train", "trigger": trigger, "status": "running",
            "pid": os.getpid(), "started_at": datetime.now(UTC).isoformat(), "clock": now,
            "clock_iso": _iso(now), "champion": self.registry.current_version()}
        self.registry.record_run(record)
        log.info("retraining run %s (%s), cut-off %s", run_id, trigger, _iso(now))
        started = time.perf_counter()
        try:
            result = train(self.store, self.registry, cfg, self.progress)
        except (TrainingError, ValueError) as exc:
            record.update(status="failed", error=str(exc))
        except Exception as exc:  # recorded, then the worker goes on with the next tick
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc(limit=5))
        else:
            record.update(status="finished", version=result.version, decision=result.decision,
                          promoted=result.promoted, shadowed=result.shadowed,
                          metrics=result.metrics, window=result.window,
                          warnings=result.warnings)
        record["duration_s"] = round(time.perf_counter() - started, 2)
        self.registry.record_run(record)
        log.info("run %s %s in %.1fs: %s", run_id, record["status"], record["duration_s"],
                 record.get("decision") or record.get("error"))
        return record

    def _abandon_crashed(self) -> None:
        """Holding the lock, any run still 'running' belongs to a process that died."""
        for run in self.registry.runs(last=20):
            if run.get("status") == "running":
                run.update(status="abandoned", error="the worker died during this run")
                self.registry.record_run(run)

    def forever(self, check_seconds: float, status: Callable[[str], None]) -> None:
        while True:
            # Sleep first: a worker started with the rest of the stack (``up``) leaves the
            # cores to the scoring path while it starts and warms up.
            time.sleep(check_seconds)
            try:
                report = self.tick()
                line = "; ".join(report.actions) or self.idle_status(report.now)
                self.registry.write_worker_status({
                    "at": time.time(), "pid": os.getpid(), "clock": report.now,
                    "clock_iso": _iso(report.now), "status": line})
                status(line)
            except Busy as exc:
                status(str(exc))
            except Exception:
                log.exception("retrain tick failed; trying again next tick")

    def idle_status(self, now: float) -> str:
        """What a tick that did nothing reports: when the next run is due, and why."""
        last = self.last_run()
        if last is None:
            return "no run yet"
        next_at = float(last["clock"]) + self.policy.every_hours * HOUR
        new = self.new_matured_labels(float(last["clock"]), now, self._maturity_of(last))
        return (f"idle at {_iso(now)[:19]}: next scheduled run in "
                f"{max(next_at - now, 0) / HOUR:.1f} h; {new} of "
                f"{self.policy.min_new_labels} newly matured labels since the last run")
