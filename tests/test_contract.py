"""The scoring hook's contract: retries, authentication, card data, rules and lists, batch."""

import hashlib
import hmac
import json
import time

import pytest
from fastapi.testclient import TestClient

from api.main import serve_app
from model.schemas import Payment
from stores.online_features import card_key
from tests.conftest import eventually, history_row, payment, uid

pytestmark = pytest.mark.integration
PAN = "4111111111111111"


# ---- idempotency ---------------------------------------------------------------------
def test_a_retry_gets_the_first_answer_and_counts_once(api_client, stream_worker):
    first = payment()
    a = api_client.post("/v1/payments/score", json=first)
    b = api_client.post("/v1/payments/score", json=first)
    assert a.status_code == b.status_code == 200
    assert not a.json()["replay"] and b.json()["replay"]
    assert b.json() | {"replay": False} == a.json()
    nxt = payment(card_id=first["card_id"], timestamp="2026-11-20T10:01:00Z")
    assert api_client.post("/v1/payments/score", json=nxt).status_code == 200
    row = eventually(lambda: history_row(stream_worker, nxt["payment_id"]), 60)
    assert row["f_card_count_1h"] == 2.0  # the retry did not count
    assert row["f_card_count_1d"] == 2.0
    assert row["f_card_mean_amount_1d"] == 25.0


def test_same_payment_id_with_another_payload_is_409_and_changes_nothing(api_client,
                                                                          redis_db):
    first = payment()
    assert api_client.post("/v1/payments/score", json=first).status_code == 200
    other = first | {"amount": 999.0, "card_id": uid("card")}
    resp = api_client.post("/v1/payments/score", json=other)
    assert resp.status_code == 409
    assert first["payment_id"] in resp.json()["detail"]
    assert not redis_db.exists(card_key(other["card_id"]))


# ---- authentication ------------------------------------------------------------------
@pytest.fixture()
def bare_client(stream_worker, trained):
    with TestClient(serve_app(stream_worker)) as client:
        yield client


def test_missing_or_wrong_key_is_401_and_changes_nothing(bare_client, redis_db):
    body = payment()
    assert bare_client.post("/v1/payments/score", json=body).status_code == 401
    wrong = bare_client.post("/v1/payments/score", json=body,
                             headers={"X-API-Key": "fsk_not-a-key"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "unknown API key"
    assert not redis_db.exists(card_key(body["card_id"]))
    assert bare_client.get("/healthz").status_code == 200  # health needs no key


def test_a_key_without_the_scope_is_403(bare_client, api_keys):
    headers = {"X-API-Key": api_keys["scorer"][0]}
    assert bare_client.post("/v1/payments/score", json=payment(),
                            headers=headers).status_code == 200
    label = {"payment_id": "p", "is_fraud": True, "source": "analyst",
             "reported_at": "2026-11-21T10:00:00Z"}
    resp = bare_client.post("/v1/labels", json=label, headers=headers)
    assert resp.status_code == 403 and "labels" in resp.json()["detail"]
    assert bare_client.get("/v1/admin/rules", headers=headers).status_code == 403


def signed(secret, body: bytes, stamp=None, method="POST", path="/v1/payments/score",
           query=""):
    """The v2 signature, written out as a gateway's developer would from gateway.md."""
    stamp = int(time.time()) if stamp is None else stamp
    canonical = "\n".join([str(stamp), method, path, query,
                           hashlib.sha256(body).hexdigest()]).encode()
    mac = hmac.new(secret.encode(), canonical, hashlib.sha256)
    return f"t={stamp},v2={mac.hexdigest()}"


def signed_v1(secret, body: bytes):
    stamp = int(time.time())
    mac = hmac.new(secret.encode(), str(stamp).encode() + b"." + body, hashlib.sha256)
    return f"t={stamp},v1={mac.hexdigest()}"


def test_signing_keys_need_a_fresh_valid_signature(bare_client, api_keys, redis_db):
    key, secret = api_keys["signed"]
    body = json.dumps(payment()).encode()
    base = {"X-API-Key": key, "content-type": "application/json"}
    cases = {
        "missing": {},
        "expired": {"X-Signature": signed(secret, body, int(time.time()) - 3600)},
        "wrong body": {"X-Signature": signed(secret, body + b" ")},
        "garbled": {"X-Signature": "v2=abc"},
        "another path": {"X-Signature": signed(secret, body, path="/v1/labels")},
        "another method": {"X-Signature": signed(secret, body, method="PUT")},
        "v1, the body alone": {"X-Signature": signed_v1(secret, body)},
    }
    for name, extra in cases.items():
        resp = bare_client.post("/v1/payments/score", content=body, headers=base | extra)
        assert resp.status_code == 401, name
    assert "v1 (the body alone) is no longer accepted" in resp.json()["detail"]
    assert not redis_db.exists(card_key(json.loads(body)["card_id"]))
    good = base | {"X-Signature": signed(secret, body)}
    ok = bare_client.post("/v1/payments/score", content=body, headers=good)
    assert ok.status_code == 200, ok.text
    # A gateway's retry sends the same bytes, signature included: the first answer again.
    again = bare_client.post("/v1/payments/score", content=body, headers=good)
    assert again.status_code == 200 and again.json()["replay"] is True, again.text


def test_an_admin_signature_binds_its_request_and_is_good_once(bare_client, api_keys):
    key, secret = api_keys["signed_admin"]
    path = f"/v1/admin/lists/block/card_id/{uid('card')}"
    base = {"X-API-Key": key}
    read = signed(secret, b"", method="GET", path="/v1/admin/rules")
    # A captured signed GET is no signature for a DELETE of a list entry.
    resp = bare_client.delete(path, headers=base | {"X-Signature": read})
    assert resp.status_code == 401 and "does not match" in resp.json()["detail"]
    assert bare_client.get("/v1/admin/rules", headers=base | {"X-Signature": read}
                           ).status_code == 200
    # ... and the GET's own signature is spent.
    resp = bare_client.get("/v1/admin/rules", headers=base | {"X-Signature": read})
    assert resp.status_code == 401 and "already used" in resp.json()["detail"]
    put = base | {"X-Signature": signed(secret, b"", method="PUT", path=path)}
    assert bare_client.put(path, headers=put).status_code in (200, 201, 204)
    replayed = bare_client.put(path, headers=put)
    assert replayed.status_code == 401 and "already used" in replayed.json()["detail"]


def test_keys_never_reach_the_logs(bare_client, api_keys, caplog):
    key = api_keys["all"][0]
    bare_client.post("/v1/payments/score", json=payment(), headers={"X-API-Key": key})
    bare_client.post("/v1/payments/score", json=payment(), headers={"X-API-Key": key[:-2]})
    assert key not in caplog.text and key[:-2] not in caplog.text


# ---- amounts -------------------------------------------------------------------------
def test_a_zero_amount_card_verification_is_scored_and_recorded(api_client, stream_worker):
    check = payment(amount=0)
    resp = api_client.post("/v1/payments/score", json=check)
    assert resp.status_code == 200, resp.text
    assert resp.json()["score"] is not None and not resp.json()["degraded"]
    row = eventually(lambda: history_row(stream_worker, check["payment_id"]), 60)
    assert row["amount"] == 0.0
    assert api_client.post("/v1/payments/score",
                           json=payment(amount=-0.01)).status_code == 422


# ---- card data -----------------------------------------------------------------------
def test_a_pan_is_refused_and_reaches_no_log_topic_or_history(api_client, stream_worker,
                                                             caplog):
    as_card = payment(card_id=PAN)
    as_extra = payment() | {"pan": PAN}
    for body in (as_card, as_extra):
        resp = api_client.post("/v1/payments/score", json=body)
        assert resp.status_code == 422
        assert PAN not in resp.text  # not even echoed back
    assert "card_id" in json.dumps(api_client.post("/v1/payments/score",
                                                   json=as_card).json())
    # A payment sent after them is recorded; by then theirs would be too, if they were.
    sentinel = payment()
    api_client.post("/v1/payments/score", json=sentinel)
    eventually(lambda: history_row(stream_worker, sentinel["payment_id"]), 60)
    assert PAN not in caplog.text
    stream_log = (stream_worker.home / "logs" / "stream.log").read_text()
    assert PAN not in stream_log
    for path in stream_worker.history_dir.rglob("*.parquet"):
        assert PAN.encode() not in path.read_bytes()
    kafka_data = stream_worker.home / "kafka" / "data"
    for log_file in kafka_data.rglob("*.log"):
        assert PAN.encode() not in log_file.read_bytes()


# ---- rules and lists -----------------------------------------------------------------
def test_rules_and_lists_change_at_runtime_on_every_worker(stream_worker, trained,
                                                            api_keys):
    headers = {"X-API-Key": api_keys["all"][0]}
    with TestClient(serve_app(stream_worker), headers=headers) as one, \
            TestClient(serve_app(stream_worker), headers=headers) as two:
        card = uid("card")
        assert two.post("/v1/payments/score", json=payment(card_id=card)).json()[
            "decision"] != "decline"
        # a block list entry added through worker one applies to the next payment on two
        assert one.put(f"/v1/admin/lists/block/card_id/{card}",
                       json={"reason": "confirmed stolen"}).status_code == 200
        blocked = two.post("/v1/payments/score", json=payment(card_id=card)).json()
        assert blocked["decision"] == "decline"
        assert blocked["reasons"][0]["code"] == "blocklist_card_id"
        assert one.delete(f"/v1/admin/lists/block/card_id/{card}").status_code == 200
        assert two.post("/v1/payments/score", json=payment(card_id=card)).json()[
            "decision"] != "decline"

        rules = {"rules": [{"id": "big_amount", "action": "review",
                            "when": [{"feature": "amount", "op": ">=", "value": 5000}]}]}
        put = one.put("/v1/admin/rules", json=rules)
        assert put.status_code == 200
        version = put.json()["version"]

        def two_reviews():
            out = two.post("/v1/payments/score", json=payment(amount=7000.0)).json()
            return out["rules_version"] == version and out

        out = eventually(two_reviews, 10)
        assert out["decision"] in {"review", "decline"}
        assert "rule_big_amount" in [r["code"] for r in out["reasons"]]
        small = two.post("/v1/payments/score", json=payment(amount=20.0)).json()
        assert "rule_big_amount" not in [r["code"] for r in small["reasons"]]

        bad = one.put("/v1/admin/rules", json={"rules": [{"id": "x", "action": "review",
                      "when": [{"feature": "no_such_feature", "op": ">", "value": 1}]}]})
        assert bad.status_code == 422 and "no_such_feature" in bad.text
        assert one.get("/v1/admin/rules").json()["version"] == version  # unchanged
        audit = one.get("/v1/admin/audit").json()
        assert audit[0]["what"] == "rules" and audit[0]["actor"] == "all"
        assert card not in json.dumps(audit)
        one.put("/v1/admin/rules", json={"rules": []})


def test_an_analysts_rule_over_the_payments_fields_and_the_score_decides_live(api_client):
    rule = {"id": "ship_elsewhere", "action": "review", "priority": 5,
            "description": "e-commerce shipped to another country than billed",
            "when": [{"field": "payment.channel", "op": "==", "value": "ecom"},
                     {"field": "payment.shipping_country", "op": "!=",
                      "other": "payment.billing_country"},
                     {"not": {"field": "payment.three_ds", "op": "==",
                              "value": "authenticated"}},
                     {"field": "score", "op": ">=", "value": 0}]}
    try:
        put = api_client.put("/v1/admin/rules", json={"rules": [rule]})
        assert put.status_code == 200, put.text
        shown = api_client.get("/v1/admin/rules").json()
        assert shown["rules"] == [rule]  # as written: no empty fields of other forms

        def codes(**kw):
            out = api_client.post("/v1/payments/score", json=payment(**kw))
            assert out.status_code == 200, out.text
            return out.json()["decision"], [r["code"] for r in out.json()["reasons"]]

        ecom = {"channel": "ecom", "billing_country": "FR", "shipping_country": "BE"}
        decision, reasons = codes(**ecom)
        assert decision in {"review", "decline"} and "rule_ship_elsewhere" in reasons
        assert "rule_ship_elsewhere" not in codes(**ecom | {"shipping_country": "FR"})[1]
        assert "rule_ship_elsewhere" not in codes(**ecom | {"three_ds": "authenticated"})[1]
        assert "rule_ship_elsewhere" not in codes(channel="ecom")[1]  # no countries given

        version = shown["version"]
        bad = api_client.put("/v1/admin/rules", json={"rules": [
            rule | {"when": [{"field": "payment.channel", "op": ">", "value": "ecom"}]}]})
        assert bad.status_code == 422
        (error,) = bad.json()["detail"]
        assert error["loc"] == ["body", "rules", 0]
        assert "rule 'ship_elsewhere': when[0]: op '>' orders numbers" in error["msg"]
        assert api_client.get("/v1/admin/rules").json()["version"] == version  # unchanged
    finally:
        api_client.put("/v1/admin/rules", json={"rules": []})


def test_batch_scores_in_order_and_reports_item_errors(api_client, stream_worker):
    card = uid("card")
    items = [payment(card_id=card, timestamp=f"2026-11-20T10:0{i}:00Z") for i in range(3)]
    conflicting = items[0] | {"amount": 1.0}
    assert api_client.post("/v1/payments/score", json=items[0]).status_code == 200
    resp = api_client.post("/v1/payments/score/batch",
                           json={"payments": [*items, conflicting]})
    assert resp.status_code == 200
    results = resp.json()["results"]
    assert [r["payment_id"] for r in results] == [p["payment_id"] for p in
                                                  [*items, conflicting]]
    assert results[0]["result"]["replay"] is True
    assert results[3]["error"]["status"] == 409
    last = eventually(lambda: history_row(stream_worker, items[2]["payment_id"]), 60)
    assert last["f_card_count_1h"] == 3.0
    too_many = api_client.post("/v1/payments/score/batch",
                               json={"payments": [payment() for _ in range(501)]})
    assert too_many.status_code == 422


def test_openapi_documents_the_contract(api_client):
    spec = api_client.app.app.openapi()  # built in-process: the pages are closed by default
    score = spec["paths"]["/v1/payments/score"]["post"]
    assert score["requestBody"]["content"]["application/json"]["schema"]["$ref"] \
        == "#/components/schemas/Payment"
    assert any(p["name"] == "X-Deadline-Ms" for p in score["parameters"])
    assert {"401", "403", "409", "422"} <= set(score["responses"])
    schemas = spec["components"]["schemas"]
    assert schemas["Payment"]["examples"][0]["payment_id"]
    # a POS payment, and an ecom one with every optional field; both valid
    pos, ecom = schemas["Payment"]["examples"]
    assert pos["channel"] == "pos" and ecom["channel"] == "ecom"
    assert set(ecom) == set(schemas["Payment"]["properties"])
    for example in (pos, ecom):
        Payment.model_validate(example)
    for name in ("ip", "email", "card_bin", "three_ds", "entry_mode", "customer_id"):
        assert name in schemas["Payment"]["properties"], name
    assert "replay" in schemas["ScoreResponse"]["properties"]
    for path in ("/v1/payments/score/batch", "/v1/labels", "/v1/admin/rules",
                 "/v1/admin/lists/{kind}/{entity}/{value}", "/v1/admin/audit"):
        assert path in spec["paths"], path


def test_the_schema_pages_are_closed_unless_an_operator_opens_them(api_client, stream_worker):
    from api.main import create_app

    for page in ("/docs", "/redoc", "/openapi.json"):
        assert api_client.get(page).status_code == 404, page
    opened = TestClient(create_app(stream_worker.model_copy(update={"docs_public": True})))
    assert opened.get("/docs").status_code == 200
    assert "/v1/payments/score" in opened.get("/openapi.json").json()["paths"]


def test_metrics_need_a_metrics_key_unless_public(bare_client, api_keys, stream_worker):
    assert bare_client.get("/metrics").status_code == 401
    scorer = {"X-API-Key": api_keys["scorer"][0]}
    resp = bare_client.get("/metrics", headers=scorer)
    assert resp.status_code == 403 and "'metrics' scope" in resp.json()["detail"]
    ok = bare_client.get("/metrics", headers={"X-API-Key": api_keys["all"][0]})
    assert ok.status_code == 200 and "fraudstream_decisions_total" in ok.text
    with TestClient(serve_app(stream_worker.model_copy(update={"metrics_public": True}))) as c:
        assert c.get("/metrics").status_code == 200


def test_the_models_thresholds_are_for_admin_keys_only(bare_client, api_keys):
    seen = bare_client.get("/v1/model", headers={"X-API-Key": api_keys["scorer"][0]})
    assert seen.status_code == 200 and "thresholds" not in seen.json()
    assert seen.json()["version"] and "metrics" in seen.json()
    admin = bare_client.get("/v1/model", headers={"X-API-Key": api_keys["all"][0]})
    assert admin.json()["thresholds"]
