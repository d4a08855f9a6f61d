"""Hostile input at the API: each request a valid key can send that once reached a 500, got
stored, or broke something for later callers is a 4xx now, naming what is wrong, and
changes nothing."""

import json

import pytest

from tests.conftest import payment, uid

pytestmark = pytest.mark.integration
PAN = "4111111111111111"


def refused(resp, *loc: str | int) -> str:
    """The message of a 422 whose one error is at ``loc``; the request's value not echoed."""
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert [tuple(e["loc"]) for e in detail] == [loc], detail
    return str(detail[0]["msg"])


def test_a_rule_with_nan_is_refused_and_the_rule_set_stays_readable(api_client):
    before = api_client.get("/v1/admin/rules")
    assert before.status_code == 200
    body = ('{"rules": [{"id": "nan_rule", "action": "review", '
            '"when": [{"feature": "amount", "op": ">", "value": NaN}]}]}')
    for literal in ("NaN", "Infinity", "-Infinity"):
        resp = api_client.put("/v1/admin/rules", content=body.replace("NaN", literal),
                              headers={"Content-Type": "application/json"})
        msg = refused(resp, "body", "rules", 0)
        assert msg.startswith("Value error, rule 'nan_rule': when[0].value: Input should be a "
                              "finite number"), msg
    after = api_client.get("/v1/admin/rules")
    assert after.status_code == 200 and after.json() == before.json()


def test_a_rule_description_holding_a_pan_is_refused(api_client):
    rules = {"rules": [{"id": "r1", "action": "review", "description": f"seen on {PAN}",
                        "when": [{"feature": "amount", "op": ">", "value": 100}]}]}
    before = api_client.get("/v1/admin/rules").json()
    msg = refused(api_client.put("/v1/admin/rules", json=rules), "body", "rules", 0)
    assert "rule 'r1': description:" in msg and "raw card number" in msg
    assert api_client.get("/v1/admin/rules").json() == before


@pytest.mark.parametrize("count", ["-1", "0", "1000001", "many"])
def test_an_audit_count_out_of_range_is_422(api_client, count):
    # (the review queue's audit had its bounds already)
    refused(api_client.get("/v1/admin/audit", params={"count": count}), "query", "count")
    assert api_client.get("/v1/admin/audit", params={"count": 5}).status_code == 200


@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00+01:00", "1970-01-02T00:00:00Z",
                                       "1999-12-31T23:59:59Z", "9999-12-31T23:00:00-05:00"])
def test_an_event_time_out_of_any_payments_years_is_422_and_leaves_the_id_free(
        api_client, timestamp):
    body = payment(ts=timestamp)
    assert "2000-01-01" in refused(api_client.post("/v1/payments/score", json=body),
                                   "body", "timestamp")
    # nothing was kept under the id: the same payment with a real time is scored, not a 409
    ok = api_client.post("/v1/payments/score", json=body | {"timestamp": "2026-11-20T10:00:00Z"})
    assert ok.status_code == 200, ok.text


def test_a_label_out_of_any_years_is_422(api_client):
    label = {"payment_id": uid("pay"), "is_fraud": True, "source": "chargeback",
             "reported_at": "0001-01-01T00:00:00+01:00"}
    refused(api_client.post("/v1/labels", json=label), "body", "reported_at")


def test_merchant_category_digits_are_ascii(api_client):
    arabic = "\u0661\u0662\u0663\u0664"
    refused(api_client.post("/v1/payments/score", json=payment(merchant_category=arabic)),
            "body", "merchant_category")


@pytest.mark.parametrize(("field", "value"), [
    ("card_id", f"card_{PAN}"), ("terminal_id", "term:4111-1111-1111-1111"),
    ("payment_id", "pay_" + "\uff14" + "\uff11" * 15)])
def test_a_pan_inside_an_identifier_is_refused(api_client, field, value):
    resp = api_client.post("/v1/payments/score", json=payment(**{field: value}))
    if field == "payment_id":  # full-width digits fail the identifier's pattern first
        assert resp.status_code == 422 and value not in resp.text
        return
    assert "raw card number" in refused(resp, "body", field)
    assert PAN not in resp.text


@pytest.mark.parametrize("field", ["note", "analyst", "payment_id"])
def test_a_label_holding_a_pan_is_refused(api_client, field):
    label = {"payment_id": uid("pay"), "is_fraud": True, "source": "chargeback",
             "reported_at": "2026-11-21T10:00:00Z"}
    label[field] = f"{field}_{PAN}" if field == "payment_id" else f"card {PAN} called in"
    resp = api_client.post("/v1/labels", content=json.dumps(label),
                           headers={"Content-Type": "application/json"})
    assert "raw card number" in refused(resp, "body", field)
    assert PAN not in resp.text


def asgi_post(client, path: str, chunks: list[bytes], headers: dict[str, str]):
    """POST ``chunks`` straight to the client's ASGI app, on its event loop, as a server
    streams them: returns the status, the answer, and how many chunks the app asked for."""
    import asyncio

    app = client.app

    read = {"n": 0}

    async def receive():
        if read["n"] < len(chunks):
            read["n"] += 1
            return {"type": "http.request", "body": chunks[read["n"] - 1],
                    "more_body": read["n"] < len(chunks)}
        await asyncio.sleep(3600)  # the caller stays: no disconnect to read

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "server": ("testserver", 80), "client": ("127.0.0.1", 1),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    async def call():
        await asyncio.wait_for(app(scope, receive, send), 30)

    client.portal.call(call)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), read["n"]


MIB = [b"x" * (1 << 20)] * 20  # 20 MiB, in 1 MiB chunks


@pytest.mark.parametrize("path", ["/v1/labels", "/v1/payments/score",
                                  "/v1/payments/score/batch", "/v1/admin/rules",
                                  "/v1/reviews/p1/verdict"])
def test_a_big_body_without_a_key_is_refused_before_a_byte_is_read(api_client, path):
    client = api_client
    status, answer, read = asgi_post(client, path, MIB, {"content-length": str(20 << 20)})
    assert (status, read) == (401, 0), answer
    assert answer["detail"] == "missing X-API-Key header"
    status, answer, read = asgi_post(client, path, MIB, {"x-api-key": "fsk_guessed"})
    assert (status, read) == (401, 0) and answer["detail"] == "unknown API key"


@pytest.mark.parametrize(("path", "limit"), [("/v1/labels", 16 << 10),
                                             ("/v1/payments/score", 64 << 10),
                                             ("/v1/payments/score/batch", 1 << 20),
                                             ("/v1/admin/lists/block/card_id/c1", 16 << 10)])
def test_a_body_over_its_routes_limit_is_413_declared_or_streamed(api_client, path, limit):
    from api.edge import body_limit

    assert body_limit(path) == limit
    key = api_client.headers["X-API-Key"]
    client = api_client
    status, answer, read = asgi_post(client, path, MIB, {"x-api-key": key,
                                                      "content-length": str(20 << 20)})
    assert (status, read) == (413, 0), answer
    assert answer["detail"] == f"request body larger than {limit} bytes"
    # No length declared (chunked): read only until the limit is passed.
    chunks = [b"x" * (limit // 4)] * 40
    status, answer, read = asgi_post(client, path, chunks, {"x-api-key": key})
    assert status == 413 and read == 5, (answer, read)


def test_a_body_within_its_limit_still_reaches_the_route(api_client):
    """The edge reads the body once and hands it on: a label sent in three chunks."""
    key = api_client.headers["X-API-Key"]
    body = json.dumps({"payment_id": uid("pay"), "is_fraud": True, "source": "chargeback",
                       "reported_at": "2026-11-21T10:00:00Z"}).encode()
    chunks = [body[:10], body[10:20], body[20:]]
    status, answer, read = asgi_post(api_client, "/v1/labels", chunks,
                                     {"x-api-key": key, "content-type": "application/json"})
    assert (status, read) == (202, 3), answer
    assert answer["payment_id"] == json.loads(body)["payment_id"]


def test_a_malformed_content_length_is_400(api_client):
    key = api_client.headers["X-API-Key"]
    status, answer, read = asgi_post(api_client, "/v1/labels", [b"{}"],
                                     {"x-api-key": key, "content-length": "12abc"})
    assert (status, read) == (400, 0) and "Content-Length" in answer["detail"]


def test_a_labels_key_reports_only_its_sources_and_in_its_own_name(api_client, api_keys,
                                                                   stream_worker):
    """The reported exploit: a labels key wrote an analyst's verdict in someone else's
    name. Analyst verdicts belong to the review queue; a key given the analyst source (a
    case tool of its own) reports them as itself."""
    from stores.history import HistoryStore
    from tests.conftest import eventually

    def post(key: str, **extra):
        body = {"payment_id": uid("pay"), "is_fraud": False, "source": "analyst",
                "reported_at": "2026-11-21T10:00:00Z", **extra}
        return body, api_client.post("/v1/labels", json=body, headers={"X-API-Key": key})

    feed, casetool = api_keys["feed"][0], api_keys["casetool"][0]
    _, resp = post(feed, analyst="alice")
    assert resp.status_code == 403 and "may not report 'analyst' labels" in resp.json()["detail"]
    assert "chargeback, customer_report" in resp.json()["detail"]
    _, resp = post(feed, source="chargeback", is_fraud=True)
    assert resp.status_code == 202, resp.text
    _, resp = post(casetool, analyst="alice")
    assert resp.status_code == 403 and "in its own name, not 'alice'" in resp.json()["detail"]
    _, resp = post(casetool, source="chargeback")
    assert resp.status_code == 403
    body, resp = post(casetool, note="case tool verdict")
    assert resp.status_code == 202, resp.text

    store = HistoryStore(stream_worker.history_dir)

    def recorded():
        rows = store.query("SELECT analyst FROM labels_raw WHERE payment_id = ?",
                           [body["payment_id"]])
        return rows["analyst"].tolist() if len(rows) else None

    eventually(lambda: recorded() is not None, 60)
    assert recorded() == ["casetool"]


def test_a_payment_takes_a_bounded_number_of_labels_and_a_retry_is_never_refused(
        api_client, api_keys, stream_worker):
    """Every label of a payment is kept and re-walked on each new one, and labels wait for
    their payment in a list: a feed key looping new labels on one payment is cut off."""
    from stores.history import HistoryStore
    from stores.label_intake import MAX_LABELS_PER_PAYMENT
    from tests.conftest import eventually

    pid = uid("pay")
    feed = {"X-API-Key": api_keys["feed"][0]}

    def label(minute: int, is_fraud: bool = True) -> dict:
        return {"payment_id": pid, "is_fraud": is_fraud, "source": "chargeback",
                "reported_at": f"2026-11-21T10:{minute:02d}:00Z"}

    for minute in range(MAX_LABELS_PER_PAYMENT):
        assert api_client.post("/v1/labels", json=label(minute), headers=feed).status_code == 202
    refused = api_client.post("/v1/labels", json=label(59, False), headers=feed)
    assert refused.status_code == 409
    assert f"has {MAX_LABELS_PER_PAYMENT} labels already" in refused.json()["detail"]
    # a label sent before is the same label: its retry is accepted (and recorded once)
    assert api_client.post("/v1/labels", json=label(0), headers=feed).status_code == 202
    # another payment is not held back
    other = {**label(0), "payment_id": uid("pay")}
    assert api_client.post("/v1/labels", json=other, headers=feed).status_code == 202
    store = HistoryStore(stream_worker.history_dir)

    def recorded() -> int:
        return int(store.query("SELECT count(*) AS n FROM labels_raw WHERE payment_id = ?",
                               [pid])["n"][0])

    eventually(lambda: recorded() == MAX_LABELS_PER_PAYMENT, 60)
    assert not (store.query("SELECT count(*) AS n FROM labels_raw WHERE payment_id = ? "
                            "AND NOT is_fraud", [pid])["n"][0])


def test_event_time_is_bounded_in_the_past_as_configured(stream_worker, trained, api_keys):
    """Back-dating would slip past every velocity window and open a history partition per
    day named: a payment or label older than FRAUDSTREAM_MAX_PAST_DAYS is a 422."""
    from datetime import UTC, datetime, timedelta

    from fastapi.testclient import TestClient

    from api.main import serve_app
    from tests.conftest import history_row

    now = datetime.now(UTC).replace(microsecond=0)
    strict = stream_worker.model_copy(update={"max_past_days": 2.0})
    with TestClient(serve_app(strict), headers={"X-API-Key": api_keys["all"][0]}) as client:
        old = payment(ts=(now - timedelta(days=3)).isoformat(), payment_id=uid("pay"))
        resp = client.post("/v1/payments/score", json=old)
        assert resp.status_code == 422, resp.text
        detail = resp.json()["detail"][0]
        assert detail["loc"] == ["body", "timestamp"]
        assert "3 days in the past" in detail["msg"] and "MAX_PAST_DAYS" in detail["msg"]
        recent = payment(ts=(now - timedelta(days=1)).isoformat())
        assert client.post("/v1/payments/score", json=recent).status_code == 200
        label = {"payment_id": recent["payment_id"], "is_fraud": True, "source": "chargeback",
                 "reported_at": (now - timedelta(days=5)).isoformat()}
        resp = client.post("/v1/labels", json=label)
        assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == [
            "body", "reported_at"]
        batch = client.post("/v1/payments/score/batch", json={"payments": [old]})
        assert batch.status_code == 200 and batch.json()["results"][0]["error"]["status"] == 422
    assert history_row(stream_worker, old["payment_id"]) is None


def test_a_rule_set_that_would_not_load_is_not_saved_and_a_save_is_audited_at_once(stack):
    """The reported brick: a rule set saved that every API process then failed to load.
    A save reads its document back first; rules, version and audit entry go in together;
    nothing trims the audit."""
    import asyncio

    from model.policy import Condition, Rule, RuleSet
    from stores import redis_client
    from stores.policy_store import AUDIT_KEY, PolicyStore

    good = RuleSet(rules=[Rule(id="big", action="review", when=[
        Condition(feature="amount", op=">=", value=5000)])])
    # what slipped past validation once: a NaN, written as null, unreadable afterwards
    bad = RuleSet.model_construct(rules=[Rule.model_construct(
        id="nan", action="review", description="",
        when=[Condition.model_construct(feature="amount", op=">", value=float("nan"))])])

    async def go():
        redis = redis_client.connect(stack)
        try:
            store = PolicyStore(redis)
            version = await store.save(good, "ops")
            audited = await redis.admin.xlen(AUDIT_KEY)
            with pytest.raises(ValueError, match="does not load back"):
                await store.save(bad, "ops")
            assert await store.version() == version
            assert (await store.load()).rules == good
            assert await redis.admin.xlen(AUDIT_KEY) == audited
            newest = (await store.audit(1))[0]
            assert (newest["what"], newest["actor"], newest["version"], newest["rules"]) == (
                "rules", "ops", version, 1)
            for _ in range(30):  # activity does not trim it
                await store.set_listed("block", "card_id", "tok_x", True, "ops")
            assert await redis.admin.xlen(AUDIT_KEY) == audited + 30
        finally:
            await redis.aclose()

    asyncio.run(go())
