"""`ops.monitor`: reads health, decisions and drift from the API and draws them."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import payment


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
