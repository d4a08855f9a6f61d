import numpy as np
import pandas as pd
import pytest

from model.history import HistoryStore
from model.registry import Registry
from training.evaluate import card_precision_at_k, recall_at_alert_rate
from training.importer import import_history
from training.simulator import PATTERNS, SimulationConfig, simulate
from training.train import TrainConfig, TrainingError, train


def test_simulator_is_reproducible_and_labels_come_after_payments():
    cfg = SimulationConfig(days=10, cards=150, terminals=30, seed=11, card_testing_rate=0.01,
                           takeover_rate=0.01, compromised_terminals_per_day=0.3)
    a, b = simulate(cfg), simulate(cfg)
    pd.testing.assert_frame_equal(a, b)
    assert a["timestamp"].is_monotonic_increasing
    fraud = a[a["is_fraud"]]
    assert set(fraud["fraud_pattern"]) == set(PATTERNS)
    assert (fraud["label_reported_at"] > fraud["timestamp"]).all()
    assert a.loc[~a["is_fraud"], "label_reported_at"].isna().all()
    assert 0.002 < a["is_fraud"].mean() < 0.2


def test_recall_at_alert_rate():
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.05, 0.01, 0.3, 0.2, 0.6, 0.4])
    y = np.array([1, 0, 1, 0, 1, 0, 0, 0, 0, 0])
    assert recall_at_alert_rate(scores, y, 0.2) == pytest.approx(1 / 3)
    assert recall_at_alert_rate(scores, y, 0.3) == pytest.approx(2 / 3)


def test_card_precision_leaves_out_cards_already_known_compromised():
    day = pd.Timestamp("2026-10-02", tz="UTC")
    payments = pd.DataFrame({"card_id": ["a", "b", "c"], "day": [day] * 3})
    y = np.array([1, 1, 0])
    scores = np.array([0.9, 0.8, 0.1])
    # card a's fraud was reported the day before: blocked, not a detection
    reported = pd.Series([day.timestamp() - 3600, np.nan, np.nan])
    assert card_precision_at_k(payments, scores, y, reported, k=1) == 1.0  # b is top
    assert card_precision_at_k(payments, scores, y, reported, k=2) == 0.5  # b, c
    never = pd.Series([np.nan] * 3)
    assert card_precision_at_k(payments, scores, y, never, k=3) == pytest.approx(2 / 3)


def test_train_promotes_first_then_only_a_better_model(tmp_path, small_history):
    store = HistoryStore(tmp_path / "hist")
    import_history(store, small_history)
    registry = Registry(tmp_path / "reg")
    first = train(store, registry, TrainConfig(test_days=7, gap_days=5, max_iter=60))
    assert first.promoted and registry.current_version() == first.version
    assert first.metrics["auc_roc"] > 0.8  # the simulated patterns are learnable
    w = first.window
    assert w["train_end"] < w["test_start"]  # the gap: no overlap between periods
    meta = registry.get(first.version).metadata
    assert set(meta) >= {"features", "thresholds", "metrics", "training", "sha256"}
    assert 0 < meta["thresholds"]["review"] <= meta["thresholds"]["decline"] <= 1

    # A deliberately weak model (2 trees, tiny steps) must not replace the current one.
    weak = train(store, registry, TrainConfig(test_days=7, gap_days=5, max_iter=2,
                                              learning_rate=0.01))
    assert not weak.promoted
    assert weak.previous_metrics is not None
    assert registry.current_version() == first.version
    forced = train(store, registry, TrainConfig(test_days=7, gap_days=5, max_iter=2,
                                                learning_rate=0.01, force=True))
    assert forced.promoted and registry.current_version() == forced.version


def test_train_uses_only_labels_known_by_the_cutoff(tmp_path, small_history):
    store = HistoryStore(tmp_path / "hist")
    import_history(store, small_history)
    frame = pd.read_parquet(small_history)
    last = frame["timestamp"].max()
    cfg = TrainConfig(test_days=7, gap_days=5, max_iter=20, cutoff=last.timestamp())
    result = train(store, Registry(tmp_path / "reg"), cfg)
    test_start = pd.Timestamp(result.window["test_start"])
    in_test = frame[(frame["timestamp"] >= test_start) & frame["is_fraud"]]
    known_by_cutoff = in_test[in_test["label_reported_at"] <= last]
    assert 0 < len(known_by_cutoff) < len(in_test)  # the newest fraud is not known yet
    assert result.window["test_fraud"] == len(known_by_cutoff)


def test_train_explains_a_history_too_short(tmp_path, small_history):
    store = HistoryStore(tmp_path / "hist")
    import_history(store, small_history)
    with pytest.raises(TrainingError, match="no payments left to train on"):
        train(store, Registry(tmp_path / "reg"), TrainConfig(test_days=20, gap_days=15))
    with pytest.raises(ValueError, match="holds no payments"):
        train(HistoryStore(tmp_path / "empty"), Registry(tmp_path / "reg"), TrainConfig())
