"""Backtests score a period as the live system would have; a replay through the live API
gives the same decisions."""

import asyncio
import json
import uuid
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from model.registry import Registry
from stores import pii_key, redis_client
from stores.history import HistoryStore
from tests.conftest import PII_KEY, eventually, history_row
from training.backtest import BacktestConfig, BacktestError, backtest, load_file
from training.importer import import_history
from training.replay import compare, replay, traffic_frame
from training.simulator import SimulationConfig, simulate
from training.train import TrainConfig, train

CUT = pd.Timestamp("2026-09-24", tz="UTC")


@pytest.fixture(scope="module")
def split_history(tmp_path_factory, small_history):
    """The small history up to CUT imported and a model trained on it; the rest as a file."""
    home = tmp_path_factory.mktemp("bt")
    frame = pd.read_parquet(small_history)
    frame[frame["timestamp"] < CUT].to_parquet(home / "before.parquet")
    frame[frame["timestamp"] >= CUT].to_parquet(home / "week.parquet")
    store, registry = HistoryStore(home / "hist"), Registry(home / "reg")
    import_history(store, home / "before.parquet", pii_key=PII_KEY)
    train(store, registry, TrainConfig(test_days=5, maturity_days=4, max_iter=40,
                                       baselines=False, bootstrap=20))
    return home, store, registry


def test_a_brought_file_scores_as_the_same_period_of_the_history(split_history):
    home, store, registry = split_history
    by_file = backtest(store, registry, BacktestConfig(file=home / "week.parquet",
                                                       pii_key=PII_KEY, bootstrap=30),
                       home / "report")
    week = pd.read_parquet(home / "week.parquet")
    assert by_file.period["payments"] == len(week)
    assert by_file.period["fraud"] == int(week["is_fraud"].sum()) - int(
        (week["label_reported_at"] > pd.Timestamp.now(tz="UTC")).sum())
    version = registry.current_version()
    m = by_file.metrics[version]
    assert 0.5 < m["auc_roc"] <= 1 and m["average_precision_low"] <= m["average_precision"]
    for name in ("report.json", "decisions.parquet", "backtest.png"):
        assert (home / "report" / name).stat().st_size > 0
    assert json.loads((home / "report" / "report.json").read_text())["period"]["payments"] == \
        len(week)

    # The same payments once imported: a period of the history gives the same scores.
    full = HistoryStore(home / "hist-full")
    import_history(full, home / "before.parquet", pii_key=PII_KEY)
    import_history(full, home / "week.parquet", pii_key=PII_KEY)
    by_period = backtest(full, registry, BacktestConfig(start=CUT.timestamp(), bootstrap=0))
    a = by_file.decisions.set_index("payment_id").sort_index()
    b = by_period.decisions.set_index("payment_id").sort_index()
    assert list(a.index) == list(b.index)
    np.testing.assert_array_equal(a[f"score:{version}"], b[f"score:{version}"])
    assert (a[f"decision:{version}"] == b[f"decision:{version}"]).all()


def test_backtest_explains_what_it_cannot_do(split_history, tmp_path):
    _, store, registry = split_history
    with pytest.raises(BacktestError, match="no payments in the period"):
        backtest(store, registry, BacktestConfig(start=CUT.timestamp() + 400 * 86400))
    with pytest.raises(BacktestError, match="none is current"):
        backtest(store, Registry(tmp_path / "empty"), BacktestConfig())


# Two scorers agreeing; the path through a cluster is tests/test_loop.py's.
@pytest.mark.integration
@pytest.mark.any_topology
def test_replay_through_the_live_api_agrees_with_the_backtest(stream_worker, trained,
                                                              api_keys, tmp_path):
    from fraudstream_dev import launcher as services

    run = uuid.uuid4().hex[:6]
    frame = simulate(SimulationConfig(days=8, cards=120, terminals=15, seed=21,
                                      start=datetime(2026, 10, 10, tzinfo=UTC),
                                      id_prefix=f"rp{run}", card_testing_rate=0.01,
                                      takeover_rate=0.01, label_delay_days=1.5))
    # Cards and terminals of their own: the shared test history is no context for them.
    frame["card_id"] = f"rp{run}_" + frame["card_id"]
    frame["terminal_id"] = f"rp{run}_" + frame["terminal_id"]
    # The gateway's details, the e-mail and IP raw: the file's tokens reach the API
    frame["email"] = " Shopper." + frame["card_id"] + "@Example.com"
    frame["ip"] = "198.51.100." + (frame.index % 250).astype(str)
    frame["entry_mode"] = "ecommerce"
    path = tmp_path / "replay.parquet"
    frame.to_parquet(path)
    key = pii_key.load(stream_worker)
    payments, labels = load_file(path, pii_key=key)
    assert payments["email"].str.startswith("em_").all()
    assert payments["ip"].str.startswith("ip_").all()
    version = Registry(stream_worker.models_dir).current_version()
    bt = backtest(HistoryStore(stream_worker.history_dir), Registry(stream_worker.models_dir),
                  BacktestConfig(file=path, pii_key=key, versions=(version,), bootstrap=0))
    assert bt.decisions[f"decision:{version}"].nunique() > 1  # not a constant answer

    services.start_api(stream_worker)
    try:
        async def go():
            redis = redis_client.connect(stream_worker)
            try:
                return await replay(stream_worker.api_url, api_keys["all"][0],
                                    traffic_frame(payments, labels), 400.0, redis)
            finally:
                await redis.aclose()

        report = asyncio.run(go())
    finally:
        services.api_proc(stream_worker).stop()
    assert not report.errors and report.labels_sent > 10
    agreement = compare(report, bt.decisions, version)
    assert agreement.answered == len(frame)
    assert agreement.different_decision == 0, agreement.differences.head().to_string()
    assert agreement.max_score_difference < 1e-9
    # what the API recorded of them: the file's tokens, as they were
    last = payments.iloc[-1]
    recorded = eventually(lambda: history_row(stream_worker, last["payment_id"]), 60)
    assert (recorded["email"], recorded["ip"], recorded["entry_mode"]) == (
        last["email"], last["ip"], "ecommerce")
