"""The online store (Redis) and the offline point-in-time computation give the same
features for the same sequence of payments and labels."""

import asyncio

import numpy as np
import pandas as pd
import pytest
from redis.asyncio import Redis

from model.features import FEATURE_NAMES
from model.online_store import OnlineStore, TerminalFraudUpdate
from model.point_in_time import compute_features
from model.schemas import Payment
from training.simulator import SimulationConfig, simulate

pytestmark = pytest.mark.integration


async def replay_online(redis_url: str, traffic: pd.DataFrame) -> pd.DataFrame:
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    store = OnlineStore(redis)
    labels = traffic[traffic["is_fraud"]].sort_values("label_reported_at")
    label_rows = list(labels.itertuples(index=False))
    nxt = 0
    rows = []
    for p in traffic.itertuples(index=False):
        # Labels reported before this payment have reached the stream processor by now.
        while nxt < len(label_rows) and label_rows[nxt].label_reported_at <= p.timestamp:
            lb = label_rows[nxt]
            await store.apply_terminal_label(TerminalFraudUpdate(
                lb.terminal_id, lb.payment_id, True, lb.label_reported_at.timestamp()))
            nxt += 1
        payment = Payment(payment_id=p.payment_id, timestamp=p.timestamp, card_id=p.card_id,
                          terminal_id=p.terminal_id, amount=p.amount, currency="EUR")
        rows.append(await store.observe_and_compute(payment))
    await redis.aclose()
    return pd.DataFrame(rows, columns=list(FEATURE_NAMES), index=traffic.index)


def test_online_features_equal_offline_features(stack):
    traffic = simulate(SimulationConfig(days=12, cards=120, terminals=15, seed=5,
                                        card_testing_rate=0.01, takeover_rate=0.01,
                                        compromised_terminals_per_day=0.4))
    assert traffic["is_fraud"].sum() > 20
    redis_url = stack.redis_url.rsplit("/", 1)[0] + "/3"
    online = asyncio.run(replay_online(redis_url, traffic))

    payments = traffic.assign(ts=traffic["timestamp"].map(lambda t: t.timestamp()))
    fraud = traffic[traffic["is_fraud"]]
    labels = pd.DataFrame({"payment_id": fraud["payment_id"], "is_fraud": True,
                           "reported_at": fraud["label_reported_at"].map(lambda t: t.timestamp())})
    offline = compute_features(payments, labels)

    assert online.shape == offline.shape == (len(traffic), len(FEATURE_NAMES))
    np.testing.assert_allclose(online.to_numpy(), offline.to_numpy(), rtol=1e-9, atol=1e-9)
    # The comparison is not vacuous: label-driven and window features do vary.
    assert offline["terminal_fraud_28d"].max() > 0
    assert offline["card_count_1h"].max() > 3
