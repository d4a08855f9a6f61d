"""The analysts' review queue on the real stack: a payment decided review becomes a case; a
claim keeps other analysts off it; the verdict becomes one label in the history and one
change in the features, however often it is sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from stores.history import HistoryStore
from stores.online_features import card_fraud_known_key
from tests.conftest import eventually, payment, uid

pytestmark = pytest.mark.integration
MARK_AMOUNT = 4321.5  # the rule below sends payments of exactly this amount to review


@pytest.fixture(scope="module")
def analysts(settings, api_keys):
    from model.api_keys import create_key

    assert settings.api_keys_file is not None
    return {name: create_key(settings.api_keys_file, name, {"review"})[0]
            for name in ("ana", "bob")}


@pytest.fixture()
def review_rule(api_client):
    rules = api_client.get("/v1/admin/rules").json()
    kept = {"rules": rules["rules"]}
    mark = {"id": "test_review_mark", "action": "review",
            "when": [{"feature": "amount", "op": "==", "value": MARK_AMOUNT}]}
    assert api_client.put("/v1/admin/rules", json={
        "rules": [r for r in kept["rules"] if r["id"] != mark["id"]] + [mark]}).status_code == 200
    yield
    api_client.put("/v1/admin/rules", json=kept)


def as_(client: TestClient, key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def raw_labels(settings, payment_id: str):
    return HistoryStore(settings.history_dir).query(
        "SELECT * FROM labels_raw WHERE payment_id = ?", [payment_id])


def test_review_case_claim_verdict_exactly_once(api_client, stream_worker, analysts, api_keys,
                                               review_rule, redis_db):
    now = datetime.now(UTC).replace(microsecond=0)
    card = uid("card")
    body = payment(ts=(now - timedelta(minutes=5)).isoformat(), card_id=card,
                   amount=MARK_AMOUNT)
    answer = api_client.post("/v1/payments/score", json=body).json()
    assert answer["decision"] == "review"
    assert any(r["code"] == "rule_test_review_mark" for r in answer["reasons"]), answer
    pid = body["payment_id"]
    ana, bob = as_(api_client, analysts["ana"]), as_(api_client, analysts["bob"])

    # the stream makes it a case; listed oldest first, filterable
    def listed():
        cases = api_client.get("/v1/reviews", params={"card_id": card}, headers=ana).json()
        return cases if cases else None

    cases = eventually(listed, 60)
    assert [c["payment_id"] for c in cases] == [pid]
    assert cases[0]["status"] == "open" and cases[0]["amount"] == MARK_AMOUNT
    assert "rule_test_review_mark" in cases[0]["reasons"]
    everything = api_client.get("/v1/reviews", params={"limit": 500}, headers=ana).json()
    paid = [c["paid_at"] for c in everything]
    assert paid == sorted(paid)

    # scopes: a scoring key may not work the queue; an analyst's key may not score
    assert api_client.get("/v1/reviews", headers=as_(api_client, "nope")).status_code == 401
    scorer_only = {"X-API-Key": api_keys["scorer"][0]}
    assert api_client.get("/v1/reviews", headers=scorer_only).status_code == 403
    assert api_client.post("/v1/payments/score", json=payment(), headers=ana).status_code == 403

    # a claim keeps others off; the holder may claim again
    claimed = api_client.post(f"/v1/reviews/{pid}/claim", headers=ana)
    assert claimed.status_code == 200 and claimed.json()["claimed_by"] == "ana"
    assert api_client.post(f"/v1/reviews/{pid}/claim", headers=bob).status_code == 409
    refused = api_client.post(f"/v1/reviews/{pid}/verdict", headers=bob,
                              json={"verdict": "legitimate"})
    assert refused.status_code == 409 and "claimed by ana" in refused.json()["detail"]
    assert api_client.post(f"/v1/reviews/{pid}/claim", headers=ana).status_code == 200
    bad = api_client.post(f"/v1/reviews/{pid}/verdict", headers=ana, json={"verdict": "maybe"})
    assert bad.status_code == 422
    assert api_client.post("/v1/reviews/no_such_payment/claim", headers=ana).status_code == 404

    # the verdict: sent three times (a client retrying), one label
    before = redis_db.zcard(card_fraud_known_key(card))
    decided = [api_client.post(f"/v1/reviews/{pid}/verdict", headers=ana,
                               json={"verdict": "fraud", "note": "cardholder denies"})
               for _ in range(3)]
    assert all(d.status_code == 200 for d in decided)
    first = decided[0].json()["case"]
    assert first["status"] == "decided" and first["decided_by"] == "ana"
    assert {d.json()["case"]["decided_at"] for d in decided} == {first["decided_at"]}
    changed = api_client.post(f"/v1/reviews/{pid}/verdict", headers=ana,
                              json={"verdict": "legitimate"})
    assert changed.status_code == 409 and "already decided fraud" in changed.json()["detail"]

    labels = eventually(lambda: (lambda f: f if len(f) else None)(
        raw_labels(stream_worker, pid)), 60)
    # one change in the features: the card's known frauds hold this payment, once
    eventually(lambda: redis_db.zcard(card_fraud_known_key(card)) == before + 1, 30)
    assert len(labels) == 1
    row = labels.iloc[0]
    assert row["source"] == "analyst" and bool(row["is_fraud"])
    assert row["analyst"] == "ana" and row["note"] == "cardholder denies"
    # the next payment of the card sees the fraud
    later = api_client.post("/v1/payments/score", json=payment(
        ts=(datetime.now(UTC) + timedelta(seconds=2)).isoformat(), card_id=card)).json()
    assert later["decision"] in {"approve", "review", "decline"}
    assert redis_db.zcard(card_fraud_known_key(card)) == before + 1

    # decided: out of the pending queue, in the decided list and the audit
    pending = api_client.get("/v1/reviews", params={"card_id": card}, headers=ana).json()
    assert pending == []
    done = api_client.get("/v1/reviews", params={"status": "decided", "card_id": card},
                          headers=bob).json()
    assert [c["verdict"] for c in done] == ["fraud"]
    audit = api_client.get("/v1/reviews/audit", headers=bob).json()
    mine = [a for a in audit if a["payment_id"] == pid]
    assert [a["action"] for a in mine][:1] == ["verdict"] and mine[0]["analyst"] == "ana"
    assert {a["action"] for a in mine} == {"claim", "verdict"}
    assert raw_labels(stream_worker, pid).shape[0] == 1


def test_a_payment_recorded_again_does_not_reopen_its_case(stack):
    import asyncio

    from stores import redis_client
    from stores.reviews import DECIDED_KEY, OPEN_KEY, WAITING_KEY, ReviewError, ReviewQueue

    def row(pid: str, ts: datetime) -> dict:
        return {"payment_id": pid, "ts": ts, "card_id": "c", "terminal_id": "t",
                "amount": 10.0, "currency": "EUR", "score": 0.5, "model_version": "v",
                "reasons": ["x"]}

    async def go():
        redis = redis_client.connect(stack)
        await redis.admin.delete(OPEN_KEY, WAITING_KEY, DECIDED_KEY)
        queue = ReviewQueue(redis)
        t0 = 1_800_000_000.0
        first, older = uid("pay"), uid("pay")
        assert await queue.enqueue([row(first, datetime.now(UTC))], now=t0) == 1
        assert await queue.enqueue([row(first, datetime.now(UTC))], now=t0) == 0  # again
        # an older payment recorded later (a replay): listed first, but the queue's age is
        # the longest wait
        await queue.enqueue([row(older, datetime(2026, 9, 1, tzinfo=UTC))], now=t0 + 100)
        assert [c.payment_id for c in (await queue.list(now=t0 + 200)).cases] == [older, first]
        assert await queue.stats(now=t0 + 200) == (2, 200.0)
        case = await queue.decide(first, "ana", "legitimate", now=t0 + 300)
        assert await queue.enqueue([row(first, datetime.now(UTC))]) == 0  # after the verdict
        again = await queue.get(first)
        assert again is not None and again.status == "decided"
        assert again.label() == case.label()  # the same label, field for field
        assert await queue.stats(now=t0 + 400) == (1, 300.0)  # the older one waits
        # a label from elsewhere closes an open case, not a decided one; an analyst's
        # label (it comes from a verdict) closes nothing
        from model.schemas import Label

        third, fourth = uid("pay"), uid("pay")
        await queue.enqueue([row(third, datetime.now(UTC)), row(fourth, datetime.now(UTC))],
                            now=t0 + 310)
        when = datetime(2026, 11, 1, tzinfo=UTC)
        assert await queue.close_by_labels([
            Label(payment_id=third, is_fraud=False, source="customer_report", reported_at=when),
            Label(payment_id=fourth, is_fraud=True, source="analyst", reported_at=when),
            Label(payment_id=first, is_fraud=True, source="chargeback", reported_at=when),
        ], now=t0 + 320) == 1
        closed = await queue.get(third)
        assert closed is not None and (closed.status, closed.verdict, closed.decided_by) == (
            "decided", "legitimate", "label:customer_report")
        kept = await queue.get(first)
        assert kept is not None and (kept.verdict, kept.decided_by) == ("legitimate", "ana")
        assert (await queue.get(fourth)).status == "open"  # type: ignore[union-attr]
        assert await queue.close_by_labels([Label(
            payment_id=third, is_fraud=True, source="chargeback", reported_at=when)]) == 0
        with pytest.raises(ReviewError, match="closed by a customer_report label"):
            await queue.decide(third, "ana", "legitimate")
        await queue.decide(fourth, "ana", "fraud", now=t0 + 330)
        # decided ids are dropped once their cases have expired
        await queue.decide(older, "ana", "fraud", now=t0 + 400 + 100 * 86_400)
        assert await redis.admin.zrange(DECIDED_KEY, 0, -1) == [older.encode()]
        await redis.aclose()

    asyncio.run(go())


def test_a_chargeback_closes_the_open_case_of_its_payment(api_client, stream_worker,
                                                          analysts, review_rule):
    """The issuer answered: the case leaves the queue, closed with the label's verdict,
    and an analyst can no longer decide it (no analyst label is made of it)."""
    card = uid("card")
    body = payment(ts=(datetime.now(UTC) - timedelta(minutes=5)).isoformat(), card_id=card,
                   amount=MARK_AMOUNT)
    assert api_client.post("/v1/payments/score", json=body).json()["decision"] == "review"
    pid = body["payment_id"]
    ana = as_(api_client, analysts["ana"])
    eventually(lambda: api_client.get("/v1/reviews", params={"card_id": card},
                                      headers=ana).json() or None, 60)
    assert api_client.post(f"/v1/reviews/{pid}/claim", headers=ana).status_code == 200
    label = {"payment_id": pid, "is_fraud": True, "source": "chargeback",
             "reported_at": datetime.now(UTC).isoformat()}
    assert api_client.post("/v1/labels", json=label).status_code == 202

    def closed():
        case = api_client.get(f"/v1/reviews/{pid}", headers=ana).json()
        return case if case["status"] == "decided" else None

    case = eventually(closed, 60)
    assert case["verdict"] == "fraud" and case["decided_by"] == "label:chargeback"
    assert "chargeback" in case["note"]
    assert api_client.get("/v1/reviews", params={"card_id": card}, headers=ana).json() == []
    late = api_client.post(f"/v1/reviews/{pid}/verdict", headers=ana,
                           json={"verdict": "legitimate"})
    assert late.status_code == 409 and "closed by a chargeback label" in late.json()["detail"]
    audit = api_client.get("/v1/reviews/audit", headers=ana).json()
    assert next(a["action"] for a in audit if a["payment_id"] == pid) == "closed_by_label"
    # only the chargeback is in the history: no analyst label was made of the case
    labels = eventually(lambda: (lambda f: f if len(f) else None)(
        raw_labels(stream_worker, pid)), 60)
    assert list(labels["source"]) == ["chargeback"]


def test_a_lost_queue_is_opened_again_from_the_history(api_client, stream_worker, analysts,
                                                        review_rule, redis_db):
    """A Redis lost with its queue: `history backfill-online` opens again the cases the
    history says were sent to review and have no label yet; answered ones stay closed."""
    import asyncio
    import time

    from stores import redis_client
    from stores.history import HistoryStore
    from stores.reviews import OPEN_KEY, WAITING_KEY, ReviewQueue, case_key
    from training.backfill import restore_review_queue

    card = uid("card")
    ana = as_(api_client, analysts["ana"])
    bodies = [payment(ts=(datetime.now(UTC) - timedelta(minutes=m)).isoformat(),
                      card_id=card, amount=MARK_AMOUNT) for m in (3, 2)]
    for body in bodies:
        assert api_client.post("/v1/payments/score", json=body).json()["decision"] == "review"
    waiting, answered = (b["payment_id"] for b in bodies)
    eventually(lambda: len(api_client.get("/v1/reviews", params={"card_id": card},
                                          headers=ana).json()) == 2, 60)
    assert api_client.post(f"/v1/reviews/{answered}/verdict", headers=ana,
                           json={"verdict": "fraud"}).status_code == 200
    eventually(lambda: len(raw_labels(stream_worker, answered)) == 1, 60)
    before = api_client.get(f"/v1/reviews/{waiting}", headers=ana).json()
    for pid in (waiting, answered):  # the queue is lost
        redis_db.delete(case_key(pid))
        redis_db.zrem(OPEN_KEY, pid)
        redis_db.zrem(WAITING_KEY, pid)
    assert api_client.get(f"/v1/reviews/{waiting}", headers=ana).status_code == 404

    async def restore() -> int:
        redis = redis_client.connect(stream_worker)
        try:
            return await restore_review_queue(HistoryStore(stream_worker.history_dir),
                                              ReviewQueue(redis), until=time.time())
        finally:
            await redis.aclose()

    assert asyncio.run(restore()) >= 1
    again = api_client.get(f"/v1/reviews/{waiting}", headers=ana).json()
    assert again["status"] == "open"
    assert {k: again[k] for k in ("paid_at", "amount", "score", "reasons", "card_id")} == {
        k: before[k] for k in ("paid_at", "amount", "score", "reasons", "card_id")}
    assert api_client.get(f"/v1/reviews/{answered}", headers=ana).status_code == 404
    assert asyncio.run(restore()) == 0  # a case Redis holds is left as it is


def test_the_queue_lists_by_terminal_score_and_analyst(stack):
    import asyncio

    from stores import redis_client
    from stores.reviews import ReviewQueue

    terminal, other = uid("term"), uid("term")

    def row(pid: str, term: str, score: float, minute: int) -> dict:
        return {"payment_id": pid, "ts": datetime(2026, 11, 2, 10, minute, tzinfo=UTC),
                "card_id": uid("card"), "terminal_id": term, "amount": 10.0,
                "currency": "EUR", "score": score, "model_version": "v", "reasons": []}

    async def go():
        redis = redis_client.connect(stack)
        queue = ReviewQueue(redis)
        low, high, elsewhere = uid("pay"), uid("pay"), uid("pay")
        await queue.enqueue([row(high, terminal, 0.9, 2), row(low, terminal, 0.2, 1),
                             row(elsewhere, other, 0.95, 0)])
        await queue.claim(high, "bob")

        async def ids(**filters) -> list[str]:
            return [c.payment_id for c in (await queue.list(limit=500, **filters)).cases]

        assert await ids(terminal_id=terminal) == [low, high]  # oldest payment first
        assert await ids(terminal_id=terminal, min_score=0.5) == [high]
        assert await ids(terminal_id=terminal, analyst="bob") == [high]
        assert await ids(terminal_id=terminal, status="open") == [low]
        assert await ids(terminal_id=terminal, status="claimed") == [high]
        assert elsewhere in await ids(min_score=0.9)
        await redis.aclose()

    asyncio.run(go())


def test_a_listing_looks_at_a_bounded_number_of_cases_and_goes_on_by_its_cursor(stack):
    import asyncio

    from stores import redis_client
    from stores.reviews import LIST_SCAN_BUDGET, ReviewQueue

    terminal = uid("term")
    many = LIST_SCAN_BUDGET + 250
    base = datetime(2026, 10, 1, tzinfo=UTC)

    def row(i: int, term: str) -> dict:
        # two cases share each payment time: ties are ordered by id, and paged through
        return {"payment_id": f"{uid('pay')}-{i:05d}", "ts": base + timedelta(seconds=i // 2),
                "card_id": uid("card"), "terminal_id": term, "amount": 10.0,
                "currency": "EUR", "score": 0.5, "model_version": "v", "reasons": []}

    async def go():
        redis = redis_client.connect(stack)
        try:
            queue = ReviewQueue(redis)
            rows = [row(i, terminal if i in (3, LIST_SCAN_BUDGET + 10, many - 1) else "busy")
                    for i in range(many)]
            await queue.enqueue(rows)
            wanted = [rows[i]["payment_id"] for i in (3, LIST_SCAN_BUDGET + 10, many - 1)]
            # a filter that matches little: the first call stops at the budget
            first = await queue.list(limit=10, terminal_id=terminal)
            assert [c.payment_id for c in first.cases] == wanted[:1] and first.cursor
            # a case decided between two pages shifts nothing
            await queue.decide(rows[5]["payment_id"], "ana", "legitimate")
            seen, cursor, calls = [c.payment_id for c in first.cases], first.cursor, 1
            while cursor is not None:
                page = await queue.list(limit=10, terminal_id=terminal, cursor=cursor)
                seen += [c.payment_id for c in page.cases]
                cursor, calls = page.cursor, calls + 1
                assert calls < 10
            assert seen == wanted
            # unfiltered pages of 7 walk every case once, in order, ties included
            walked, cursor = [], None
            while True:
                page = await queue.list(limit=500, status="pending", cursor=cursor)
                walked += [c.payment_id for c in page.cases]
                if page.cursor is None:
                    break
                cursor = page.cursor
            pending = [r["payment_id"] for r in sorted(rows, key=lambda r: (r["ts"],
                                                                           r["payment_id"]))
                       if r is not rows[5]]
            assert [p for p in walked if p in set(pending)] == pending
            assert len(walked) == len(set(walked))
            for bad in ("nonsense!", "bm9zcGFjZQ", "aW5mIHg"):  # "nospace", "inf x"
                with pytest.raises(ValueError, match="cursor is not one this queue gave"):
                    await queue.list(cursor=bad)
        finally:
            await redis.aclose()

    asyncio.run(go())


def test_renewing_a_claim_writes_no_audit_entry_and_new_claims_are_capped(stack):
    import asyncio

    from stores import redis_client
    from stores.reviews import AUDIT_KEY, MAX_CLAIMS_PER_CASE, CaseLimit, ReviewQueue

    async def go():
        redis = redis_client.connect(stack)
        try:
            queue = ReviewQueue(redis, claim_seconds=60)
            pid = uid("pay")
            await queue.enqueue([{"payment_id": pid, "ts": datetime.now(UTC), "card_id": "c",
                                  "terminal_id": "t", "amount": 1.0, "currency": "EUR",
                                  "score": 0.5, "model_version": "v", "reasons": []}])
            audit_before = await redis.admin.xlen(AUDIT_KEY)
            t0 = 1_900_000_000.0
            first = await queue.claim(pid, "ana", now=t0)
            for k in range(200):  # a loop of renewals
                renewed = await queue.claim(pid, "ana", now=t0 + k)
            assert renewed.claimed_until is not None and first.claimed_until is not None
            assert renewed.claimed_until > first.claimed_until  # each renewal extends it
            assert await redis.admin.xlen(AUDIT_KEY) == audit_before + 1
            # hand-overs after the claim lapses count, up to the cap
            at = t0 + 1000
            for k in range(MAX_CLAIMS_PER_CASE - 1):
                await queue.claim(pid, ("bob", "ana")[k % 2], now=at)
                at += 61
            assert await redis.admin.xlen(AUDIT_KEY) == audit_before + MAX_CLAIMS_PER_CASE
            with pytest.raises(CaseLimit, match="claimed 20 times already"):
                await queue.claim(pid, "carol", now=at)
            # the holder still renews, and the case can be decided
            await queue.claim(pid, ("bob", "ana")[(MAX_CLAIMS_PER_CASE - 2) % 2], now=at - 30)
            decided = await queue.decide(pid, ("bob", "ana")[(MAX_CLAIMS_PER_CASE - 2) % 2],
                                         "fraud", now=at - 20)
            assert decided.status == "decided"
        finally:
            await redis.aclose()

    asyncio.run(go())


def test_the_listing_route_gives_its_cursor_in_a_header_and_refuses_a_forged_one(
        api_client, analysts):
    from stores.reviews import ReviewQueue

    terminal = uid("term")
    ids = [uid("pay"), uid("pay")]
    queue = ReviewQueue(api_client.app.state.services.store.redis)
    api_client.portal.call(queue.enqueue, [
        {"payment_id": pid, "ts": datetime(2026, 11, 3, 9, i, tzinfo=UTC), "card_id": "c",
         "terminal_id": terminal, "amount": 1.0, "currency": "EUR", "score": 0.5,
         "model_version": "v", "reasons": []} for i, pid in enumerate(ids)])
    ana = as_(api_client, analysts["ana"])
    # pages of one, by the cursor: other tests' cases may fill a page's scan before these
    # are reached (an empty page with a cursor), so the cursor is followed to its end
    seen: list[str] = []
    params: dict[str, str | int] = {"terminal_id": terminal, "limit": 1}
    for _ in range(20):
        page = api_client.get("/v1/reviews", params=params, headers=ana)
        assert page.status_code == 200 and len(page.json()) <= 1
        seen += [c["payment_id"] for c in page.json()]
        if "x-next-cursor" not in page.headers:
            break
        params["cursor"] = page.headers["x-next-cursor"]
    assert seen == ids and "x-next-cursor" not in page.headers
    forged = api_client.get("/v1/reviews", params={"cursor": "not-a-cursor"}, headers=ana)
    assert forged.status_code == 422 and "cursor" in forged.json()["detail"]
