"""Drift: the PSI itself, and the API's monitor measuring it against the model's
reference (and forgetting it when the model changes)."""

from __future__ import annotations

import numpy as np
import pytest

from model.config import Settings
from model.drift import psi, reference


def test_psi_is_zero_on_the_reference_and_large_on_a_shift():
    rng = np.random.default_rng(0)
    ref = reference(rng.normal(0, 1, 50_000))
    assert psi(ref, rng.normal(0, 1, 20_000)) < 0.01
    assert psi(ref, rng.normal(1.0, 1, 20_000)) > 0.25
    assert psi(ref, np.array([])) is None
    counts = reference(np.r_[np.zeros(900), np.ones(100)])  # ties: edges merged
    assert abs(sum(counts["expected"]) - 1) < 1e-12 and len(counts["edges"]) <= 2


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
