"""Fuzz: requests generated from the OpenAPI schema of every route (schemathesis, valid
and invalid data), with a valid key, an unknown key and none, and hostile headers, against
the real API on the real Redis and Kafka. No request gets a 5xx; a request refused for its
key changes nothing in Redis (the audits included) or the history; a payment refused for
its data is never recorded."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from model.api_keys import API_LABEL_SOURCES, SCOPES, create_key
from model.config import Settings
from tests.conftest import history_row, uid

# Requests per (operation, mode, caller), kept modest on the cluster run (the single run
# makes the >= 5,000 of the floor; the cluster run checks the same on its topology).
EXAMPLES_SINGLE = 90
EXAMPLES_CLUSTER = 20
HOSTILE_HEADERS = st.fixed_dictionaries({}, optional={
    "X-Deadline-Ms": st.sampled_from(["0", "-1", "1e3", "60001", "abc", "٣", ""]),
    "X-Signature": st.sampled_from(["", "t=x", "t=1,v1=00", "t=1,v2=zz", "garbage"]),
    "Content-Length": st.sampled_from(["abc", "-1", "99999999999"]),
    "Content-Type": st.sampled_from(["text/plain", "application/json; charset=latin-1"]),
})


def _redis_state(settings: Settings) -> dict[bytes, str]:
    """Every key of every node, with a digest of its value (the audits are streams in
    it); keys that expire by themselves (replay marks, signature marks) are in it too."""
    from fraudstream_dev.launcher import redis_nodes

    state: dict[bytes, str] = {}
    for node in redis_nodes(settings):
        try:
            for key in node.scan_iter(count=1000):
                dumped = node.dump(key)
                if dumped is not None:
                    state[key] = hashlib.sha256(dumped).hexdigest()
        finally:
            node.close()
    return state


def _history_files(settings: Settings) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in settings.history_dir.rglob("*") if p.is_file()}


def _quiet(settings: Settings) -> tuple[dict[bytes, str], dict[str, int]]:
    """Redis and the history once nothing changes them for 3 s (the stream worker done
    with what came before, the API's background writes done)."""
    deadline = time.monotonic() + 120
    last = (_redis_state(settings), _history_files(settings))
    while time.monotonic() < deadline:
        time.sleep(3)
        now = (_redis_state(settings), _history_files(settings))
        if now == last:
            return now
        last = now
    raise AssertionError("Redis or the history kept changing for 120 s with no traffic")


def _payment_ids(body: Any) -> set[str]:
    """The payment ids in a body: a payment's, or those of a batch's payments."""
    if not isinstance(body, dict):
        return set()
    found = {body["payment_id"]} if isinstance(body.get("payment_id"), str) else set()
    for item in body.get("payments") or []:
        found |= _payment_ids(item) if isinstance(body.get("payments"), list) else set()
    return found


def _send(client: Any, case: Any, headers: dict[str, str]) -> Any:
    kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
    body = kwargs.pop("data", None)
    if body is not None and not isinstance(body, bytes | str):
        kwargs["json"] = body
    elif body is not None:
        kwargs["content"] = body
    kwargs.pop("cookies", None)
    # as the bytes a hostile client sends: httpx would refuse to encode a non-ASCII str
    kwargs["headers"] = {k: v.encode() if isinstance(v, str) else v
                         for k, v in (kwargs.get("headers") or {}).items()}
    for unsupported in ("verify", "allow_redirects", "timeout"):
        kwargs.pop(unsupported, None)
    return client.request(**kwargs)


# The answers and the refusals are the API's own; the servers' shape is covered elsewhere.
@pytest.mark.integration
@pytest.mark.any_topology
def test_generated_requests_to_every_route_never_get_a_5xx_and_refusals_change_nothing(
        stream_worker: Settings, trained: str):
    from fastapi.testclient import TestClient

    from api.main import serve_app

    assert stream_worker.api_keys_file is not None
    every_scope, _ = create_key(stream_worker.api_keys_file, uid("fuzzer"), set(SCOPES),
                                label_sources=set(API_LABEL_SOURCES))
    app = serve_app(stream_worker)
    schema = schemathesis.openapi.from_dict(app.app.openapi())
    results = list(schema.get_all_operations())
    assert all(isinstance(r, Ok) for r in results), [r for r in results if not isinstance(r, Ok)]
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) >= 15, [str(o) for o in operations]
    examples = EXAMPLES_CLUSTER if stream_worker.redis_cluster else EXAMPLES_SINGLE
    statuses: Counter[tuple[str, int]] = Counter()
    server_errors: list[str] = []
    refused_payments: set[str] = set()
    scored_payments: set[str] = set()

    def fuzz(client: Any, key: str | None, modes: list[GenerationMode]) -> None:
        for operation in operations:
            for mode in modes:
                @hypothesis.settings(max_examples=examples, deadline=None, database=None,
                                     suppress_health_check=list(HealthCheck),
                                     phases=[hypothesis.Phase.generate])
                @hypothesis.given(case=operation.as_strategy(mode), extra=HOSTILE_HEADERS)
                def one(case: Any, extra: dict[str, str]) -> None:
                    headers = dict(extra)
                    if key is not None:
                        headers["X-API-Key"] = key
                    resp = _send(client, case, headers)
                    statuses[(str(case.operation.label), resp.status_code)] += 1
                    if resp.status_code >= 500:
                        server_errors.append(f"{case.operation.label} {resp.status_code}: "
                                             f"{case.as_curl_command()[:400]}")
                    ids = _payment_ids(case.body)
                    if resp.status_code < 300:
                        scored_payments.update(ids)  # the batch route scores too
                    elif case.operation.label == "POST /v1/payments/score":
                        refused_payments.update(ids)

                try:
                    one()
                except hypothesis.errors.Unsatisfiable:
                    # a route with no parameter and no body has no invalid request to make
                    assert mode is GenerationMode.NEGATIVE, operation.label

    with TestClient(app) as client:
        # a valid key with every scope: schema-valid and schema-violating requests
        fuzz(client, every_scope, [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
        before = _quiet(stream_worker)
        # no key, and a key nobody was given: refused, and nothing changes
        calls_before = sum(statuses.values())
        fuzz(client, None, [GenerationMode.POSITIVE])
        fuzz(client, "fsk_" + "x" * 43, [GenerationMode.POSITIVE])
        unauthenticated = sum(statuses.values()) - calls_before
        after = _quiet(stream_worker)

    assert not server_errors, server_errors[:5]
    total = sum(statuses.values())
    assert total >= (5000 if not stream_worker.redis_cluster else 1000), total
    # every route was reached, and the generated data got past validation somewhere
    reached = {label for label, _ in statuses}
    assert reached == {str(o.label) for o in operations}
    assert sum(n for (_, code), n in statuses.items() if code < 300) > 100, statuses
    assert unauthenticated > 0
    changed = {k for k in before[0].keys() | after[0].keys()
               if before[0].get(k) != after[0].get(k)}
    assert not changed, sorted(changed)[:10]
    assert before[1] == after[1]
    # a payment refused for its data is not in the history (ids also scored excepted)
    for pid in sorted(refused_payments - scored_payments)[:200]:
        if pid:
            assert history_row(stream_worker, pid) is None, pid
