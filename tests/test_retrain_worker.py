"""The retrain worker: one run at a time (a lock the kernel frees when a worker dies),
runs on schedule and on enough newly matured labels, a better candidate put in shadow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.registry import Registry
from stores.history import HistoryStore
from tests.conftest import PII_KEY, eventually
from training.retrain import Busy, RetrainPolicy, RetrainWorker, run_lock
from training.train import TrainConfig, train


def test_one_run_at_a_time_and_a_crashed_run_is_marked_abandoned(tmp_path):
    reg = Registry(tmp_path / "registry")
    worker = RetrainWorker(HistoryStore(tmp_path / "history"), reg, RetrainPolicy())
    with run_lock(reg), pytest.raises(Busy):
        worker.tick()
    reg.record_run({"run": "20260101T000000000000-train", "kind": "train",
                    "status": "running", "clock": 0.0})
    worker.tick()  # empty history: the run fails, recorded, and the worker goes on
    runs = {r["run"]: r for r in reg.runs()}
    assert runs["20260101T000000000000-train"]["status"] == "abandoned"
    failed = [r for r in runs.values() if r["status"] == "failed"]
    assert len(failed) == 1 and "holds no payments" in failed[0]["error"]
    assert failed[0]["trigger"] == "schedule" and failed[0]["duration_s"] >= 0


def test_a_worker_killed_mid_run_frees_the_lock_and_its_run_is_marked_abandoned(tmp_path):
    import signal
    import subprocess
    import sys
    import textwrap

    reg = Registry(tmp_path / "registry")
    store = HistoryStore(tmp_path / "history")
    # A real worker process, its training held up so that it dies mid-run for sure.
    child = textwrap.dedent(f"""
        import time
        import training.retrain as retrain
        from stores.history import HistoryStore
        from model.registry import Registry
        retrain.train = lambda *args, **kwargs: time.sleep(600)
        retrain.RetrainWorker(HistoryStore({str(store.root)!r}), Registry({str(reg.root)!r}),
                              retrain.RetrainPolicy()).tick(force=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child],
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        running = eventually(lambda: [r for r in reg.runs() if r["status"] == "running"]
                             or None, 60, every=0.05)
        assert running[0]["pid"] == proc.pid
        worker = RetrainWorker(store, reg, RetrainPolicy())
        with pytest.raises(Busy):  # the live run holds the lock
            worker.tick()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    worker.tick()  # the kernel dropped the lock with the process; this run fails (no data)
    runs = {r["run"]: r for r in reg.runs()}
    assert runs[running[0]["run"]]["status"] == "abandoned"
    assert [r["status"] for r in runs.values()].count("failed") == 1


def test_worker_retrains_on_schedule_and_puts_a_better_candidate_in_shadow(small_history,
                                                                          tmp_path):
    from training.importer import import_history

    store = HistoryStore(tmp_path / "history")  # its own: the events clock is its newest
    import_history(store, small_history, pii_key=PII_KEY)
    reg = Registry(tmp_path / "registry")
    weak = train(store, reg, TrainConfig(test_days=7, maturity_days=5, max_iter=3,
                                         max_leaf_nodes=2, baselines=False, search_seconds=0))
    assert weak.promoted
    policy = RetrainPolicy(every_hours=24, min_new_labels=10_000, maturity_days=5,
                           clock="events", train=TrainConfig(shadow=True, test_days=7,
                                                             max_iter=60, baselines=False))
    worker = RetrainWorker(store, reg, policy)
    assert worker.due(worker.now()) == "schedule"  # no run yet
    report = worker.tick()
    run = report.run
    assert run is not None and run["status"] == "finished" and run["trigger"] == "schedule"
    assert run["shadowed"] and not run["promoted"], run["decision"]
    assert reg.current_version() == weak.version  # the champion still answers
    assert reg.challenger_version() == run["version"]
    assert "challenger in shadow" in run["decision"]
    # nothing new since: not due; and no run while a challenger is in shadow
    assert worker.due(worker.now()) is None
    assert worker.tick(force=True).run is None
    recorded = json.loads((reg.root / "runs" / f"{run['run']}.json").read_text())
    assert recorded["window"]["test_fraud"] > 0 and recorded["duration_s"] > 0


def test_worker_retrains_once_enough_labels_have_matured_since_the_last_run(small_history,
                                                                           tmp_path):
    from dataclasses import replace

    from model.features import DAY
    from training.dataset import load
    from training.importer import import_history

    store = HistoryStore(tmp_path / "history")
    import_history(store, small_history, pii_key=PII_KEY)
    reg = Registry(tmp_path / "registry")
    # no maturity set: the worker takes the one the last run trained with
    worker = RetrainWorker(store, reg, RetrainPolicy(every_hours=24 * 365, clock="events"))
    now = worker.now()
    since = now - 4 * DAY
    reg.record_run({"run": "20260101T000000000000-train", "kind": "train",
                    "status": "finished", "clock": since, "window": {"maturity_days": 5.0}})
    payments, labels = load(store)
    ts = labels["payment_id"].map(payments.set_index("payment_id")["ts"])
    m = 5 * DAY
    usable_now = (ts <= now - m) & (labels["reported_at"] <= now)
    usable_then = (ts <= since - m) & (labels["reported_at"] <= since)
    expected = int((usable_now & ~usable_then).sum())
    # labels reported since on payments still maturing exist, and do not count
    assert ((labels["reported_at"] > since) & (ts > now - m)).any()
    assert expected > 0
    assert worker.new_matured_labels(since, now, 5.0) == expected
    worker.policy = replace(worker.policy, min_new_labels=expected)
    assert worker.due(now) == "labels"
    worker.policy = replace(worker.policy, min_new_labels=expected + 1)
    assert worker.due(now) is None


def test_the_policy_defaults_are_the_settings_defaults(monkeypatch):
    import os

    from model.config import Settings

    for name in list(os.environ):
        if name.startswith("FRAUDSTREAM_"):
            monkeypatch.delenv(name)
    assert RetrainPolicy() == RetrainPolicy.from_settings(Settings())
