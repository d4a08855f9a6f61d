from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from model.registry import Registry
from stores.history import HistoryStore
from training.evaluate import EvalConfig, EvalSet, card_replicates, evaluate, paired_gain
from training.importer import import_history
from training.simulator import SimulationConfig, simulate
from training.train import (
    FAMILIES,
    SEARCH_SPACE,
    TrainConfig,
    TrainingError,
    choose_family,
    choose_thresholds,
    observed_maturity_days,
    train,
)

DAY = pd.Timestamp("2026-10-02", tz="UTC")


def eval_set(n: int = 3000, seed: int = 0, days: int = 3) -> EvalSet:
    rng = np.random.default_rng(seed)
    cards = rng.integers(0, 400, n)
    payments = pd.DataFrame({
        "card_id": [f"c{c}" for c in cards],
        "day": [DAY + pd.Timedelta(days=int(d)) for d in rng.integers(0, days, n)],
        "amount": rng.uniform(1, 200, n).round(2),
    })
    y = (rng.random(n) < 0.05).astype(int)
    return EvalSet(payments, y, np.full(n, np.nan))


def test_auc_and_ap_equal_scikit_learn_ties_included():
    test = eval_set()
    rng = np.random.default_rng(1)
    scores = np.round(rng.random(len(test)) + test.y * 0.5, 1)  # coarse: many ties
    m = evaluate(test, scores, EvalConfig(bootstrap=0))
    assert m["auc_roc"] == pytest.approx(roc_auc_score(test.y, scores), abs=1e-12)
    assert m["average_precision"] == pytest.approx(average_precision_score(test.y, scores),
                                                   abs=1e-12)


def test_bootstrap_intervals_surround_the_estimate_and_shrink_with_data():
    small, big = eval_set(1500, seed=2), eval_set(30000, seed=2)
    widths = []
    for test in (small, big):
        scores = np.random.default_rng(3).random(len(test)) + test.y * 0.8
        cfg = EvalConfig(bootstrap=100)
        m = evaluate(test, scores, cfg, card_replicates(test, cfg))
        assert m["average_precision_low"] < m["average_precision"] < m["average_precision_high"]
        assert m["auc_roc_low"] < m["auc_roc"] < m["auc_roc_high"]
        widths.append(m["average_precision_high"] - m["average_precision_low"])
    assert widths[1] < widths[0] / 2


def test_recall_and_fraud_amount_at_the_alert_budget():
    test = eval_set(1000)
    y = np.zeros(1000, dtype=int)
    y[:20] = 1
    test = EvalSet(test.payments.assign(amount=100.0), y, test.known_since)
    scores = np.linspace(1, 0, 1000)  # the first 10 rows (1% budget) are all fraud
    m = evaluate(test, scores, EvalConfig(alert_rate=0.01, bootstrap=0))
    assert m["recall_at_budget"] == 0.5
    assert m["fraud_amount_per_alert"] == 100.0


def test_card_precision_leaves_out_cards_already_known_compromised():
    payments = pd.DataFrame({"card_id": ["a", "b", "c"], "day": [DAY] * 3, "amount": 1.0})
    y = np.array([1, 1, 0])
    scores = np.array([0.9, 0.8, 0.1])
    # card a's fraud became known the day before: blocked, not a detection
    known = np.array([DAY.timestamp() - 3600, np.nan, np.nan])
    one = EvalConfig(k=1, bootstrap=0)
    assert evaluate(EvalSet(payments, y, known), scores, one)["card_precision_at_k"] == 1.0
    two = EvalConfig(k=2, bootstrap=0)
    assert evaluate(EvalSet(payments, y, known), scores, two)["card_precision_at_k"] == 0.5
    never = np.full(3, np.nan)
    three = EvalConfig(k=3, bootstrap=0)
    assert evaluate(EvalSet(payments, y, never), scores, three)["card_precision_at_k"] == \
        pytest.approx(2 / 3)


def test_paired_gain_is_significant_only_for_a_real_gain():
    test = eval_set(20000, seed=4)
    rng = np.random.default_rng(5)
    good = rng.random(len(test)) + test.y * 1.0
    worse = good + rng.normal(0, 0.6, len(test))
    reps = card_replicates(test, EvalConfig(bootstrap=100))
    assert paired_gain(test, good, worse, reps)["significant"] == 1.0
    same = paired_gain(test, good, good + 1e-12 * rng.random(len(test)), reps)
    assert same["significant"] == 0.0 and same["low"] <= 0 <= same["high"]


def test_thresholds_by_budget_and_by_cost():
    rng = np.random.default_rng(6)
    y = (rng.random(10000) < 0.02).astype(int)
    scores = rng.random(10000) * 0.5 + y * 0.5
    amount = np.full(10000, 50.0)
    budget = choose_thresholds(scores, y, amount, TrainConfig(review_rate=0.03,
                                                              decline_rate=0.005))
    assert (scores >= budget["review"]).mean() == pytest.approx(0.03, abs=0.001)
    assert budget["review"] <= budget["decline"]
    # Reviews cost 10; a caught fraud saves 50: review down to where fraud thins out.
    cost = choose_thresholds(scores, y, amount, TrainConfig(thresholds_by="cost",
                                                            review_cost=10.0))
    assert 0.45 < cost["review"] < 0.55
    dear = choose_thresholds(scores, y, amount, TrainConfig(thresholds_by="cost",
                                                            review_cost=60.0))
    assert dear["review"] == dear["decline"]  # no review is worth its cost


def test_maturity_is_read_from_the_label_delays():
    frame = simulate(SimulationConfig(days=20, cards=200, terminals=40, seed=4,
                                      label_delay_days=9.0))
    epoch = pd.Timestamp("1970-01-01", tz="UTC")
    payments = frame.assign(ts=(frame["timestamp"] - epoch).dt.total_seconds())
    labels = pd.DataFrame({"payment_id": frame["payment_id"], "is_fraud": frame["is_fraud"],
                           "reported_at": (frame["label_reported_at"] - epoch)
                           .dt.total_seconds()}).dropna()
    assert observed_maturity_days(payments, labels) == 9.0


def test_train_evaluates_on_a_matured_window_with_baselines(tmp_path, small_history):
    store = HistoryStore(tmp_path / "hist")
    import_history(store, small_history)
    registry = Registry(tmp_path / "reg")
    first = train(store, registry, TrainConfig(test_days=7, maturity_days=5, max_iter=60,
                                               bootstrap=50))
    assert first.promoted and registry.current_version() == first.version
    assert first.metrics["auc_roc"] > 0.8  # the simulated patterns are learnable
    assert set(first.comparison) == {*FAMILIES, "blend"}
    assert first.family in first.comparison
    # the candidate chosen is significantly worse than no family it was compared with
    assert all(first.gains[f]["high"] >= 0 for f in (*FAMILIES, "blend")
               if f != first.family)
    assert not any("loses" in warning for warning in first.warnings)
    w = first.window
    stamp = pd.Timestamp
    # the test window ends a maturity period before the newest label, or with the payments
    assert stamp(w["cutoff"]) - stamp(w["test_end"]) >= pd.Timedelta(days=5)
    assert stamp(w["test_start"]) - stamp(w["train_end"]) == pd.Timedelta(days=5)
    assert w["refit_end"] == w["test_end"] and w["refit_payments"] > w["train_payments"]
    meta = registry.get(first.version).metadata
    assert set(meta) >= {"features", "thresholds", "metrics", "comparison", "training",
                         "sha256"}
    assert 0 < meta["thresholds"]["review"] <= meta["thresholds"]["decline"] <= 1
    m = first.metrics
    assert m["average_precision_low"] <= m["average_precision"] <= m["average_precision_high"]

    # A deliberately weak model (2 trees, tiny steps) must not replace the current one.
    weak = train(store, registry, TrainConfig(test_days=7, maturity_days=5, max_iter=2,
                                              learning_rate=0.01, bootstrap=50,
                                              baselines=False, search_seconds=0))
    assert not weak.promoted and "current" in weak.comparison
    assert set(weak.comparison) == {"gradient_boosting", "current"}
    assert weak.gains["current"]["gain"] < 0
    assert registry.current_version() == first.version
    forced = train(store, registry, TrainConfig(test_days=7, maturity_days=5, max_iter=2,
                                                learning_rate=0.01, force=True, baselines=False,
                                                bootstrap=20))
    assert forced.promoted and registry.current_version() == forced.version


def _replicates(ap: float, spread: float, seed: int) -> np.ndarray:
    """A model's AP on the window (first) and on 200 replicates around it; one seed per
    model keeps their noise independent, as two unrelated models' would be."""
    return np.r_[ap, ap + np.random.default_rng(seed).normal(0, spread, 200)]


def test_model_selection_keeps_the_simpler_family_unless_beaten_significantly():
    close = {"logistic_regression": _replicates(0.40, 0.01, 1),
             "gradient_boosting": _replicates(0.70, 0.01, 2),
             "random_forest": _replicates(0.705, 0.01, 3)}
    family, why = choose_family(close)
    assert family == "gradient_boosting" and "not significant" in why and "the simpler" in why
    apart = {**close, "random_forest": _replicates(0.80, 0.01, 3)}
    assert choose_family(apart) == ("random_forest", "best average_precision of 3 families")
    # the blend, judged last, only when it wins significantly
    assert choose_family({**close, "blend": _replicates(0.71, 0.01, 6)})[0] == "gradient_boosting"
    assert choose_family({**close, "blend": _replicates(0.80, 0.01, 6)})[0] == "blend"
    # the simplest wins when nobody beats it; one family alone is chosen as such
    assert choose_family({"extra_trees": _replicates(0.5, 0.05, 4),
                          "logistic_regression": _replicates(0.52, 0.05, 5)})[0] \
        == "logistic_regression"
    assert choose_family({"gradient_boosting": _replicates(0.5, 0.05, 4)}) == \
        ("gradient_boosting", "the only family fitted")


def test_a_first_run_never_promotes_a_family_others_beat(tmp_path, small_history):
    """A gradient boosting crippled to one tiny step loses to every forest: the first run
    promotes the family chosen, compiled on the scoring path with its reasons."""
    from model.scorer import Scorer

    store = HistoryStore(tmp_path / "hist")
    import_history(store, small_history)
    registry = Registry(tmp_path / "reg")
    result = train(store, registry, TrainConfig(test_days=7, maturity_days=5, max_iter=1,
                                                learning_rate=0.01, bootstrap=50,
                                                search_seconds=0))
    assert result.family != "gradient_boosting" and result.promoted
    assert result.gains["gradient_boosting"]["low"] > 0  # beaten, significantly
    mv = registry.current()
    assert mv is not None and mv.metadata["family"] == result.family
    scorer = Scorer.from_version(mv)
    assert scorer.compiled is not None
    # served: the compiled family's score, through the calibration fitted in training
    assert scorer.calibration.kind == mv.metadata["calibration"]["kind"] != "identity"
    assert result.calibration["kind"] == scorer.calibration.kind
    assert result.calibration["fraud"] == result.window["test_fraud"]
    assert Path(result.calibration["plot"]).stat().st_size > 1000  # beside the model
    X = np.random.default_rng(0).random((50, len(scorer.feature_names))) * 5
    raw = scorer.estimator.predict_proba(X)[:, 1]
    np.testing.assert_allclose(scorer.probabilities(X), scorer.calibration(raw),
                               rtol=0, atol=1e-9)


def test_the_search_picks_settings_on_a_slice_before_the_test_window(tmp_path, small_history):
    store = HistoryStore(tmp_path / "hist")
    import_history(store, small_history)
    result = train(store, Registry(tmp_path / "reg"),
                   TrainConfig(test_days=7, maturity_days=5, max_iter=40, bootstrap=20,
                               baselines=False, search_seconds=3600))
    s = result.search
    stamp = pd.Timestamp
    # the slice ends with the training window, a maturity period before the test window;
    # its own training payments end a maturity period before the slice
    assert stamp(s["validation_end"]) <= stamp(result.window["test_start"]) - pd.Timedelta(days=5)
    assert stamp(s["fit_end"]) == stamp(s["validation_start"]) - pd.Timedelta(days=s["gap_days"])
    assert len(s["tried"]) == 1 + len(SEARCH_SPACE)  # the budget allowed every setting
    best = max(t["average_precision"] for t in s["tried"])
    assert next(t for t in s["tried"] if t["settings"] == s["chosen"])["average_precision"] == best
    # the promoted gradient boosting carries the settings chosen
    estimator = Registry(tmp_path / "reg").current().load_estimator()
    for name, value in s["chosen"].items():
        assert getattr(estimator, name) == value
    # a budget of 0 searches nothing
    none = train(store, Registry(tmp_path / "reg2"),
                 TrainConfig(test_days=7, maturity_days=5, max_iter=20, bootstrap=20,
                             baselines=False, search_seconds=0))
    assert "tried" not in none.search
    # a budget shorter than one fit: the tuned settings alone, the budget kept
    short = train(store, Registry(tmp_path / "reg3"),
                  TrainConfig(test_days=7, maturity_days=5, max_iter=40, bootstrap=20,
                              baselines=False, search_seconds=1e-6))
    assert [t["settings"] for t in short.search["tried"]] == [{}]


def test_test_labels_are_those_known_at_the_cutoff(tmp_path, small_history):
    store = HistoryStore(tmp_path / "hist")
    import_history(store, small_history)
    frame = pd.read_parquet(small_history)
    cutoff = frame["timestamp"].max() - pd.Timedelta(days=2)
    cfg = TrainConfig(test_days=7, maturity_days=4, max_iter=20, cutoff=cutoff.timestamp(),
                      baselines=False, bootstrap=20)
    result = train(store, Registry(tmp_path / "reg"), cfg)
    start, end = pd.Timestamp(result.window["test_start"]), pd.Timestamp(
        result.window["test_end"])
    in_test = frame[(frame["timestamp"] >= start) & (frame["timestamp"] < end)
                    & frame["is_fraud"]]
    known = in_test[in_test["label_reported_at"] <= cutoff]
    assert 0 < len(known) < len(in_test)  # some fraud of the window is reported later
    assert result.window["test_fraud"] == len(known)


def test_train_refuses_a_window_with_no_matured_fraud(tmp_path, small_history):
    """A live installation whose newest labels have not arrived: a clear message, not NaN."""
    frame = pd.read_parquet(small_history)
    # Labels stop arriving 12 days before the end of the history.
    late = frame["label_reported_at"] > frame["timestamp"].max() - pd.Timedelta(days=12)
    frame.loc[late, ["is_fraud", "label_reported_at", "label_source"]] = [False, pd.NaT, None]
    path = tmp_path / "h.parquet"
    frame.to_parquet(path)
    store = HistoryStore(tmp_path / "hist")
    import_history(store, path)
    with pytest.raises(TrainingError, match="no fraud is known in the matured test window"):
        train(store, Registry(tmp_path / "reg"), TrainConfig(test_days=3, maturity_days=2,
                                                             baselines=False))


def test_train_explains_a_history_too_short(tmp_path, small_history):
    store = HistoryStore(tmp_path / "hist")
    import_history(store, small_history)
    with pytest.raises(TrainingError, match="no payments left to train on"):
        train(store, Registry(tmp_path / "reg"), TrainConfig(test_days=25, maturity_days=6))
    with pytest.raises(TrainingError, match="holds no payments"):
        train(HistoryStore(tmp_path / "empty"), Registry(tmp_path / "reg"), TrainConfig())


def test_card_precision_leaves_out_cards_the_investigators_found_on_earlier_days():
    """The field's count: card a, alerted and found fraudulent on day 1, is blocked on day 2
    and not found again; card c, alerted on day 1 but legitimate, may be alerted again."""
    day2 = DAY + pd.Timedelta(days=1)
    payments = pd.DataFrame({"card_id": ["a", "c", "a", "c", "b"],
                             "day": [DAY, DAY, day2, day2, day2], "amount": 1.0})
    y = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.9, 0.7, 0.6])
    never = np.full(5, np.nan)
    m = evaluate(EvalSet(payments, y, never), scores, EvalConfig(k=1, bootstrap=0))
    # day 1: a (fraud) -> 1.0; day 2: a is blocked, c (legitimate) is the top card -> 0.0
    assert m["card_precision_at_k"] == 0.5
    # counted again every day: a tops both days
    assert m["card_precision_at_k_every_day"] == 1.0
    two = evaluate(EvalSet(payments, y, never), scores, EvalConfig(k=2, bootstrap=0))
    # day 1: a, c -> 0.5; day 2: a is blocked (found on day 1), c and b -> 0.0
    assert two["card_precision_at_k"] == 0.25
    assert two["card_precision_at_k_every_day"] == 0.5
