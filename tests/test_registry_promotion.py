"""The registry's champion and challenger: promotions logged, rollbacks one champion at a
time, by hand from the CLI, and picked up by a running API within seconds."""

from __future__ import annotations

import pytest

from model.config import Settings
from model.registry import Registry, RegistryError
from tests.conftest import cli, dummy_model, eventually, payment


def test_promotions_are_logged_and_rollback_restores_the_previous_champion(tmp_path):
    reg = Registry(tmp_path)
    a, b = dummy_model(reg, "a"), dummy_model(reg, "b")
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
    a, b, c = dummy_model(reg, "a"), dummy_model(reg, "b"), dummy_model(reg, "c")
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
    a, b = dummy_model(reg, "a"), dummy_model(reg, "b")
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
