"""The chaos harness, short: payments and labels at a fixed rate while the stream worker,
the API, Redis and Kafka are killed or hung, one and two at a time; then the audit from
the raw stores (the long run is ``benchmarks/chaos.py``). A stack of its own, so the
session's stays untouched."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fraudstream_dev import launcher as services
from fraudstream_dev import testenv
from fraudstream_dev.chaos import ChaosConfig, Fault, audit, run_chaos, wait_recorded
from model.config import Settings

pytestmark = pytest.mark.integration
Headers = dict[str, str]


@pytest.fixture()
def chaos_stack(trained: str, stack: Settings, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, Headers, Headers]]:
    from model.api_keys import create_key

    env = {**testenv.isolated_env(tmp_path / "home", "fraudstream-chaos"),
           # the session's trained model, read only
           "FRAUDSTREAM_REGISTRY_DIR": str(stack.models_dir)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the stack's processes read the same settings
    settings = Settings()
    assert settings.api_keys_file is not None
    key, _ = create_key(settings.api_keys_file, "gateway", {"score", "labels"})
    analyst, _ = create_key(settings.api_keys_file, "analyst", {"review"})
    try:
        services.start_redis(settings)
        services.start_kafka(settings)
        services.start_stream(settings, timeout=120)
        services.start_api(settings)
        yield settings, {"X-API-Key": key}, {"X-API-Key": analyst}
    finally:
        for target in ("api", "stream", "kafka", "redis"):  # a hung one must die too
            pid = getattr(services, f"{target}_proc")(settings).pid()
            if pid is not None:
                os.kill(pid, 18)  # SIGCONT
        services.stop_all(settings)


def test_killed_and_hung_parts_lose_nothing_double_nothing_and_features_stay_true(
        chaos_stack: tuple[Settings, Headers, Headers]) -> None:
    settings, headers, analyst = chaos_stack
    schedule = [Fault(3, "kill", ("stream",), 2), Fault(8, "hang", ("api",), 1.5),
                Fault(12, "kill", ("redis",), 2), Fault(17, "kill", ("kafka",), 3),
                Fault(24, "hang", ("redis",), 1.5), Fault(28, "kill", ("api", "stream"), 2)]
    run = run_chaos(settings, ChaosConfig(duration=34, rate=40, label_every=5, cards=400,
                                          terminals=25), schedule, headers,
                    analyst=analyst)
    assert wait_recorded(settings, run, timeout=240)
    report = audit(settings, run)
    t = report["totals"]
    print(t, *report["per_fault"], *report["faults"], *report["unanswered"], sep="\n")
    assert [f["error"] for f in report["faults"]] == [None] * len(schedule), report["faults"]
    assert t["requests"] == 34 * 40 and t["unanswered"] == 0, t
    # the faults were felt, or the test proves nothing
    assert t["retried"] > 0 and t["degraded"] > 0, t
    assert (t["lost"], t["doubled"], t["decision_differs"]) == (0, 0, 0), t
    assert t["labels_accepted"] == t["labels"] > 50, t
    assert (t["labels_lost"], t["labels_doubled"]) == (0, 0), t
    # analysts' verdicts on the review queue: each one label, and one change in the features
    assert t["verdicts_accepted"] == t["verdicts"] > 10 and t["verdicts_fraud"] > 0, t
    assert (t["verdicts_lost"], t["verdicts_doubled"], t["verdicts_wrong_label"]) == (0, 0, 0), t
    assert (t["labels_missing_in_features"], t["labels_unexpected_in_features"]) == (0, 0), t
    assert t["parity_checked"] > 300 and t["parity_exact_differs"] == 0, t
    assert t["parity_label_fresh_leading"] == 0, t
