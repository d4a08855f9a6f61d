"""The loop end to end on the real Kafka, Redis and stream worker: score over HTTP, record,
label, retrain, hot-reload."""

import asyncio
import threading
import time
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer

from model.registry import Registry
from model.schemas import Label, Payment, ScoredPayment
from stores.events import encode, encode_batch, key_of
from stores.history import HistoryStore
from stores.label_join import pending_key
from stores.online_features import card_key, terminal_fraud_known_key
from tests.conftest import eventually, history_row, payment, uid
from training.train import TrainConfig, train

pytestmark = pytest.mark.integration


# The simulated history of the fixtures ends on 2026-10-01; its test window ends there.
SMALL_HISTORY_LABELS_MATURE = datetime(2026, 10, 6, tzinfo=UTC).timestamp()


def raw_count(settings, payment_id):
    return int(HistoryStore(settings.history_dir).query(
        "SELECT count(*) AS n FROM payments_raw WHERE payment_id = ?", [payment_id])["n"][0])


def test_scored_payment_is_recorded_with_its_feature_vector(api_client, stream_worker, trained):
    body = payment()
    first = api_client.post("/v1/payments/score", json=body)
    assert first.status_code == 200, first.text
    out = first.json()
    assert out["decision"] in {"approve", "review", "decline"}
    assert out["model_version"] == trained and not out["degraded"]
    assert 0.0 <= out["score"] <= 1.0
    second = api_client.post("/v1/payments/score",
                             json=body | {"payment_id": uid("pay"), "amount": 75.0,
                                          "timestamp": "2026-11-20T10:05:00Z"})
    assert second.status_code == 200

    row = eventually(lambda: history_row(stream_worker, second.json()["payment_id"]), 60)
    assert row["source"] == "api"
    assert row["model_version"] == trained
    assert row["score"] == pytest.approx(second.json()["score"])
    assert row["decision"] == second.json()["decision"]
    # the exact vector used: the card's second payment, 5 minutes after its first
    assert row["f_card_count_1h"] == 2.0
    assert row["f_card_mean_amount_1d"] == 50.0
    assert row["f_card_secs_since_prev"] == 300.0
    assert row["f_amount"] == 75.0
    # the first payment may be on another partition, recorded a batch later: once, though
    eventually(lambda: raw_count(stream_worker, body["payment_id"]) == 1, 60)
    assert raw_count(stream_worker, body["payment_id"]) == 1


@pytest.mark.parametrize(("field", "value"), [
    ("amount", -5), ("currency", "euro"), ("timestamp", "not-a-time"),
    ("card_id", "4111111111111111"), ("channel", "fax"),
])
def test_bad_payload_gets_422_naming_the_field_and_changes_nothing(
        api_client, stream_worker, redis_db, field, value):
    bad = payment() | {field: value}
    keys_before = redis_db.dbsize()
    resp = api_client.post("/v1/payments/score", json=bad)
    assert resp.status_code == 422
    assert any(err["loc"][-1] == field for err in resp.json()["detail"])
    assert redis_db.dbsize() == keys_before
    assert not redis_db.exists(card_key(bad["card_id"]))
    # A valid payment sent after it is recorded; the bad one never is.
    good = payment()
    assert api_client.post("/v1/payments/score", json=good).status_code == 200
    eventually(lambda: history_row(stream_worker, good["payment_id"]) is not None, 60)
    assert raw_count(stream_worker, bad["payment_id"]) == 0


def test_missing_field_is_named(api_client):
    body = payment()
    del body["terminal_id"]
    resp = api_client.post("/v1/payments/score", json=body)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "terminal_id"]


def test_label_joins_its_payment_and_raises_terminal_and_card_risk_for_later_payments(
        api_client, stream_worker, redis_db):
    terminal, card = uid("term"), uid("card")
    a = payment(terminal_id=terminal, card_id=card, ts="2026-11-01T08:00:00Z")
    assert api_client.post("/v1/payments/score", json=a).status_code == 200
    label = {"payment_id": a["payment_id"], "is_fraud": True, "source": "chargeback",
             "reported_at": "2026-11-01T09:00:00Z"}
    resp = api_client.post("/v1/labels", json=label)
    assert resp.status_code == 202, resp.text
    eventually(lambda: redis_db.zscore(terminal_fraud_known_key(terminal), a["payment_id"]), 60)

    # Scored before the label was reported: must not see it (event time).
    early = payment(terminal_id=terminal, card_id=card, ts="2026-11-01T08:30:00Z")
    soon = payment(terminal_id=terminal, card_id=card, ts="2026-11-01T10:00:00Z")
    # A week and 4 hours on, the first three are in the matured 1-day window (8 to 7 days
    # ago), one of them fraud; and its fraud is no longer "reported in the last 7 days".
    matured = payment(terminal_id=terminal, card_id=card, ts="2026-11-08T12:00:00Z")
    for p in (early, soon, matured):
        assert api_client.post("/v1/payments/score", json=p).status_code == 200
    rows = [eventually(lambda p=p: history_row(stream_worker, p["payment_id"]), 60)
            for p in (early, soon, matured)]
    assert [r["f_terminal_fraud_fresh_7d"] for r in rows] == [0.0, 1.0, 0.0]
    assert [r["f_card_fraud_known_30d"] for r in rows] == [0.0, 1.0, 1.0]
    assert [r["f_terminal_risk_1d"] for r in rows] == [0.0, 0.0, pytest.approx(1 / 3)]
    assert rows[2]["f_terminal_count_1d"] == 3.0

    labels = HistoryStore(stream_worker.history_dir).query(
        "SELECT * FROM labels WHERE payment_id = ?", [a["payment_id"]])
    assert list(labels["source"]) == ["chargeback"] and bool(labels["is_fraud"][0])


def test_label_arriving_before_its_payment_is_applied_when_the_payment_comes(
        api_client, stream_worker, redis_db):
    terminal = uid("term")
    p = payment(terminal_id=terminal)
    label = {"payment_id": p["payment_id"], "is_fraud": True, "source": "analyst",
             "reported_at": "2026-11-21T09:00:00Z"}
    assert api_client.post("/v1/labels", json=label).status_code == 202
    eventually(lambda: redis_db.exists(pending_key(p['payment_id'])), 60)
    assert not redis_db.exists(terminal_fraud_known_key(terminal))
    assert api_client.post("/v1/payments/score", json=p).status_code == 200
    eventually(lambda: redis_db.zscore(terminal_fraud_known_key(terminal), p["payment_id"]), 60)


def test_bad_label_gets_422(api_client):
    resp = api_client.post("/v1/labels", json={"payment_id": "p", "is_fraud": "sometimes",
                                               "source": "chargeback",
                                               "reported_at": "2026-11-21T09:00:00Z"})
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "is_fraud"]


def test_labels_topic_accepts_labels_directly_and_redelivery_records_once(stream_worker):
    p = Payment(**payment())
    event = ScoredPayment(payment=p, features={"amount": 25.0}, score=0.1, decision="approve",
                          model_version="vtest", scored_at="2026-11-20T10:00:00Z")
    label = Label(payment_id=p.payment_id, is_fraud=False, source="customer_report",
                  reported_at="2026-11-22T10:00:00Z")

    async def produce(*events):
        producer = AIOKafkaProducer(bootstrap_servers=stream_worker.kafka_bootstrap)
        await producer.start()
        try:
            for ev in events:
                topic = (stream_worker.topic_scored if isinstance(ev, ScoredPayment)
                         else stream_worker.topic_labels)
                await producer.send_and_wait(topic, encode(ev), key=key_of(ev))
        finally:
            await producer.stop()

    asyncio.run(produce(event, label))
    eventually(lambda: history_row(stream_worker, p.payment_id) is not None, 60)
    # The same event again, after it was recorded, e.g. redelivered after a restart.
    asyncio.run(produce(event))
    sentinel = ScoredPayment(payment=Payment(**payment()), features={}, score=None,
                             decision="review", model_version=None, degraded=True,
                             scored_at="2026-11-20T10:00:00Z")
    asyncio.run(produce(sentinel))
    eventually(lambda: history_row(stream_worker, sentinel.payment.payment_id) is not None, 60)
    assert raw_count(stream_worker, p.payment_id) == 1
    labels = HistoryStore(stream_worker.history_dir).query(
        "SELECT * FROM labels WHERE payment_id = ?", [p.payment_id])
    assert len(labels) == 1 and labels["source"][0] == "customer_report"


def test_malformed_events_go_to_dead_letters_and_do_not_stop_the_stream(stream_worker):
    from aiokafka import AIOKafkaConsumer

    good = Label(payment_id=uid("pay"), is_fraud=True, source="analyst",
                 reported_at="2026-11-21T10:00:00Z")
    # a batch of scored payments with one bad event: the good one is still recorded
    scored = ScoredPayment(payment=Payment(**payment()), features={}, score=None,
                           decision="review", model_version=None, degraded=True,
                           scored_at="2026-11-20T10:00:00Z")
    bad_event = b'{"payment":{"payment_id":"x"}}'

    async def run():
        producer = AIOKafkaProducer(bootstrap_servers=stream_worker.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(stream_worker.topic_labels, b"{not json")
            await producer.send_and_wait(stream_worker.topic_labels,
                                         b'{"payment_id": "x", "is_fraud": "perhaps"}')
            await producer.send_and_wait(stream_worker.topic_scored, b"[]")  # empty: fine
            await producer.send_and_wait(stream_worker.topic_scored,
                                         encode_batch([encode(scored), bad_event]))
            await producer.send_and_wait(stream_worker.topic_labels, encode(good),
                                         key=key_of(good))
        finally:
            await producer.stop()

    asyncio.run(run())
    store = HistoryStore(stream_worker.history_dir)
    eventually(lambda: len(store.query("SELECT * FROM labels WHERE payment_id = ?",
                                       [good.payment_id])) == 1, 60)
    eventually(lambda: history_row(stream_worker, scored.payment.payment_id) is not None, 60)

    async def dead_letters():
        consumer = AIOKafkaConsumer(stream_worker.topic_dead_letters,
                                    bootstrap_servers=stream_worker.kafka_bootstrap,
                                    auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        try:
            batches = await consumer.getmany(timeout_ms=5000)
            return sorted(m.value for msgs in batches.values() for m in msgs)
        finally:
            await consumer.stop()

    expected = sorted([b"{not json", b'{"payment_id": "x", "is_fraud": "perhaps"}', bad_event])
    # The two topics' agents dead-letter independently: wait for all three, not the first.
    assert eventually(lambda: asyncio.run(dead_letters()) == expected, 30)


def test_retraining_promotes_a_model_the_running_api_then_uses(api_client, stream_worker,
                                                               trained):
    registry = Registry(stream_worker.models_dir)
    assert api_client.get("/healthz").json()["model_version"] == trained
    result = train(HistoryStore(stream_worker.history_dir), registry,
                   TrainConfig(test_days=7, maturity_days=5, max_iter=40, force=True,
                               baselines=False, cutoff=SMALL_HISTORY_LABELS_MATURE))
    assert result.promoted and result.version != trained
    eventually(lambda: api_client.get("/healthz").json()["model_version"] == result.version, 30)
    scored = api_client.post("/v1/payments/score", json=payment()).json()
    assert scored["model_version"] == result.version
    assert api_client.get("/v1/model").json()["version"] == result.version

    # Swapping models back and forth under traffic fails no request.
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            for version in (trained, result.version):
                registry.promote(version)
                stop.wait(0.3)

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        seen: set[str] = set()
        sent, deadline = 0, time.monotonic() + 20
        while (sent < 150 or len(seen) < 2) and time.monotonic() < deadline:
            sent += 1
            resp = api_client.post("/v1/payments/score", json=payment())
            assert resp.status_code == 200
            assert not resp.json()["degraded"]
            seen.add(resp.json()["model_version"])
    finally:
        stop.set()
        flipper.join()
    assert seen == {trained, result.version}


def test_timestamps_in_the_future_are_refused(api_client, redis_db):
    far = payment(ts="2099-01-01T00:00:00Z")
    resp = api_client.post("/v1/payments/score", json=far)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "timestamp"]
    assert "future" in resp.json()["detail"][0]["msg"]
    assert not redis_db.exists(card_key(far["card_id"]))
    label = {"payment_id": "p", "is_fraud": True, "source": "analyst",
             "reported_at": "2099-01-01T00:00:00Z"}
    resp = api_client.post("/v1/labels", json=label)
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["body", "reported_at"]
