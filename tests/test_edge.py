"""The served scoring route (``api.edge.ScoringEdge``) and the FastAPI route it stands in
for answer alike; the edge also bounds the body."""

import json

import pytest
from fastapi.testclient import TestClient

from api.main import create_app, serve_app
from model.schemas import looks_like_pan
from stores.online_features import card_key
from tests.conftest import payment, uid

pytestmark = pytest.mark.integration
PAN = "4111111111111111"


def _alike(answer):
    body = answer.json()
    if isinstance(body, dict):
        body.pop("latency_ms", None)
        body.pop("payment_id", None)
    return answer.status_code, answer.headers.get("www-authenticate"), body


def test_the_edge_and_the_fastapi_route_answer_alike(stream_worker, trained, api_keys,
                                                     redis_db):
    key = api_keys["all"][0]
    with TestClient(create_app(stream_worker)) as route, \
            TestClient(serve_app(stream_worker)) as edge:
        cases = {
            "no key": ({}, payment()),
            "unknown key": ({"X-API-Key": "fsk_nope"}, payment()),
            "signed key, no signature": ({"X-API-Key": api_keys["signed"][0]}, payment()),
            "a PAN": ({"X-API-Key": key}, payment(card_id=PAN)),
            "bad deadline": ({"X-API-Key": key, "X-Deadline-Ms": "0"}, payment()),
            "missing field": ({"X-API-Key": key}, {"payment_id": "p"}),
        }
        for name, (headers, body) in cases.items():
            a = route.post("/v1/payments/score", json=body, headers=headers)
            b = edge.post("/v1/payments/score", json=body, headers=headers)
            assert a.status_code >= 400, name
            assert _alike(a) == _alike(b), name
            assert PAN not in b.text
            assert b.headers["content-type"] == "application/json"
        # the same payment (two ids) scored by each: the same answer
        # (fresh card and terminal each, so that their features are the same)
        body = payment(amount=412.5, terminal_id=uid("term"))
        twin = body | {"payment_id": body["payment_id"] + "_twin",
                       "card_id": body["card_id"] + "_twin",
                       "terminal_id": body["terminal_id"] + "_twin"}
        a = route.post("/v1/payments/score", json=body, headers={"X-API-Key": key})
        b = edge.post("/v1/payments/score", json=twin, headers={"X-API-Key": key})
        assert a.status_code == b.status_code == 200
        assert _alike(a) == _alike(b)
        # and a retry through the other adapter is a replay of the first answer
        again = edge.post("/v1/payments/score", json=body, headers={"X-API-Key": key})
        assert again.json()["replay"] and again.json()["score"] == a.json()["score"]


def test_an_oversized_body_is_413_and_changes_nothing(api_client, redis_db):
    body = payment() | {"metadata": "x" * 70_000}
    resp = api_client.post("/v1/payments/score", content=json.dumps(body),
                           headers={"content-type": "application/json"})
    assert resp.status_code == 413 and "larger than" in resp.json()["detail"]
    assert not redis_db.exists(card_key(body["card_id"]))


# ---- the card-not-present details, pseudonymised at the edge --------------------------
RAW_EMAIL = "Jane.Doe+shop@Example.COM"
RAW_IP = "203.0.113.42"
RAW_IP6 = "2001:db8:85a3::8a2e:370:7334"


def every_detail(**kw):
    """An ecom payment with every optional field, e-mail and IP raw."""
    return payment(channel="ecom", country="FR", merchant_category="5732",
                   customer_id=uid("cust"), device_id=uid("dev"), ip=RAW_IP, email=RAW_EMAIL,
                   card_bin="411111", billing_country="FR", shipping_country="BE",
                   merchant_id=uid("merch"), three_ds="authenticated",
                   entry_mode="ecommerce") | kw


def redis_contents(client) -> bytes:
    """Every key and value of the test Redis (all primaries of a cluster), as one text."""
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            value = [client.get(key)]
        elif kind == "hash":
            value = [x for kv in client.hgetall(key).items() for x in kv]
        elif kind == "zset":
            value = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "set":
            value = list(client.smembers(key))
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "stream":
            value = [x for _, fields in client.xrange(key) for kv in fields.items()
                     for x in kv]
        else:
            value = []
        out += [key, *(v for v in value if v is not None)]
    return b"\n".join(v if isinstance(v, bytes) else str(v).encode() for v in out)


def scored_messages(settings, *payment_ids: str) -> bytes:
    """The raw messages of the module's scored topic, read until every one of ``payment_ids``
    is in them: the topic's partitions are fetched apart (on three brokers, from three), so
    one payment's message says nothing of another's."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    async def go() -> bytes:
        consumer = AIOKafkaConsumer(settings.topic_scored,
                                    bootstrap_servers=settings.kafka_bootstrap,
                                    auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        try:
            seen: list[bytes] = []
            for _ in range(60):
                got = await consumer.getmany(timeout_ms=1000)
                seen += [m.value for msgs in got.values() for m in msgs]
                if all(any(p.encode() in v for v in seen) for p in payment_ids):
                    break
            return b"\n".join(seen)
        finally:
            await consumer.stop()

    return asyncio.run(go())


def test_a_payment_with_every_detail_scores_and_only_its_tokens_are_kept(
        api_client, stream_worker, redis_db):
    from model.pseudonym import email_token, ip_prefix_of, ip_token
    from stores import pii_key
    from tests.conftest import eventually, history_row

    key = pii_key.load(stream_worker)  # the one the API generated in the shared secrets
    body = every_detail()
    resp = api_client.post("/v1/payments/score", json=body)
    assert resp.status_code == 200, resp.text
    assert not resp.json()["degraded"]
    v6 = every_detail(ip=RAW_IP6, email=" jane.doe+SHOP@example.com ")
    assert api_client.post("/v1/payments/score", json=v6).status_code == 200
    # the batch route pseudonymises too
    batched = every_detail(ip="198.51.100.7", email="batch.buyer@example.org")
    out = api_client.post("/v1/payments/score/batch", json={"payments": [batched]})
    assert out.status_code == 200 and out.json()["results"][0]["result"], out.text

    email, ip, ip6 = email_token(key, RAW_EMAIL), ip_token(key, RAW_IP), ip_token(key, RAW_IP6)
    row = eventually(lambda: history_row(stream_worker, body["payment_id"]), 60)
    assert (row["email"], row["ip"]) == (email, ip)
    for name in ("customer_id", "device_id", "card_bin", "billing_country",
                 "shipping_country", "merchant_id", "three_ds", "entry_mode"):
        assert row[name] == body[name], name
    row6 = eventually(lambda: history_row(stream_worker, v6["payment_id"]), 60)
    assert row6["email"] == email  # the same address, in another case and with spaces
    assert row6["ip"] == ip6 and ip_prefix_of(row6["ip"]) != ip_prefix_of(ip)
    row_b = eventually(lambda: history_row(stream_worker, batched["payment_id"]), 60)
    assert row_b["email"] == email_token(key, "batch.buyer@example.org")

    raws = [RAW_EMAIL, RAW_EMAIL.lower(), "jane.doe+SHOP", RAW_IP, RAW_IP6,
            "batch.buyer@example.org", "198.51.100.7"]
    kafka = scored_messages(stream_worker, body["payment_id"], v6["payment_id"],
                            batched["payment_id"])
    assert email.encode() in kafka and ip.encode() in kafka and ip6.encode() in kafka
    from stores.history import HistoryStore

    history = HistoryStore(stream_worker.history_dir).query(
        "SELECT * FROM payments_raw WHERE email IS NOT NULL OR ip IS NOT NULL")
    text = history.astype(str).to_csv().lower()
    assert email in text and ip in text
    files = b"".join(p.read_bytes() for p in stream_worker.history_dir.rglob("*.parquet"))
    stores = {"redis": redis_contents(redis_db).lower(), "kafka": kafka.lower(),
              "history": text.encode(), "history files": files.lower(),
              "spool": b"".join(p.read_bytes() for p in stream_worker.spool_dir.rglob("*")
                                if p.is_file()).lower()}
    assert body["card_id"].lower().encode() in stores["redis"]  # not vacuous: it was read
    for where, content in stores.items():
        for raw in raws:
            assert raw.lower().encode() not in content, (where, raw)


@pytest.mark.parametrize(("field", "value"), [
    ("ip", "203.0.113"), ("ip", "fe80::1%eth0"), ("ip", "ip_notatoken"),
    ("email", "no-at-sign.example.com"), ("email", "two@@example.com"),
    ("email", "jane@localhost"), ("email", "jane doe@example.com"), ("email", "@example.com"),
    ("email", "x" * 250 + "@ex.com"), ("card_bin", "41111"), ("card_bin", "4111111111"),
    ("card_bin", "41111a"), ("three_ds", "yes"), ("entry_mode", "tap"),
    ("billing_country", "fr"), ("shipping_country", "FRA"),
    ("customer_id", PAN), ("device_id", PAN), ("merchant_id", "4111-1111-1111-1111"),
    ("payment_id", "4111.1111.1111.1111"), ("terminal_id", "4111_1111_1111_1111"),
    ("card_id", "4111.1111.1111.1111"), ("email", f"{PAN}@example.com"),
])
def test_bad_details_are_422_naming_the_field_never_echoing_it(api_client, field, value):
    resp = api_client.post("/v1/payments/score", json=every_detail(**{field: value}))
    assert resp.status_code == 422, (field, value)
    detail = resp.json()["detail"]
    assert [e["loc"] for e in detail] == [["body", field]], detail
    assert value not in resp.text
    if looks_like_pan(value.split("@")[0]):
        assert "raw card number (PAN)" in detail[0]["msg"], detail


def test_a_bad_detail_in_a_batch_is_422_naming_it(api_client):
    resp = api_client.post("/v1/payments/score/batch",
                           json={"payments": [every_detail(), every_detail(ip="999.1.1.1")]})
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "payments", 1, "ip"]


# ---- the pseudonyms and their key (no servers) ---------------------------------------
def test_the_same_email_gives_the_same_token_and_another_key_another():
    from model.pseudonym import email_token, ip_token, pseudonymise
    from model.schemas import Payment

    key, other = b"k" * 32, b"o" * 32
    assert email_token(key, " Jane.Doe@Example.com\t") == email_token(key, "jane.doe@example.com")
    assert email_token(key, "jane@example.com") != email_token(key, "june@example.com")
    assert email_token(key, "jane@example.com") != email_token(other, "jane@example.com")
    assert ip_token(key, "2001:DB8::1") == ip_token(key, "2001:db8:0::1")
    assert ip_token(key, "::ffff:" + RAW_IP) == ip_token(key, RAW_IP)  # one host, one token
    assert ip_token(key, RAW_IP) != ip_token(other, RAW_IP)
    # the network part names the /24: a neighbour shares it, another network does not
    assert ip_token(key, "203.0.113.9").split(".")[0] == ip_token(key, RAW_IP).split(".")[0]
    assert ip_token(key, "203.0.114.9").split(".")[0] != ip_token(key, RAW_IP).split(".")[0]

    plain = Payment.model_validate(payment())
    assert pseudonymise(plain, key) is plain  # today's payments: untouched, not copied
    raw = Payment.model_validate(every_detail())
    done = pseudonymise(raw, key)
    assert (done.email, done.ip) == (email_token(key, RAW_EMAIL), ip_token(key, RAW_IP))
    assert raw.email == RAW_EMAIL  # the caller's object is left as it was
    assert pseudonymise(done, other) is done  # a token is never hashed again
    # a token is a valid value: what the spool and a replay of the history send again
    assert Payment.model_validate(done.model_dump()).email == done.email


def test_the_key_is_generated_once_owner_only_or_taken_from_configuration(tmp_path, caplog):
    import os
    import stat
    from concurrent.futures import ThreadPoolExecutor

    from model.config import Settings
    from stores import pii_key

    settings = Settings(home=tmp_path / "home")
    with ThreadPoolExecutor(8) as pool:  # API workers starting together
        keys = set(pool.map(lambda _: pii_key.load(settings), range(16)))
    assert len(keys) == 1
    (key,) = keys
    path = settings.pii_key_file
    assert path == tmp_path / "home" / "secrets" / "pii.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["pii.key"]  # no temporary left
    assert len(key) >= 32 and pii_key.load(Settings(home=tmp_path / "home")) == key
    assert key.decode() not in caplog.text
    configured = Settings(home=tmp_path / "home", pii_key="a-configured-key-0123456789")
    assert pii_key.load(configured) == b"a-configured-key-0123456789"
    assert "a-configured" not in repr(configured)
    with pytest.raises(pii_key.PiiKeyError) as short:
        pii_key.load(Settings(home=tmp_path / "home", pii_key="tiny-secret"))
    assert "tiny-secret" not in str(short.value)
    os.chmod(path, 0o644)
    pii_key.load(settings)
    assert "readable by others" in caplog.text
