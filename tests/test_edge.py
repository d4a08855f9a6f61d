"""The served scoring route (``api.edge.ScoringEdge``) and the FastAPI route it stands in
for answer alike; the edge also bounds the body."""

import json

import pytest
from fastapi.testclient import TestClient

from api.main import create_app, serve_app
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
