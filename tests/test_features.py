"""The feature definitions, and the vectorised point-in-time computation against a plain
reading of them (one payment at a time, straight from the docstrings)."""

import numpy as np
import pandas as pd
import pytest

from model.features import (
    CARD_FRAUD_WINDOW,
    CARD_WINDOWS,
    DAY,
    FEATURE_NAMES,
    FRESH_FRAUD_WINDOW,
    HOUR,
    MATURITY,
    NO_PREVIOUS_SECS,
    RISK_WINDOWS,
    Aggregates,
    compute,
    to_milli,
)
from model.labels import fraud_known_since, fraud_spells
from model.point_in_time import compute_aggregates, compute_features
from model.schemas import looks_like_pan

T = 1_790_000_000.0  # Monday 2026-09-21 14:13:20 UTC


def spell_state(labels: dict, pid: str, t: float) -> float | None:
    """When ``pid`` became known fraud, as of ``t`` (None if it is not fraud then): the
    latest label reported by t decides, fraud wins ties, repeated fraud keeps the start."""
    since = None
    for at, is_fraud in sorted(labels.get(pid, [])):
        if at > t:
            break
        if is_fraud and since is None:
            since = at
        elif not is_fraud:
            since = None
    return since


def reference(payments: pd.DataFrame, labels) -> pd.DataFrame:
    """Each payment's aggregates by the definitions, looking only at what came before."""
    rows = []
    recs = list(payments.itertuples(index=False))
    by_pid: dict = {}
    for lb in labels.itertuples(index=False):
        by_pid.setdefault(lb.payment_id, []).append((lb.reported_at, bool(lb.is_fraud)))
    labels = by_pid
    for i, p in enumerate(recs):
        t = p.ts
        earlier = [q for q in recs[:i] if q.card_id == p.card_id and t - 30 * DAY < q.ts <= t]
        row = {}
        for w, span in CARD_WINDOWS.items():
            inside = [q for q in earlier if q.ts > t - span]
            row[f"cc_{w}"] = len(inside)
            row[f"cm_{w}"] = int(sum(to_milli(q.amount) for q in inside))
        tenths = [(to_milli(q.amount) + 50) // 100 for q in earlier]
        row["ct"], row["ct2"] = sum(tenths), sum(u * u for u in tenths)
        row["prev"] = max((q.ts for q in earlier), default=np.nan)
        row["seen"] = any(q.terminal_id == p.terminal_id for q in earlier)
        row["seen_country"] = pd.isna(p.country) or any(q.country == p.country for q in earlier)
        row["seen_mcc"] = pd.isna(p.merchant_category) or any(
            q.merchant_category == p.merchant_category for q in earlier)
        card_pids = {q.payment_id for q in recs if q.card_id == p.card_id}
        since = [spell_state(labels, pid, t) for pid in card_pids]
        row["cfraud"] = sum(1 for s in since if s is not None and s > t - CARD_FRAUD_WINDOW)
        term = [q for q in recs if q.terminal_id == p.terminal_id]
        for w, span in RISK_WINDOWS.items():
            matured = [q for q in term if t - MATURITY - span < q.ts <= t - MATURITY]
            row[f"tc_{w}"] = len(matured)
            row[f"tf_{w}"] = sum(1 for q in matured
                                 if spell_state(labels, q.payment_id, t) is not None)
        fresh = [spell_state(labels, q.payment_id, t) for q in term]
        row["fresh"] = sum(1 for s in fresh if s is not None and s > t - FRESH_FRAUD_WINDOW)
        rows.append(row)
    return pd.DataFrame(rows)


def random_history(seed: int, n: int = 250, late: bool = True):
    rng = np.random.default_rng(seed)
    ts = np.sort(T + rng.uniform(0, 60 * DAY, n).round(3))
    ts[5] = ts[4]  # a tie
    payments = pd.DataFrame({
        "payment_id": [f"p{i}" for i in range(n)],
        "ts": ts,
        "card_id": rng.choice([f"c{i}" for i in range(12)], n),
        "terminal_id": rng.choice([f"t{i}" for i in range(6)], n),
        "amount": rng.choice([0.0, 1.005, 19.99, 250.0, 3.3], n),
        "country": rng.choice(np.array(["FR", "DE", None], dtype=object), n),
        "merchant_category": rng.choice(np.array(["5411", "5812", "7011", None], dtype=object),
                                        n),
    })
    if late:  # a few payments reach the store after later ones (arrival order = row order)
        order = np.arange(n)
        for a in (50, 120, 200):
            order[a], order[a + 3] = order[a + 3], order[a]
        payments = payments.iloc[order].reset_index(drop=True)
    fraud = rng.choice(n, 40, replace=False)
    labels = pd.DataFrame({
        "payment_id": [f"p{i}" for i in fraud],
        "is_fraud": True,
        "reported_at": ts[fraud] + rng.uniform(0.5, 20, 40) * DAY,
    })
    # withdrawals, repeats and a tie between verdicts
    extra = pd.DataFrame({
        "payment_id": [f"p{fraud[0]}", f"p{fraud[1]}", f"p{fraud[1]}", f"p{fraud[2]}",
                       f"p{fraud[3]}"],
        "is_fraud": [False, False, True, True, False],
        "reported_at": [labels["reported_at"].iloc[0] + DAY, labels["reported_at"].iloc[1] + DAY,
                        labels["reported_at"].iloc[1] + 3 * DAY,
                        labels["reported_at"].iloc[2] + DAY, labels["reported_at"].iloc[3]],
    })
    return payments, pd.concat([labels, extra], ignore_index=True)


@pytest.mark.parametrize("seed", [1, 2])
def test_vectorised_aggregates_equal_the_definitions(seed):
    payments, labels = random_history(seed)
    agg = compute_aggregates(payments, labels)
    ref = reference(payments, labels)
    for w in CARD_WINDOWS:
        np.testing.assert_array_equal(agg.card_count[w], ref[f"cc_{w}"])
        np.testing.assert_array_equal(agg.card_milli[w], ref[f"cm_{w}"])
    np.testing.assert_array_equal(agg.card_tenths, ref["ct"])
    np.testing.assert_array_equal(agg.card_tenths_sq, ref["ct2"])
    np.testing.assert_array_equal(agg.card_prev_ts, ref["prev"])
    np.testing.assert_array_equal(agg.card_seen["terminal"], ref["seen"])
    np.testing.assert_array_equal(agg.card_seen["country"], ref["seen_country"])
    np.testing.assert_array_equal(agg.card_seen["mcc"], ref["seen_mcc"])
    assert not ref["seen_country"].all() and not ref["seen_mcc"].all()
    np.testing.assert_array_equal(agg.card_fraud, ref["cfraud"])
    for w in RISK_WINDOWS:
        np.testing.assert_array_equal(agg.terminal_count[w], ref[f"tc_{w}"])
        np.testing.assert_array_equal(agg.terminal_fraud[w], ref[f"tf_{w}"])
    np.testing.assert_array_equal(agg.terminal_fresh, ref["fresh"])
    # not vacuous
    assert ref["tf_7d"].max() > 0 and ref["cfraud"].max() > 0 and ref["fresh"].max() > 0


def test_spells_follow_the_latest_label():
    labels = pd.DataFrame({
        "payment_id": ["a", "a", "a", "a", "b", "b"],
        "is_fraud": [True, True, False, True, False, True],
        "reported_at": [10.0, 12.0, 15.0, 20.0, 5.0, 5.0],
    })
    spells = fraud_spells(labels).sort_values(["payment_id", "known_since"])
    spells = spells.fillna({"until": -1.0})  # -1: the spell lasts
    # a repeated fraud label keeps the spell's start; "not fraud" ends it; a tie is fraud
    assert spells.values.tolist() == [["a", 10.0, 15.0], ["a", 20.0, -1.0], ["b", 5.0, -1.0]]
    spells = fraud_spells(labels)
    ids = pd.Series(["a", "b", "c"])
    assert fraud_known_since(ids, spells, 16.0).fillna(-1).tolist() == [-1, 5.0, -1]
    assert fraud_known_since(ids, spells, 12.0).fillna(-1).tolist() == [10.0, 5.0, -1]
    assert fraud_known_since(ids, spells, 25.0).fillna(-1).tolist() == [20.0, 5.0, -1]


def one(**kw):
    base = dict(
        ts=np.array([T]), amount=np.array([10.0]),
        card_count={w: np.array([0]) for w in CARD_WINDOWS},
        card_milli={w: np.array([0]) for w in CARD_WINDOWS},
        card_tenths=np.array([0]), card_tenths_sq=np.array([0]),
        card_prev_ts=np.array([np.nan]),
        card_seen={a: np.array([0]) for a in ("terminal", "country", "mcc")},
        card_fraud=np.array([0]),
        terminal_count={w: np.array([0]) for w in RISK_WINDOWS},
        terminal_fraud={w: np.array([0]) for w in RISK_WINDOWS},
        terminal_fresh=np.array([0]),
    )
    base.update(kw)
    return {k: float(v[0]) for k, v in compute(Aggregates(**base)).items()}


def test_first_payment_of_a_card_counts_itself_and_is_neutral():
    f = one()
    assert f["card_count_1h"] == f["card_count_30d"] == 1.0
    assert f["card_mean_amount_30d"] == 10.0
    assert f["card_secs_since_prev"] == NO_PREVIOUS_SECS
    assert f["card_amount_ratio_30d"] == 1.0
    assert f["card_new_terminal"] == 1.0
    assert f["terminal_risk_7d"] == 0.0  # no matured payments: no risk, not NaN


def test_means_ratio_and_risk_from_aggregates():
    f = one(card_count={w: np.array([3]) for w in CARD_WINDOWS},
            card_milli={w: np.array([30_000]) for w in CARD_WINDOWS},
            card_prev_ts=np.array([T - HOUR]),
            card_seen={a: np.array([1]) for a in ("terminal", "country", "mcc")},
            amount=np.array([50.0]),
            terminal_count={w: np.array([8]) for w in RISK_WINDOWS},
            terminal_fraud={w: np.array([2]) for w in RISK_WINDOWS})
    assert f["card_mean_amount_7d"] == pytest.approx(80.0 / 4)
    assert f["card_amount_ratio_30d"] == pytest.approx(5.0)
    assert f["card_secs_since_prev"] == HOUR
    assert f["card_new_terminal"] == f["card_new_country"] == f["card_new_mcc"] == 0.0
    assert f["terminal_risk_30d"] == 0.25
    assert f["terminal_count_1d"] == 8.0


def test_amount_z_score_against_the_cards_30_days():
    earlier = np.array([10.0, 20.0, 30.0])
    u = (to_milli(earlier) + 50) // 100
    z = one(amount=np.array([50.0]), card_count={w: np.array([3]) for w in CARD_WINDOWS},
            card_tenths=np.array([u.sum()]), card_tenths_sq=np.array([(u * u).sum()]))
    assert z["card_amount_z_30d"] == pytest.approx((50 - earlier.mean()) / earlier.std())
    # a card that always pays the same amount has no spread: neutral, not a division by 0
    same = one(amount=np.array([19.99]), card_count={w: np.array([2]) for w in CARD_WINDOWS},
               card_tenths=np.array([400]), card_tenths_sq=np.array([80_000]))
    assert same["card_amount_z_30d"] == 0.0
    assert one()["card_amount_z_30d"] == 0.0  # no earlier payment


def test_zero_amount_payments_are_features_too():
    f = one(amount=np.array([0.0]), card_count={w: np.array([2]) for w in CARD_WINDOWS},
            card_milli={w: np.array([0]) for w in CARD_WINDOWS})
    assert f["card_amount_ratio_30d"] == 1.0 and f["card_mean_amount_1d"] == 0.0


def test_time_features_are_utc():
    f = one(ts=np.array([T]))
    assert f["hour_of_day"] == 14.0 and f["is_weekend"] == 0.0 and f["is_night"] == 0.0
    sat_night = one(ts=np.array([T + 4 * DAY + 12 * HOUR]))  # Saturday 02:13 UTC
    assert sat_night["is_weekend"] == 1.0 and sat_night["is_night"] == 1.0


def test_label_of_the_future_is_not_known_now():
    payments = pd.DataFrame({"payment_id": ["a", "b"], "ts": [T, T + 10 * DAY],
                             "card_id": ["c", "c"], "terminal_id": ["t", "t"],
                             "amount": [5.0, 5.0]})
    late = pd.DataFrame({"payment_id": ["a"], "is_fraud": [True], "reported_at": [T + 11 * DAY]})
    soon = late.assign(reported_at=T + 9 * DAY)
    assert compute_features(payments, late)["terminal_risk_7d"].tolist() == [0.0, 0.0]
    assert compute_features(payments, soon)["terminal_risk_7d"].tolist() == [0.0, 1.0]
    assert compute_features(payments, soon)["card_fraud_known_30d"].tolist() == [0.0, 1.0]


def test_feature_names_are_unique_and_computed():
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert set(one()) == set(FEATURE_NAMES)


@pytest.mark.parametrize(("value", "is_pan"), [
    ("4111111111111111", True), ("4111 1111 1111 1111", True), ("4111111111111112", False),
    ("card_00042", False), ("123456789012", False),
    # inside a longer value, as whole digit groups
    ("card_4111111111111111", True), ("pay:4111-1111-1111-1111", True),
    ("paid with 4111 1111 1111 1111 exp 12/26", True), ("x4111111111111111y", False),
    # digits of another script are digits
    ("\u0664" + "\u0661" * 15, True), ("\uff14" + "\uff11" * 15, True),
    # ids that only carry many digits: dates, order numbers, UUIDs
    ("pay_2026-12-02_000123", False), ("ord-000000123456", False),
    ("3f2a9c1e-4521-8834-9123-0a1b2c3d4e5f", False),
])
def test_pan_detection(value, is_pan):
    assert looks_like_pan(value) is is_pan
