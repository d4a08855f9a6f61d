"""The stream's batch steps, crashed at each point and retried: the raw history holds every
payment and label once, and every label counts once in the features (real Redis)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from model.config import Settings
from model.labels import fraud_spells
from model.schemas import Label, Payment, ScoredPayment
from stores.history import HistoryStore
from stores.label_join import pending_key
from stores.online_features import card_fraud_known_key, terminal_fraud_known_key
from stream.recording import Recorder

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 19, 10, 0, tzinfo=UTC)


class InjectedCrash(RedisConnectionError):
    """What the stream's retry loop sees when Redis or the disk fails mid-batch."""


def scored(run: str, i: int) -> ScoredPayment:
    p = Payment(payment_id=f"{run}_{i:03d}", timestamp=T0 + timedelta(minutes=i),
                card_id=f"{run}_card{i % 3}", terminal_id=f"{run}_term{i % 2}",
                amount=10.0 + i, currency="EUR")
    return ScoredPayment(payment=p, features={"amount": p.amount}, score=0.01,
                         decision="approve", model_version="vtest", scored_at=T0)


def label(pid: str, fraud: bool, days: float, source: str = "chargeback") -> Label:
    return Label(payment_id=pid, is_fraud=fraud, source=source,
                 reported_at=T0 + timedelta(days=days))


def fail_once(obj: Any, name: str, after: bool = False, on_call: int = 1) -> None:
    """Make ``obj.name`` raise on its ``on_call``-th call, before or after doing its work."""
    real, calls = getattr(obj, name), {"n": 0}

    def should_fail() -> bool:
        calls["n"] += 1
        return calls["n"] == on_call

    if asyncio.iscoroutinefunction(real):
        async def wrapper(*args: Any, **kw: Any) -> Any:
            fail = should_fail()
            if fail and not after:
                raise InjectedCrash(name)
            out = await real(*args, **kw)
            if fail:
                raise InjectedCrash(name)
            return out
    else:
        def wrapper(*args: Any, **kw: Any) -> Any:  # type: ignore[misc]
            fail = should_fail()
            if fail and not after:
                raise OSError(name)
            out = real(*args, **kw)
            if fail:
                raise OSError(name)
            return out
    setattr(obj, name, wrapper)


async def until_done(step: Any, *args: Any) -> int:
    """The worker's retry loop, minus the back-off: returns how many attempts it took."""
    for attempt in range(1, 5):
        try:
            await step(*args)
            return attempt
        except (RedisConnectionError, OSError):
            continue
    raise AssertionError("the batch never went through")


def raw_count(store: HistoryStore, table: str, run: str) -> int:
    return int(store.query(f"SELECT count(*) AS n FROM {table} WHERE payment_id LIKE ?",
                           [f"{run}_%"])["n"][0])


@pytest.fixture()
def recorder_settings(stack: Settings, tmp_path: Path) -> Settings:
    return stack.model_copy(update={"history_dir": tmp_path / "history"})


# Where a batch of scored payments can stop: (method owner, method, fail after its work?)
CRASH_POINTS = {
    "promised, file not written": ("history", "append_payments", False),
    "file written, nothing after": ("history", "append_payments", True),
    "refs not remembered": ("join", "remember_payments", False),
    "labels in their terminals, not in their cards": ("online", "_card_steps", False),
    "labels applied, queues kept": ("join", "forget_waiting", False),
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_scored_batch_crashed_anywhere_then_retried_records_once_and_applies_labels_once(
        recorder_settings: Settings, point: str) -> None:
    run = f"rec{uuid.uuid4().hex[:6]}"
    events = {e.payment.payment_id: e for e in (scored(run, i) for i in range(12))}
    # Chargebacks that reached the stream before their payments: they wait in the join.
    early = [label(f"{run}_{i:03d}", True, 3) for i in (0, 1, 4)]

    async def go() -> tuple[int, int]:
        rec = Recorder(recorder_settings)
        try:
            assert await rec.apply(early, T0) == 3
            owner, name, after = CRASH_POINTS[point]
            fail_once(getattr(rec, owner), name, after=after)
            attempts = await until_done(rec.record, events)
            terms = [await rec.redis.admin.zcard(terminal_fraud_known_key(f"{run}_term{t}"))
                     for t in range(2)]
            cards = [await rec.redis.admin.zcard(card_fraud_known_key(f"{run}_card{c}"))
                     for c in range(3)]
            waiting = [await rec.redis.admin.exists(pending_key(lb.payment_id)) for lb in early]
            assert (terms, cards, waiting) == ([2, 1], [1, 2, 0], [0, 0, 0]), point
            return attempts, await until_done(rec.record, events)  # a redelivery
        finally:
            await rec.close()

    attempts, _ = asyncio.run(go())
    assert attempts == 2  # the crash happened, and the retry went through
    store = HistoryStore(recorder_settings.history_dir)
    assert raw_count(store, "payments_raw", run) == len(events)
    assert raw_count(store, "labels_raw", run) == len(early)


def test_a_retry_scored_anew_is_recorded_and_is_the_payments_record(
        recorder_settings: Settings) -> None:
    """An API process died holding a payment, so the gateway's retry was scored anew, with
    another decision. The gateway acted on the last answer: the history's record. The
    first scoring coming again (the dead process's spool resent) or the last redelivered
    is written no more, whatever the order they arrive in."""
    from stream.recording import latest_scorings

    run = f"res{uuid.uuid4().hex[:6]}"
    first = scored(run, 0)
    again = first.model_copy(update={"decision": "review", "degraded": True, "score": None,
                                      "scored_at": T0 + timedelta(seconds=31)})
    other = scored(run, 1)

    async def go() -> list[int]:
        rec = Recorder(recorder_settings)
        try:
            return [await rec.record({first.payment.payment_id: first,
                                      other.payment.payment_id: other}),
                    await rec.record({again.payment.payment_id: again}),
                    await rec.record({first.payment.payment_id: first}),
                    await rec.record(latest_scorings([first, again, other]))]
        finally:
            await rec.close()

    assert asyncio.run(go()) == [2, 1, 0, 0]
    store = HistoryStore(recorder_settings.history_dir)
    assert raw_count(store, "payments_raw", run) == 3
    view = store.query("SELECT payment_id, decision, degraded FROM payments "
                       "WHERE payment_id LIKE ? ORDER BY payment_id", [f"{run}_%"])
    assert view.values.tolist() == [[first.payment.payment_id, "review", True],
                                    [other.payment.payment_id, "approve", False]]
    assert latest_scorings([again, first])[first.payment.payment_id] is again


def test_label_batch_crashed_after_writing_is_recorded_once(recorder_settings: Settings) -> None:
    run = f"lab{uuid.uuid4().hex[:6]}"
    labels = [label(f"{run}_{i:03d}", True, 2) for i in range(5)]

    async def go() -> int:
        rec = Recorder(recorder_settings)
        try:
            fail_once(rec.history, "append_labels", after=True)
            attempts = await until_done(rec.apply, labels, T0)
            await until_done(rec.apply, labels, T0 + timedelta(seconds=5))  # redelivered
            return attempts
        finally:
            await rec.close()

    assert asyncio.run(go()) == 2
    assert raw_count(HistoryStore(recorder_settings.history_dir), "labels_raw", run) == 5


@pytest.mark.parametrize("arrival", ["in order", "reversed"])
def test_label_state_is_the_historys_whatever_order_labels_arrive_in(
        recorder_settings: Settings, arrival: str) -> None:
    """A chargeback, a repeat of it, the analyst's "not fraud", and fraud again: the
    features' state after each prefix of reports equals the history's rule, in either
    arrival order, redeliveries included."""
    run = f"ord{uuid.uuid4().hex[:6]}"
    ev = scored(run, 0)
    pid, term = ev.payment.payment_id, ev.payment.terminal_id
    reports = [label(pid, True, 2), label(pid, True, 3, "analyst"),
               label(pid, False, 5, "analyst"), label(pid, True, 9, "analyst")]

    async def go() -> list[float | None]:
        rec = Recorder(recorder_settings)
        try:
            await rec.record({pid: ev})
            seen = []
            for k in range(1, len(reports) + 1):
                batch = reports[:k] if arrival == "in order" else reports[:k][::-1]
                await rec.apply(batch, T0)  # earlier ones again: redelivered
                seen.append(await rec.redis.admin.zscore(terminal_fraud_known_key(term), pid))
            return seen
        finally:
            await rec.close()

    seen = asyncio.run(go())
    expected = []
    for k in range(1, len(reports) + 1):
        frame = pd.DataFrame(
            {"payment_id": pid, "is_fraud": [r.is_fraud for r in reports[:k]],
             "reported_at": [r.reported_at.timestamp() for r in reports[:k]]})
        spells = fraud_spells(frame)
        live = spells[spells["until"].isna()]
        expected.append(float(live["known_since"].iloc[0]) if len(live) else None)
    assert seen == expected
    assert expected == [(T0 + timedelta(days=2)).timestamp()] * 2 + [
        None, (T0 + timedelta(days=9)).timestamp()]  # not vacuous: start kept, withdrawn


def test_the_details_of_a_payment_are_recorded_in_the_history(
        recorder_settings: Settings) -> None:
    from model.pseudonym import email_token, ip_token, pseudonymise
    from stores.history import PAYMENT_DETAILS

    run = f"det{uuid.uuid4().hex[:6]}"
    key = b"a-recording-test-key-0123456789a"
    base = scored(run, 0)
    detailed = base.payment.model_copy(update={
        "customer_id": f"{run}_cust", "device_id": f"{run}_dev", "ip": "198.51.100.23",
        "email": "someone@example.net", "card_bin": "535522", "billing_country": "DE",
        "shipping_country": "AT", "merchant_id": f"{run}_merch", "three_ds": "failed",
        "entry_mode": "card_on_file"})
    event = base.model_copy(update={"payment": pseudonymise(detailed, key)})
    plain = scored(run, 1)  # no details: every column null

    async def go() -> int:
        rec = Recorder(recorder_settings)
        try:
            return await rec.record({e.payment.payment_id: e for e in (event, plain)})
        finally:
            await rec.close()

    assert asyncio.run(go()) == 2
    rows = HistoryStore(recorder_settings.history_dir).query(
        f"SELECT payment_id, {', '.join(PAYMENT_DETAILS)} FROM payments "
        "WHERE payment_id LIKE ? ORDER BY payment_id", [f"{run}_%"])
    got = rows.set_index("payment_id")
    first = got.loc[event.payment.payment_id]
    assert first["ip"] == ip_token(key, "198.51.100.23")
    assert first["email"] == email_token(key, "someone@example.net")
    for name in PAYMENT_DETAILS:
        if name not in ("ip", "email"):
            assert first[name] == getattr(detailed, name), name
    assert got.loc[plain.payment.payment_id].isna().all()


def test_labels_for_unknown_payments_wait_up_to_a_bound_then_go_to_the_history_alone(
        recorder_settings: Settings) -> None:
    """Labels for payment_ids never scored must not fill Redis: past
    ``max_waiting_label_payments`` payments with labels waiting, a label for another unknown
    payment is recorded in the history and handed on (the dead-letter topic), not queued.
    A payment that comes frees its place."""
    from stores.label_join import WAITING_INDEX

    run = f"unk{uuid.uuid4().hex[:6]}"
    bounded = recorder_settings.model_copy(update={"max_waiting_label_payments": 3})
    labels = [label(f"{run}_{i:03d}", True, 2) for i in range(6)]
    handed: list[Label] = []

    async def hand_on(unjoined: list[Label]) -> None:
        handed.extend(unjoined)

    async def go() -> tuple[int, int, int, bool]:
        rec = Recorder(bounded, on_unjoined=hand_on)
        try:
            await rec.redis.command("DEL", WAITING_INDEX)  # earlier tests' waiting labels
            await rec.apply(labels[:3], T0)
            await rec.apply(labels[3:5], T0)  # the bound is reached: not queued
            full = await rec.join.waiting()
            await rec.record({scored(run, 0).payment.payment_id: scored(run, 0)})
            freed = await rec.join.waiting()
            await rec.apply(labels[5:], T0)  # room again
            refused_queue = await rec.redis.command("EXISTS", pending_key(labels[3].payment_id))
            return full, freed, await rec.join.waiting(), bool(refused_queue)
        finally:
            await rec.close()

    assert asyncio.run(go()) == (3, 2, 3, False)
    assert [lb.payment_id for lb in handed] == [labels[3].payment_id, labels[4].payment_id]
    assert raw_count(HistoryStore(bounded.history_dir), "labels_raw", run) == 6
