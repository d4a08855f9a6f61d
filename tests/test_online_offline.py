"""The online store (Redis) and the offline point-in-time computation give the same
features for the same sequence of payments and labels: label withdrawals, repeated labels,
payments arriving out of timestamp order, with and without the API's idempotency and list
checks.

Labels reach the store in reported order, as the clock passes them. One divergence is by
design and left out: a payment arriving late (after payments with later timestamps) does
not see a fraud that was withdrawn between its own timestamp and its arrival, since the
store forgets a withdrawn fraud; the history cannot know the arrival clock to copy that."""

import asyncio

import numpy as np
import pandas as pd
import pytest

from model.config import Settings
from model.features import DAY, FEATURE_NAMES
from model.point_in_time import compute_features
from model.schemas import Payment
from stores.online_features import LabelUpdate, OnlineStore, PaymentRef
from stores.redis_client import connect
from tests.conftest import cli, uid
from training.simulator import SimulationConfig, simulate

pytestmark = pytest.mark.integration


def traffic_and_labels(seed: int, late: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    traffic = simulate(SimulationConfig(days=40, cards=120, terminals=15, seed=seed,
                                        card_testing_rate=0.01, takeover_rate=0.01))
    traffic = traffic.assign(ts=traffic["timestamp"].map(lambda t: t.timestamp()))
    fraud = traffic[traffic["is_fraud"]]
    labels = pd.DataFrame({"payment_id": fraud["payment_id"], "is_fraud": True,
                           "reported_at": fraud["label_reported_at"].map(
                               lambda t: t.timestamp())})
    rng = np.random.default_rng(seed)
    # Disputes won ("not fraud" after a chargeback), then some lost again; repeats.
    some = labels.sample(frac=0.15, random_state=seed)
    withdrawn = some.assign(is_fraud=False, reported_at=some["reported_at"]
                            + rng.uniform(0.1, 5, len(some)) * DAY)
    again = withdrawn.iloc[::3].assign(is_fraud=True, reported_at=lambda d: d["reported_at"]
                                       + 2 * DAY)
    repeats = labels.iloc[::7].assign(reported_at=lambda d: d["reported_at"] + DAY)
    if late:  # see the module's docstring
        withdrawn = again = withdrawn.iloc[:0]
    labels = pd.concat([labels, withdrawn, again, repeats], ignore_index=True)
    if not late:
        return traffic, labels
    # Some payments reach the store after later ones (a gateway's retry queue).
    order = np.arange(len(traffic))
    for i in range(100, len(traffic) - 5, 97):
        order[i], order[i + 4] = order[i + 4], order[i]
    return traffic.iloc[order].reset_index(drop=True), labels


async def replay_online(settings: Settings, traffic: pd.DataFrame, labels: pd.DataFrame,
                        checked: bool) -> pd.DataFrame:
    redis = connect(settings)
    await redis.ready()
    store = OnlineStore(redis)
    ref = {p.payment_id: PaymentRef(p.terminal_id, p.card_id, p.ts)
           for p in traffic.itertuples(index=False)}
    label_rows = list(labels.sort_values(["reported_at", "is_fraud"], kind="stable")
                      .itertuples(index=False))
    nxt = 0
    rows = []
    for p in traffic.itertuples(index=False):
        # Labels reported by now have reached the stream processor.
        while nxt < len(label_rows) and label_rows[nxt].reported_at <= p.ts:
            lb = label_rows[nxt]
            await store.apply_label(LabelUpdate(lb.payment_id, ref[lb.payment_id],
                                                bool(lb.is_fraud), lb.reported_at))
            nxt += 1
        payment = Payment(payment_id=p.payment_id, timestamp=p.timestamp, card_id=p.card_id,
                          terminal_id=p.terminal_id, amount=p.amount, currency="EUR",
                          country=p.country if isinstance(p.country, str) else None,
                          merchant_category=p.merchant_category
                          if isinstance(p.merchant_category, str) else None)
        obs = await store.observe(payment, payload_hash="h" if checked else "",
                                  check_lists=checked)
        assert obs.features is not None
        rows.append(obs.features)
    await redis.aclose()
    return pd.DataFrame(rows, columns=list(FEATURE_NAMES), index=traffic.index)


@pytest.mark.parametrize(("seed", "late", "checked"), [(5, False, False), (6, True, True),
                                                        (7, False, True)])
def test_online_features_equal_offline_features(stack, seed, late, checked):
    traffic, labels = traffic_and_labels(seed, late)
    assert traffic["is_fraud"].sum() > 20
    assert ((traffic.groupby("card_id")["ts"].diff() < 0).sum() > 0) == late
    assert (~labels["is_fraud"]).any() != late  # withdrawals are exercised
    # Ids of this run only: the store may hold other tests' cards (one db on a cluster).
    run = uid("oo")
    traffic = traffic.assign(**{c: run + traffic[c] for c in
                                ("payment_id", "card_id", "terminal_id")})
    labels = labels.assign(payment_id=run + labels["payment_id"])
    online = asyncio.run(replay_online(stack, traffic, labels, checked))
    offline = compute_features(traffic, labels)

    assert online.shape == offline.shape == (len(traffic), len(FEATURE_NAMES))
    diff = (online != offline).any(axis=1)
    assert not diff.any(), f"{diff.sum()} payments differ, e.g.\n" + str(
        pd.concat({"online": online[diff].head(3), "offline": offline[diff].head(3)}).T)
    # The comparison is not vacuous: label-driven and window features do vary.
    assert offline["terminal_risk_7d"].max() > 0
    assert offline["card_fraud_known_30d"].max() > 0
    assert offline["terminal_fraud_fresh_7d"].max() > 0
    assert offline["card_count_1h"].max() > 3
    assert 0 < offline["card_new_country"].mean() < 0.5
    assert 0 < offline["card_new_mcc"].mean() < 0.5


def test_a_busy_card_keeps_exact_aggregates_through_late_payments_retries_and_backfill(
        stack, redis_db):
    """One card, 1,500 payments over 40 days: most in order (the aggregates' path), some
    late (summed), some sent twice (not counted twice), a back-fill between (the
    aggregates dropped and rebuilt). Every served vector equals the point-in-time one."""
    from stores.online_features import card_state_key

    run = uid("busy")
    rng = np.random.default_rng(11)
    n = 1500
    ts = np.sort(rng.uniform(0, 40 * DAY, n)) + 1_790_000_000.0
    order = np.arange(n)
    for i in range(50, n - 3, 61):  # late arrivals
        order[i], order[i + 3] = order[i + 3], order[i]
    traffic = pd.DataFrame({
        "payment_id": [f"{run}_{i:05d}" for i in range(n)], "ts": ts,
        "timestamp": pd.to_datetime(ts, unit="s", utc=True).round("us"), "card_id": run,
        "terminal_id": [f"{run}_t{i % 7}" for i in rng.integers(0, 40, n)],
        "amount": np.round(rng.lognormal(3, 1, n), 2),
        "country": rng.choice(["FR", "DE", "ES", "IT"], n),
        "merchant_category": rng.choice(["5411", "5812", "4111", "5999"], n),
    })
    # to the microsecond, as the API's timestamps, and the epoch seconds from them
    traffic = traffic.assign(ts=traffic["timestamp"].map(lambda t: t.timestamp()))
    traffic = traffic.iloc[order].reset_index(drop=True)
    labels = pd.DataFrame({"payment_id": [], "is_fraud": [], "reported_at": []})

    async def go() -> list[dict[str, float]]:
        redis = connect(stack)
        store = OnlineStore(redis)
        rows = []
        for k, p in enumerate(traffic.itertuples(index=False)):
            payment = Payment(payment_id=p.payment_id, timestamp=p.timestamp,
                              card_id=p.card_id, terminal_id=p.terminal_id, amount=p.amount,
                              currency="EUR", country=p.country,
                              merchant_category=p.merchant_category)
            obs = await store.observe(payment)
            if k % 97 == 0:  # the same payment again, no idempotency record: counted once
                again = await store.observe(payment)
                assert again.features == obs.features
            if k == n // 2:  # a back-fill of rows already there drops the aggregates
                await store.backfill([(p.payment_id, p.ts, p.card_id, p.terminal_id,
                                       p.amount, p.country, p.merchant_category)], [])
                assert not redis_db.exists(card_state_key(run))
            assert obs.features is not None
            rows.append(obs.features)
        await redis.aclose()
        return rows

    online = pd.DataFrame(asyncio.run(go()), columns=list(FEATURE_NAMES))
    offline = compute_features(traffic, labels)
    diff = (online != offline).any(axis=1)
    assert not diff.any(), f"{diff.sum()} payments differ, e.g.\n" + str(
        pd.concat({"online": online[diff].head(3), "offline": offline[diff].head(3)}).T)
    assert online["card_count_30d"].max() > 800  # busy: the window holds hundreds
    # The aggregates are there, and say what the last 30 days hold.
    newest = traffic["ts"].max()
    in_window = int(((traffic["ts"] > newest - 30 * DAY) & (traffic["ts"] <= newest)).sum())
    assert int(float(redis_db.hget(card_state_key(run), "n4"))) == in_window


def test_a_new_redis_is_warmed_from_the_history_and_one_in_use_is_left_alone(
        trained, stack, tmp_path, monkeypatch):
    """``up`` runs ``history backfill-online --if-empty``: a Redis that knows no card (new,
    flushed, or a switch to a Redis Cluster) gets the history; a store in use does not."""
    from fraudstream_dev import launcher as services
    from fraudstream_dev import testenv

    for name, value in testenv.isolated_env(tmp_path / "home", "fraudstream-warm").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FRAUDSTREAM_DATA_DIR", str(stack.history_dir))
    fresh = Settings()
    assert fresh.redis_url != stack.redis_url and fresh.history_dir == stack.history_dir
    services.start_redis(fresh)
    try:
        async def holds_cards() -> bool:
            redis = connect(fresh)
            try:
                return await OnlineStore(redis).holds_cards()
            finally:
                await redis.aclose()

        assert not asyncio.run(holds_cards())
        first = cli("history", "backfill-online", "--if-empty")
        assert first.exit_code == 0, first.output
        assert "online store warmed with" in first.output
        assert asyncio.run(holds_cards())
        again = cli("history", "backfill-online", "--if-empty")
        assert again.exit_code == 0, again.output
        assert "already in use" in again.output and "warmed" not in again.output
    finally:
        services.stop_redis(fresh)
