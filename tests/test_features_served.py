"""A team's own feature end to end, as the README walks through it: added as a file,
checked, back-filled into Redis, trained on and served by the API, which computes it on
every payment; and an API that does not serve a model's features keeps the model it has."""

import pytest

from model.config import Settings
from tests.conftest import cli, import_ecom_history, payment, uid

pytestmark = pytest.mark.integration

TEAM = """
[[features]]
kind = "distinct"
entity = "merchant"
of = "card"
window = "1h"
cap = 500
"""
FEATURE = "merchant_cards_1h_cap500"


def test_a_teams_feature_is_checked_backfilled_trained_on_and_served(
        stack: Settings, api_keys, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from api.main import serve_app
    from model.registry import Registry

    import_ecom_history(stack, days=30, cards=400, terminals=60, seed=3)
    (stack.home / "features.toml").write_text(TEAM)
    monkeypatch.setenv("FRAUDSTREAM_FEATURES_ONLINE", "true")  # opt-in, as docs say

    checked = cli("features", "check", "--sample", "3000")
    assert checked.exit_code == 0 and "catalogue OK" in checked.output, checked.output
    warmed = cli("history", "backfill-online")
    assert warmed.exit_code == 0, warmed.output
    assert "catalogue's state with 0 payments" not in warmed.output, warmed.output

    trained = cli("train", "--features", "catalogue", "--test-days", "7",
                  "--maturity-days", "5", "--no-baselines", "--force")
    assert trained.exit_code == 0, trained.output
    registry = Registry(stack.models_dir)
    version = registry.current_version()
    assert version is not None
    assert FEATURE in registry.get(version).metadata["features"]

    merchant = uid("merch")
    serving = stack.model_copy(update={"features_online": True})
    with TestClient(serve_app(serving), headers={"X-API-Key": api_keys["all"][0]}) as client:
        svc = client.app.state.services
        assert svc.models.scorer is not None and svc.models.scorer.version == version
        answers = [client.post("/v1/payments/score", json=payment(
            ts="2026-11-20T10:00:00Z", merchant_id=merchant, channel="ecom",
            device_id=uid("dev"))) for _ in range(3)]
        for answer in answers:
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_version"] == version
            assert not answer.json()["degraded"], answer.json()["reasons"]
        # the API computes the team's feature on the hook: a fourth card at that merchant
        from model.schemas import Payment

        fourth = Payment.model_validate(payment(ts="2026-11-20T10:00:00Z",
                                                merchant_id=merchant))
        obs = client.portal.call(svc.store.observe, fourth)
        assert obs.features is not None and obs.features[FEATURE] == 4.0


def test_a_model_needing_features_the_api_does_not_serve_is_not_loaded(
        tmp_path, trained_home) -> None:
    import asyncio
    import shutil

    from api.model_holder import ModelHolder
    from model.features import FEATURE_NAMES
    from model.registry import Registry

    _, registry_dir, version = trained_home
    shutil.copytree(registry_dir, tmp_path / "registry")
    registry = Registry(tmp_path / "registry")
    mv = registry.get(version)
    other = registry.register(mv.load_estimator(), {
        **{k: v for k, v in mv.metadata.items() if k not in ("version", "sha256")},
        "features": [*mv.metadata["features"][:-1], "device_cards_1d"]}).version
    holder = ModelHolder(registry, frozenset(FEATURE_NAMES))
    assert asyncio.run(holder.refresh()) and holder.scorer.version == version
    registry.promote(other, by="test", why="needs a feature this API lacks")
    assert not asyncio.run(holder.refresh())
    assert holder.scorer.version == version  # the one in use is kept
    served = ModelHolder(registry, frozenset([*FEATURE_NAMES, "device_cards_1d"]))
    assert asyncio.run(served.refresh()) and served.scorer.version == other
