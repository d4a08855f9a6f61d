"""The shadow comparison: a challenger promoted by the retrain worker only on a
significant gain (and what `fraudstream model compare` shows first), and the stream
recording the challenger's score beside the champion's."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.features import DAY
from model.registry import Registry
from stores.history import HistoryStore
from tests.conftest import cli, dummy_model, eventually, history_row, payment
from training.retrain import RetrainPolicy, RetrainWorker


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
    champion, challenger = dummy_model(reg, "champion"), dummy_model(reg, "challenger")
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
