import math

import numpy as np
import pandas as pd
import pytest

from model.features import (
    DAY,
    FEATURE_NAMES,
    HOUR,
    NO_PREVIOUS_SECS,
    card_features,
    feature_vector,
    terminal_features,
    time_features,
)
from model.point_in_time import compute_features
from model.schemas import looks_like_pan

T = 1_790_000_000.0  # Monday 2026-09-21 14:13:20 UTC


def card(ts, amount, prior, terminal="t0"):
    prior = sorted(prior)
    return card_features(
        ts, amount, terminal,
        np.array([p[0] for p in prior], dtype=float),
        np.array([p[1] for p in prior], dtype=float),
        [p[2] for p in prior],
    )


def test_first_payment_of_a_card_counts_itself_and_caps_time_since_previous():
    f = card(T, 10.0, [])
    assert f["card_count_1h"] == f["card_count_30d"] == 1.0
    assert f["card_sum_1d"] == 10.0
    assert f["card_secs_since_prev"] == NO_PREVIOUS_SECS
    assert f["card_amount_ratio_30d"] == 1.0
    assert f["card_terminals_1d"] == 1.0


def test_windows_are_event_time_with_exclusive_lower_bound():
    prior = [
        (T - HOUR, 5.0, "t1"),  # exactly one hour before: outside the 1h window
        (T - HOUR + 1, 7.0, "t2"),
        (T - 2 * DAY, 11.0, "t1"),
        (T - 31 * DAY, 1000.0, "t9"),  # beyond 30d: ignored everywhere
    ]
    f = card(T, 3.0, [p for p in prior if p[0] > T - 30 * DAY])
    assert f["card_count_1h"] == 2.0
    assert f["card_sum_1h"] == 10.0
    assert f["card_count_1d"] == 3.0
    assert f["card_sum_7d"] == 26.0
    assert f["card_terminals_1d"] == 3.0  # t1, t2 and this payment's t0
    assert f["card_secs_since_prev"] == HOUR - 1
    assert f["card_amount_ratio_30d"] == pytest.approx(3.0 / (23.0 / 3))


def test_terminal_risk_uses_counts_and_labels_given():
    f = terminal_features(T, {"1d": 3, "7d": 9, "28d": 19}, fraud_in_risk_window=4)
    assert f["terminal_count_1d"] == 4.0
    assert f["terminal_count_28d"] == 20.0
    assert f["terminal_risk_28d"] == pytest.approx(0.2)


def test_time_features_in_utc():
    assert time_features(T) == {"hour_of_day": 14.0, "is_night": 0.0, "is_weekend": 0.0}
    assert time_features(T - 12 * HOUR) == {"hour_of_day": 2.0, "is_night": 1.0,
                                            "is_weekend": 0.0}
    assert time_features(T - 2 * DAY)["is_weekend"] == 1.0  # Saturday


def test_feature_vector_has_every_feature_in_order():
    v = feature_vector(T, 9.0, card(T, 9.0, []), terminal_features(T, {"1d": 0, "7d": 0,
                                                                        "28d": 0}, 0))
    assert tuple(v) == FEATURE_NAMES
    assert v["log_amount"] == pytest.approx(math.log1p(9.0))


def test_point_in_time_terminal_risk_ignores_labels_reported_after_the_payment():
    payments = pd.DataFrame({
        "payment_id": ["a", "b", "c", "d"],
        "ts": [T, T + DAY, T + 3 * DAY, T + 40 * DAY],
        "card_id": ["c1", "c2", "c3", "c4"],
        "terminal_id": ["t"] * 4,
        "amount": [10.0, 20.0, 30.0, 40.0],
    })
    labels = pd.DataFrame({"payment_id": ["a"], "is_fraud": [True],
                           "reported_at": [T + 2 * DAY]})
    f = compute_features(payments, labels)
    assert list(f["terminal_fraud_28d"]) == [0.0, 0.0, 1.0, 0.0]  # d: label older than 28d
    assert f.loc[2, "terminal_risk_28d"] == pytest.approx(1 / 3)
    assert list(f["terminal_count_28d"]) == [1.0, 2.0, 3.0, 1.0]


def test_point_in_time_not_fraud_verdict_withdraws_an_earlier_fraud_label():
    payments = pd.DataFrame({"payment_id": ["a", "b", "c"], "ts": [T, T + 2 * DAY, T + 4 * DAY],
                             "card_id": ["x", "y", "z"], "terminal_id": ["t"] * 3,
                             "amount": [1.0, 2.0, 3.0]})
    labels = pd.DataFrame({"payment_id": ["a", "a"], "is_fraud": [True, False],
                           "reported_at": [T + DAY, T + 3 * DAY]})
    f = compute_features(payments, labels)
    assert list(f["terminal_fraud_28d"]) == [0.0, 1.0, 0.0]


def test_compute_features_names_missing_columns():
    with pytest.raises(ValueError, match="amount"):
        compute_features(pd.DataFrame({"payment_id": [], "ts": [], "card_id": [],
                                       "terminal_id": []}),
                         pd.DataFrame({"payment_id": [], "is_fraud": [], "reported_at": []}))


@pytest.mark.parametrize(("value", "is_pan"), [
    ("4111111111111111", True), ("4111 1111 1111 1111", True), ("4111111111111112", False),
    ("card_00042", False), ("123456", False),
])
def test_pan_detection(value, is_pan):
    assert looks_like_pan(value) is is_pan
