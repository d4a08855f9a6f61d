"""Model operations: champion and challenger, rollback, the retrain worker and its lock,
the shadow comparison, drift and freshness."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.config import Settings
from model.drift import psi, reference
from model.registry import Registry, RegistryError
from model.schemas import Freshness
from stores.history import HistoryStore
from tests.conftest import cli, eventually, history_row, payment
from training.retrain import Busy, RetrainPolicy, RetrainWorker, run_lock
from training.train import TrainConfig, train

DAY = 86_400.0


def dummy(registry: Registry, name: str) -> str:
    return registry.register({"model": name}, {"features": ["amount"],
                                               "thresholds": {"review": 0.5, "decline": 0.9}}
                             ).version


# ---- the registry ----------------------------------------------------------------------
def test_promotions_are_logged_and_rollback_restores_the_previous_champion(tmp_path):
    reg = Registry(tmp_path)
    a, b = dummy(reg, "a"), dummy(reg, "b")
    with pytest.raises(RegistryError, match="no earlier champion"):
        reg.rollback()
    reg.promote(a, by="t", why="first")
    reg.set_challenger(b, since=123.0)
    assert (reg.challenger_version(), reg.challenger_since()) == (b, 123.0)
    with pytest.raises(RegistryError, match="is the champion"):
        reg.set_challenger(a, since=0.0)
    reg.promote(b, by="worker", why="significant gain")
    assert reg.current_version() == b and reg.challenger_version() is None  # left the shadow
    assert [(p["version"], p["previous"], p["by"]) for p in reg.promotions()] == [
        (a, None, "t"), (b, a, "worker")]
    assert reg.rollback(by="ops").version == a
    assert reg.current_version() == a
    assert reg.promotions()[-1]["why"] == f"rollback from {b}"
    # nothing before a: a second rollback is refused, and does not go forward to b
    with pytest.raises(RegistryError, match="no earlier champion"):
        reg.rollback()
    assert reg.current_version() == a


def test_rollbacks_walk_back_one_champion_at_a_time(tmp_path):
    reg = Registry(tmp_path)
    a, b, c = dummy(reg, "a"), dummy(reg, "b"), dummy(reg, "c")
    for version in (a, b, c):
        reg.promote(version, by="t")
    assert reg.rollback(why="bad AP").version == b
    assert reg.promotions()[-1]["why"] == f"rollback from {c}: bad AP"
    assert reg.rollback().version == a  # not c again
    reg.promote(c, by="t", why="fixed")  # promoted again by hand: rollback returns to a
    assert reg.rollback().version == a


def test_cli_promotes_and_rolls_back_by_hand_and_says_what_is_wrong(tmp_path, monkeypatch,
                                                                   wide_console):
    monkeypatch.setenv("FRAUDSTREAM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USER", "ana")
    reg = Registry(Settings().models_dir)
    a, b = dummy(reg, "a"), dummy(reg, "b")
    reg.promote(a, by="train")
    reg.record_run({"run": "20260101T000000000000-train", "kind": "train",
                    "trigger": "labels", "status": "finished", "clock": 0.0,
                    "version": b, "metrics": {"average_precision": 0.4321},
                    "window": {"train_start": "2026-09-01T00:00", "train_end":
                               "2026-10-01T00:00", "test_start": "2026-10-01T00:00",
                               "test_end": "2026-10-08T00:00"}})
    missing = cli("model", "promote", "v-nope", "--why", "x")
    assert missing.exit_code == 2 and "no model version" in missing.output
    blank = cli("model", "promote", b, "--why", " ")
    assert blank.exit_code == 2 and "--why" in blank.output
    assert reg.current_version() == a and len(reg.promotions()) == 1  # nothing changed
    done = cli("model", "promote", b, "--why", "better on the wave")
    assert done.exit_code == 0, done.output
    assert reg.current_version() == b
    assert reg.promotions()[-1] | {"at": None} == {
        "at": None, "version": b, "previous": a, "by": "cli:ana",
        "why": "better on the wave"}
    back = cli("model", "rollback", "--why", "alerts doubled")
    assert back.exit_code == 0 and reg.current_version() == a
    assert reg.promotions()[-1]["rollback"] is True
    again = cli("model", "rollback")
    assert again.exit_code == 2 and "no earlier champion" in again.output
    listed = cli("model", "list")
    assert listed.exit_code == 0, listed.output
    assert "labels" in listed.output and "0.4321" in listed.output
    assert "2026-09-01 → 2026-10-01" in listed.output


def test_psi_is_zero_on_the_reference_and_large_on_a_shift():
    rng = np.random.default_rng(0)
    ref = reference(rng.normal(0, 1, 50_000))
    assert psi(ref, rng.normal(0, 1, 20_000)) < 0.01
    assert psi(ref, rng.normal(1.0, 1, 20_000)) > 0.25
    assert psi(ref, np.array([])) is None
    counts = reference(np.r_[np.zeros(900), np.ones(100)])  # ties: edges merged
    assert abs(sum(counts["expected"]) - 1) < 1e-12 and len(counts["edges"]) <= 2


# ---- the shadow comparison and the worker's decisions ----------------------------------
def when(ts: np.ndarray) -> pd.Series:
    return pd.Series(pd.to_datetime(ts.astype(np.int64), unit="s", utc=True))


def shadow_history(root: Path, champion: str, challenger: str, gain: bool,
                   start: float) -> HistoryStore:
    """Two weeks of shadow-scored payments; the challenger ranks fraud perfectly (gain)
    or exactly as the champion does."""
    rng = np.random.default_rng(1)
    n = 4000
    ts = np.round(start + np.sort(rng.uniform(0, 14 * DAY, n)))
    fraud = rng.random(n) < 0.05
    score = np.clip(rng.random(n) * 0.6 + fraud * 0.2, 0, 1)
    shadow = np.where(fraud, 0.9, 0.1) + rng.random(n) * 0.01 if gain else score
    store = HistoryStore(root)
    ids = [f"p{i}" for i in range(n)]
    store.append_payment_frame(pd.DataFrame({
        "payment_id": ids, "ts": when(ts),
        "card_id": [f"c{i % 700}" for i in range(n)], "terminal_id": "t", "amount": 10.0,
        "currency": "EUR", "score": score, "decision": "approve", "model_version": champion,
        "shadow_score": shadow, "shadow_version": challenger, "source": "api",
        "scored_at": when(ts)}))
    store.append_label_frame(pd.DataFrame({
        "payment_id": np.array(ids)[fraud], "is_fraud": True, "source": "chargeback",
        "reported_at": when(ts[fraud] + DAY),
        "received_at": when(ts[fraud] + DAY)}))
    return store


@pytest.mark.parametrize("gain", [True, False])
def test_worker_promotes_a_challenger_only_on_a_significant_shadow_gain(tmp_path, gain,
                                                                       monkeypatch,
                                                                       wide_console):
    reg = Registry(tmp_path / "registry")
    champion, challenger = dummy(reg, "champion"), dummy(reg, "challenger")
    reg.promote(champion)
    start = datetime(2026, 10, 1, tzinfo=UTC).timestamp()
    store = shadow_history(tmp_path / "history", champion, challenger, gain, start)
    reg.set_challenger(challenger, since=start)

    # what the fraud team sees first: `fraudstream model compare`
    for name, value in {"FRAUDSTREAM_REGISTRY_DIR": reg.root, "FRAUDSTREAM_DATA_DIR":
                        tmp_path / "history", "FRAUDSTREAM_RETRAIN_CLOCK": "events",
                        "FRAUDSTREAM_MATURITY_DAYS": 2}.items():
        monkeypatch.setenv(name, str(value))
    shown = cli("model", "compare", "--k", "20")
    assert shown.exit_code == 0, shown.output
    assert f"challenger {challenger} against champion(s) {champion}" in shown.output
    verdict = shown.output.split("AP gain of the challenger:")[1]
    assert verdict.strip().startswith("+" if gain else ("-", "+"))
    assert ("not significant" not in verdict) == bool(gain), verdict
    policy = RetrainPolicy(shadow_days=3, max_shadow_days=10, maturity_days=2,
                           min_shadow_fraud=20, clock="events")
    worker = RetrainWorker(store, reg, policy)
    report = worker.tick()
    assert worker.now() == pytest.approx(start + 14 * DAY, abs=DAY)
    if gain:
        assert reg.current_version() == challenger and reg.challenger_version() is None
        assert "promoted over" in report.actions[0]
        assert reg.promotions()[-1]["by"] == "retrain-worker"
        assert reg.rollback().version == champion  # one command back
    else:  # 14 days in shadow, no gain: retired after max_shadow_days
        assert reg.current_version() == champion and reg.challenger_version() is None
        assert "retired" in report.actions[0]
    shadow_runs = [r for r in reg.runs() if r["kind"] == "shadow"]
    assert len(shadow_runs) == 1 and shadow_runs[0]["comparison"]["payments"] > 3000


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
    import_history(store, small_history)
    reg = Registry(tmp_path / "registry")
    weak = train(store, reg, TrainConfig(test_days=7, maturity_days=5, max_iter=3,
                                         max_leaf_nodes=2, baselines=False))
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
    import_history(store, small_history)
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


# ---- the stream scores the challenger; the API tells freshness and drift ---------------
@pytest.mark.integration
def test_stream_records_the_challengers_score_beside_the_champions(api_client, stream_worker,
                                                                   trained):
    registry = Registry(stream_worker.models_dir)
    champion = registry.current_version()
    mv = registry.get(champion)
    challenger = registry.register(mv.load_estimator(), {
        **{k: v for k, v in mv.metadata.items() if k not in ("version", "sha256")},
        "thresholds": {"review": 0.0, "decline": 0.0}}).version  # would decline everything
    registry.set_challenger(challenger, since=0.0)
    try:
        def shadowed():
            body = payment(ts=datetime.now(UTC).isoformat())
            out = api_client.post("/v1/payments/score", json=body).json()
            assert out["model_version"] == champion  # the champion answers
            row = eventually(lambda: history_row(stream_worker, body["payment_id"]), 60)
            return (row, out) if row["shadow_version"] == challenger else None

        row, out = eventually(shadowed, 60, every=1.0)
        assert row["shadow_score"] == pytest.approx(out["score"], abs=1e-9)  # same model
        assert row["decision"] == out["decision"]
        model = api_client.get("/v1/model").json()
        assert model["version"] == champion and model["challenger"]["version"] == challenger
        # the stream has recorded since the API's monitor last read: answers tell the lag
        fresh = eventually(lambda: api_client.post("/v1/payments/score", json=payment())
                           .json()["freshness"]["stream_lag_s"] is not None, 10)
        assert fresh
    finally:
        registry.clear_challenger()


@pytest.mark.integration
def test_stale_inputs_are_told_and_degrade_by_configuration(api_client, monkeypatch):
    svc = api_client.app.state.services

    async def frozen() -> None:
        return None

    monkeypatch.setattr(svc.monitor, "poll", frozen)
    monkeypatch.setattr(svc.monitor, "freshness",
                        Freshness(stream_lag_s=900.0, label_lag_s=10.0, stale=True))
    monkeypatch.setattr(svc.settings, "stale_action", "review")
    out = api_client.post("/v1/payments/score", json=payment(amount=3.0)).json()
    assert out["freshness"] == {"stream_lag_s": 900.0, "label_lag_s": 10.0, "stale": True}
    assert out["decision"] in ("review", "decline")
    assert out["reasons"][0]["code"] in ("stale_inputs", "score_above_decline_threshold")
    monkeypatch.setattr(svc.monitor, "freshness", Freshness(stream_lag_s=900.0, stale=False))
    monkeypatch.setattr(svc.settings, "stale_stream_lag_seconds", 60.0)
    health = api_client.get("/healthz").json()
    assert health["status"] == "amber"
    assert any("stream lag 900s" in w for w in health["warnings"])


def test_monitor_measures_drift_against_the_models_reference():
    from api.monitor import Monitor

    class FakeScorer:
        version = "v1"
        feature_names = ("a", "b")

    rng = np.random.default_rng(2)
    ref = {"score": reference(rng.random(10_000)),
           "features": {"a": reference(rng.normal(0, 1, 10_000)),
                        "b": reference(rng.normal(0, 1, 10_000))}}
    mon = Monitor(Settings(drift_window=1000), None, None)  # type: ignore[arg-type]
    scorer = FakeScorer()
    for _ in range(1000):
        mon.observe(scorer, np.array([rng.normal(0, 1), rng.normal(2, 1)]),  # type: ignore[arg-type]
                    float(rng.random()))
    mon.drift(scorer, ref)  # type: ignore[arg-type]
    assert mon.psi["a"] < 0.1 and mon.psi["score"] < 0.1
    assert mon.psi["b"] > 0.25
    assert any("drift: PSI b" in w for w in mon.warnings())
    assert exported_psi()["b"] == pytest.approx(mon.psi["b"])

    # a rollback or promotion: the old model's drift leaves /metrics and /healthz until
    # the new one has scored enough payments to be measured
    swapped = FakeScorer()
    swapped.version = "v2"
    for _ in range(10):
        mon.observe(swapped, np.array([0.0, 0.0]), 0.5)  # type: ignore[arg-type]
    mon.drift(swapped, ref)  # type: ignore[arg-type]
    assert mon.psi == {} and not any("drift" in w for w in mon.warnings())
    assert not {"score", "a", "b"} & set(exported_psi())


def exported_psi() -> dict[str, float]:
    from prometheus_client import REGISTRY

    return {s.labels["input"]: s.value for m in REGISTRY.collect()
            if m.name == "fraudstream_psi" for s in m.samples}


def test_healthz_turns_amber_for_old_labels_and_an_old_review_queue():
    from api.monitor import Monitor

    settings = Settings(stale_label_lag_days=7, review_age_amber_hours=24)
    mon = Monitor(settings, None, None)  # type: ignore[arg-type]
    mon.freshness = Freshness(stream_lag_s=1.0, label_lag_s=6 * DAY)
    mon.queue = (5, 23 * 3600.0)
    assert mon.warnings() == []
    mon.freshness = Freshness(stream_lag_s=1.0, label_lag_s=8 * DAY)
    mon.queue = (5, 25 * 3600.0)
    warnings = mon.warnings()
    assert len(warnings) == 2
    assert "newest label applied 8.0d behind" in warnings[0]
    assert "oldest review case waiting 25.0h > 24h" in warnings[1]


def test_freshness_board_keeps_the_newest_and_counts_label_delays(stack):
    from stores import redis_client
    from stores.freshness import FRESH_KEY, LABEL_DELAY_KEY, FreshnessBoard

    async def go():
        redis = redis_client.connect(stack)
        await redis.admin.delete(FRESH_KEY, LABEL_DELAY_KEY)
        board = FreshnessBoard(redis)
        t = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
        await board.note_recorded(100.0, t)
        await board.note_recorded(50.0, t - DAY)  # an older batch arriving late
        await board.note_labels([(t - 10 * DAY, t - 2 * DAY), (t - 3 * DAY, t - 2.5 * DAY)])
        state = await board.read()
        await redis.aclose()
        return state

    state = asyncio.run(go())
    assert state.scored_at == 100.0
    assert state.label_lag_s == pytest.approx(2 * DAY)
    assert dict(state.label_delays) == {"1": 1, "14": 1}


@pytest.mark.integration
def test_monitor_reads_health_decisions_and_drift_and_draws_them(api_client, tmp_path):
    from ops.monitor import plot, scrape

    for _ in range(3):
        assert api_client.post("/v1/payments/score", json=payment()).status_code == 200
    svc = api_client.app.state.services
    scorer = svc.models.scorer
    rng = np.random.default_rng(3)
    for _ in range(600):  # a drifted population: every feature shifted
        svc.monitor.observe(scorer, rng.normal(5.0, 1.0, len(scorer.feature_names)), 0.9)
    svc.monitor.drift(scorer, svc.models.reference)
    snap = scrape(api_client)
    assert snap.health["model_version"] == scorer.version
    assert sum(snap.decisions.values()) >= 3
    assert snap.psi["score"] > 0.25
    assert {"score", *scorer.feature_names} <= set(snap.psi)
    assert snap.health["status"] == "amber"
    assert any(w.startswith("drift: PSI") for w in snap.health["warnings"])
    assert snap.score_buckets and snap.score_buckets[-1][1] >= 600
    out = plot(snap, tmp_path / "monitor.png")
    assert out.stat().st_size > 10_000


@pytest.mark.integration
def test_rollback_is_picked_up_by_the_api_within_seconds(api_client, trained):
    registry = Registry(api_client.app.state.services.settings.models_dir)
    champion = registry.current_version()
    mv = registry.get(champion)
    other = registry.register(mv.load_estimator(), {
        k: v for k, v in mv.metadata.items() if k not in ("version", "sha256")}).version
    registry.promote(other, by="test", why="a bad model goes live")
    eventually(lambda: api_client.get("/healthz").json()["model_version"] == other, 15)
    assert registry.rollback(by="test").version == champion
    eventually(lambda: api_client.get("/healthz").json()["model_version"] == champion, 15)
    out = api_client.post("/v1/payments/score", json=payment()).json()
    assert out["model_version"] == champion
    changes = api_client.get("/v1/model").json()["promotions"]
    assert [c["version"] for c in changes[-2:]] == [other, champion]
    assert changes[-1]["why"] == f"rollback from {other}"
    # the retraining runs, with what they trained and tested on and what they measured
    run = {"run": "29991231T000000000000-train", "kind": "train", "trigger": "labels",
           "status": "finished", "clock": 0.0, "version": other, "duration_s": 12.5,
           "metrics": {"average_precision": 0.5}, "decision": "not promoted",
           "window": {"train_start": "2026-09-01T00:00:00+00:00", "test_fraud": 40}}
    registry.record_run(run)
    try:
        shown = api_client.get("/v1/model").json()["runs"][-1]
        assert {k: shown[k] for k in ("run", "trigger", "window", "metrics", "duration_s",
                                      "decision")} == {
            k: run[k] for k in ("run", "trigger", "window", "metrics", "duration_s",
                                "decision")}
    finally:
        (registry.root / "runs" / f"{run['run']}.json").unlink()
