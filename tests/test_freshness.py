"""Freshness: the board in Redis keeping the newest and counting label delays, stale
inputs told in answers and degrading by configuration, /healthz amber for old labels and
an old review queue."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from model.config import Settings
from model.features import DAY
from model.schemas import Freshness
from tests.conftest import payment


@pytest.mark.integration  # it uses Redis: run against the cluster too
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
