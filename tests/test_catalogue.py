"""The feature catalogue: today's 25 derived from it equal today's backfill to the last bit,
and every other entry of DEFAULT equals a plain per-payment reading of its definition."""

import numpy as np
import pandas as pd
import pytest

from model.catalogue import (
    DEFAULT,
    ENTITIES,
    RETENTION,
    TODAY,
    Catalogue,
    CatalogueError,
    Count,
    Distinct,
    Mismatch,
    Novelty,
    SinceLast,
    Today,
)
from model.features import DAY, FEATURE_DESCRIPTIONS, FEATURE_NAMES
from model.point_in_time import compute_features
from tests.test_features import random_history
from tests.test_online_offline import traffic_and_labels


@pytest.mark.parametrize("late", [False, True])
def test_today_equals_the_point_in_time_backfill_to_the_bit(late):
    traffic, labels = traffic_and_labels(3, late)
    ours = TODAY.compute(traffic, labels)
    theirs = compute_features(traffic, labels)
    assert list(ours.columns) == list(FEATURE_NAMES) == list(TODAY.names)
    assert np.array_equal(ours.to_numpy(), theirs.to_numpy(), equal_nan=True)
    assert TODAY.describe() == {n: FEATURE_DESCRIPTIONS[n] for n in FEATURE_NAMES}


def cnp_history(seed: int):
    """random_history (ties, late arrivals, withdrawals) plus card-not-present fields with
    missing values, and extra ties and late rows on the new entities."""
    payments, labels = random_history(seed)
    rng = np.random.default_rng(seed + 100)
    n = len(payments)

    def pick(values):
        return rng.choice(np.array([*values, None], dtype=object), n)

    nets = [f"ip_{i:016x}" for i in range(3)]
    payments = payments.assign(
        customer_id=pick([f"u{i}" for i in range(5)]),
        device_id=pick([f"d{i}" for i in range(6)]),
        ip=pick([f"{nets[i % 3]}.{i:016x}" for i in range(7)]),
        email=pick([f"em_{i}" for i in range(4)]),
        billing_country=pick(["FR", "DE"]),
        shipping_country=pick(["FR", "DE", "ES"]),
    )
    # Dense bursts, so the 1h windows see more than one payment: squeeze some timestamps.
    ts = payments["ts"].to_numpy().copy()
    ts[10:40] = ts[10] + np.arange(30) * 60.0
    ts[41] = ts[40]  # a tie
    ts[60], ts[61] = ts[61], ts[60] + 1  # out of order
    return payments.assign(ts=ts), labels


def reference(feature, payments: pd.DataFrame) -> np.ndarray:
    """The definition in words, one payment at a time over the earlier arrivals."""
    ts = payments["ts"].tolist()
    if isinstance(feature, Count):
        keys = ENTITIES[feature.entity].keys(payments).tolist()
        out = []
        for i, key in enumerate(keys):
            if pd.isna(key):
                out.append(np.nan)
                continue
            n = sum(1 for j in range(i) if keys[j] == key
                    and ts[i] - feature.window < ts[j] <= ts[i])
            out.append(float(n + feature.include_self))
        return np.array(out)
    if isinstance(feature, Mismatch):
        pairs = zip(payments[feature.left].tolist(), payments[feature.right].tolist(),
                    strict=True)
        return np.array([np.nan if pd.isna(a) or pd.isna(b) else float(a != b)
                         for a, b in pairs])
    if isinstance(feature, SinceLast):
        keys = ENTITIES[feature.entity].keys(payments).tolist()
        out = []
        for i, key in enumerate(keys):
            earlier = [ts[j] for j in range(i) if not pd.isna(key) and keys[j] == key]
            gap = ts[i] - max(earlier) if earlier else np.inf
            out.append(max(gap, 0.0) if gap <= RETENTION else np.nan)
        return np.array(out)
    if isinstance(feature, Distinct | Novelty):
        keys = ENTITIES[feature.entity].keys(payments).tolist()
        others = ENTITIES[feature.of].keys(payments).tolist()
        out = []
        for i, key in enumerate(keys):
            if pd.isna(key) or (isinstance(feature, Novelty) and pd.isna(others[i])):
                out.append(np.nan)
                continue
            # the kept set after each earlier arrival of the key, rebuilt from scratch
            kept: dict[str, float] = {}
            mine = None
            for j in range(i + 1):
                if keys[j] != key or pd.isna(others[j]):
                    continue
                if j == i:
                    mine = kept.get(others[j])
                kept[others[j]] = max(kept.get(others[j], -np.inf), ts[j])
                kept = dict(sorted(kept.items(), key=lambda kv: (kv[1], kv[0]))[-feature.cap:])
            if isinstance(feature, Distinct):
                out.append(float(sum(ts[i] - feature.window < v <= ts[i]
                                     for v in kept.values())))
            else:
                out.append(float(mine is None or mine <= ts[i] - feature.window))
        return np.array(out)
    raise AssertionError(f"no reference for {feature!r}")


@pytest.mark.parametrize("seed", [1, 2])
def test_every_default_feature_equals_its_definition(seed):
    payments, labels = cnp_history(seed)
    got = DEFAULT.compute(payments, labels)
    assert list(got.columns) == list(DEFAULT.names)
    today = compute_features(payments, labels)
    for f in DEFAULT.features:
        if isinstance(f, Today):  # today's definitions are tests/test_features.py's
            assert np.array_equal(got[f.name], today[f.name], equal_nan=True), f.name
            continue
        ref = reference(f, payments)
        # Counts are integers, so exact equality is the right test.
        assert np.array_equal(got[f.name].to_numpy(), ref, equal_nan=True), f.name
        assert np.isnan(ref).any() and not np.isnan(ref).all(), f.name  # not vacuous
        if isinstance(f, Count | Distinct) and f.window >= DAY:
            assert np.nanmax(ref) > 2, f.name
        if isinstance(f, Novelty):
            assert set(np.unique(ref[~np.isnan(ref)])) == {0.0, 1.0}, f.name


@pytest.mark.parametrize("seed", [1, 2])
def test_a_capped_set_keeps_the_latest_keys_as_redis_would(seed):
    """With a cap of 2 a device keeps its two latest cards, ties broken by key as a sorted
    set's rank does: a card trimmed away counts as new again."""
    payments, labels = cnp_history(seed)
    capped = Catalogue([Distinct("device", "card", 30 * DAY, cap=2),
                        Novelty("device", "card", 30 * DAY, cap=2),
                        Novelty("device", "card", 30 * DAY, cap=1000)])
    got = capped.compute(payments, labels)
    for f in capped.features:
        assert np.array_equal(got[f.name].to_numpy(), reference(f, payments),
                              equal_nan=True), f.name
    assert np.nanmax(got[capped.names[0]]) == 2
    # the cap changes what is new: more payments see a trimmed card as new
    assert np.nansum(got[capped.names[1]]) > np.nansum(got[capped.names[2]])


def test_ip_prefix_groups_addresses_of_one_network():
    payments, _ = cnp_history(1)
    keys = ENTITIES["ip_prefix"].keys(payments).dropna()
    assert keys.nunique() == 3 and all(k.startswith("ip_") for k in keys)


def test_validation_names_the_problem():
    with pytest.raises(CatalogueError, match="unknown entity 'planet'"):
        Catalogue([Count("planet", DAY)])
    with pytest.raises(CatalogueError, match="window must be > 0"):
        Catalogue([Count("card", 0.0)])
    with pytest.raises(CatalogueError, match="duplicate feature name 'card_count_1d'"):
        Catalogue([Count("card", DAY), Count("card", DAY)])
    with pytest.raises(CatalogueError, match="longer than the retention"):
        Catalogue([Count("device", 400 * DAY)])
    with pytest.raises(CatalogueError, match="unknown entity 'planet'"):
        Catalogue([Distinct("device", "planet", DAY)])
    with pytest.raises(CatalogueError, match="always seen with itself"):
        Catalogue([Novelty("card", "card", DAY)])
    with pytest.raises(CatalogueError, match="cap must be >= 1"):
        Catalogue([Distinct("device", "card", DAY, cap=0)])
    with pytest.raises(CatalogueError, match="longer than the retention"):
        Catalogue([Novelty("customer", "device", 91 * DAY)])
    with pytest.raises(CatalogueError, match="not one of today's"):
        Catalogue([Today("nope", "payment", "")])


def test_without_drops_a_group():
    names = DEFAULT.without("device").names
    assert not any(n.startswith(("device_count", "device_seconds")) for n in names)
    assert "card_count_1h" in names and "email_count_1h" in names
    assert "device_cards_1d" in names  # a link: its own group
    linkless = DEFAULT.without("links")
    assert not any(isinstance(f, Distinct) for f in linkless.features)
    assert len(linkless.names) == len(DEFAULT.names) - 18
