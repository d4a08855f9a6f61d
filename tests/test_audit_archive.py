"""The audit trails' append-only copy: every entry of the Redis trails reaches the history
once, whoever copies and however often, and what is removed from Redis afterwards is
still in the history and named by ``verify``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import pytest

from model.policy import RuleSet
from stores import audit_archive, redis_client
from stores.audit_archive import TRAILS, AuditArchive
from stores.history import HistoryStore
from stores.policy_store import PolicyStore
from stores.reviews import ReviewQueue
from tests.conftest import cli, eventually, uid

pytestmark = pytest.mark.integration
T = TypeVar("T")


def run(settings: Any, body: Callable[[redis_client.RedisClient], Coroutine[Any, Any, T]]) -> T:
    async def go() -> T:
        redis = redis_client.connect(settings)
        try:
            return await body(redis)
        finally:
            await redis.aclose()

    return asyncio.run(go())


def case_row(payment_id: str) -> dict[str, Any]:
    return {"payment_id": payment_id, "ts": datetime.now(UTC), "card_id": "c", "amount": 10.0,
            "terminal_id": "t", "currency": "EUR", "score": 0.5, "reasons": []}


def in_history(settings: Any, table: str = "audit") -> Any:
    return HistoryStore(settings.history_dir).query(
        f"SELECT * FROM {table} ORDER BY trail, entry_id")


def test_every_entry_is_copied_once_and_what_redis_loses_the_history_keeps(
        stack, monkeypatch, wide_console):
    monkeypatch.setattr(audit_archive, "PAGE", 2)  # the copy goes in pages: several here
    history = HistoryStore(stack.history_dir)
    first, second = uid("pay"), uid("pay")

    async def activity(redis: redis_client.RedisClient) -> dict[str, list[str]]:
        policy, queue = PolicyStore(redis), ReviewQueue(redis)
        await policy.set_listed("block", "card_id", "tok1", True, "alice", "stolen")
        await policy.set_listed("block", "card_id", "tok1", False, "alice", "returned")
        await policy.save(RuleSet(), "carol")
        await queue.enqueue([case_row(first), case_row(second)])
        await queue.claim(first, "bob")
        await queue.decide(first, "bob", "fraud", "card tested")
        await queue.decide(second, "dan", "legitimate")
        return {trail: [i.decode() for i, _ in await redis.admin.xrange(key)]
                for trail, key in TRAILS.items()}

    in_redis = run(stack, activity)
    assert len(in_redis["policy"]) == 3 and len(in_redis["reviews"]) == 3
    assert run(stack, lambda r: AuditArchive(r, history).copy()) == 6

    copied = in_history(stack)
    assert {t: list(copied.entry_id[copied.trail == t]) for t in TRAILS} == in_redis
    by_actor = copied.groupby("actor").action.apply(sorted).to_dict()
    assert by_actor == {"alice": ["list", "list"], "carol": ["rules"],
                        "bob": ["claim", "verdict"], "dan": ["verdict"]}
    verdict = orjson.loads(copied.entry[(copied.actor == "bob")
                                        & (copied.action == "verdict")].iloc[0])
    assert verdict["payment_id"] == first and verdict["note"] == "card tested"

    # Copied again, by this archive or by a new one (a new leader): nothing twice.
    async def again(redis: redis_client.RedisClient) -> tuple[int, int, int]:
        archive = AuditArchive(redis, history)
        once = await archive.copy()
        fresh = await AuditArchive(redis, history).copy()
        await PolicyStore(redis).set_listed("allow", "card_id", "tok2", True, "alice")
        return once, fresh, await archive.copy()

    assert run(stack, again) == (0, 0, 1)
    assert len(in_history(stack, "audit_raw")) == 7

    # Someone with Redis access removes an entry, then the whole review trail.
    removed = in_redis["policy"][0]

    async def tamper(redis: redis_client.RedisClient) -> None:
        await redis.admin.xdel(TRAILS["policy"], removed)
        await redis.admin.delete(TRAILS["reviews"])

    run(stack, tamper)
    found = run(stack, lambda r: AuditArchive(r, history).verify())
    assert found.missing_from_redis == {"policy": [removed], "reviews": in_redis["reviews"]}
    assert found.stream_gone == ["reviews"] and not found.intact
    assert removed in set(in_history(stack).entry_id)  # the history still holds it

    shown = cli("history", "audit", "--verify")
    assert shown.exit_code == 1, shown.output
    assert removed in shown.output and "changed behind the service" in shown.output
    listed = cli("history", "audit", "--trail", "policy", "--actor", "alice")
    assert listed.exit_code == 0, listed.output
    assert listed.output.count("\"actor\":\"alice\"") == 3 and "carol" not in listed.output
    wrong = cli("history", "audit", "--trail", "rules")
    assert wrong.exit_code == 2 and "one of policy, reviews, keys" in wrong.output


def test_the_stream_worker_copies_new_entries_within_seconds(stream_worker):
    token = uid("tok")
    run(stream_worker, lambda r: PolicyStore(r).set_listed(
        "block", "terminal_id", token, True, "erin", "skimmer"))

    def copied() -> Any:
        rows = in_history(stream_worker, "audit_raw")
        mine = rows[(rows.actor == "erin") & (rows.action == "list")]  # values left out
        assert len(mine) == 1, mine
        return mine

    # the default period is 5 s; the worker also has to join its group first
    row = eventually(copied, timeout=90)
    assert orjson.loads(row.entry.iloc[0])["reason"] == "skimmer"
