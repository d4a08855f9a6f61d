"""The online feature store in Redis: its key layout and every operation on it.

Keys (all expire after the longest window they serve, plus slack for replays):

- ``fs:card:{card_id}``       sorted set, one member ``{payment_id}|{amount}|{terminal}`` per
                              payment, scored by event timestamp; written by the API.
- ``fs:term:{terminal_id}``   sorted set of payment ids by event timestamp; API, at scoring time.
- ``fs:tfraud:{terminal_id}`` sorted set of fraudulent payment ids by label ``reported_at``;
                              written by the stream processor as labels arrive.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from redis.asyncio import Redis

from model.features import (
    CARD_HORIZON,
    DAY,
    RISK_WINDOW,
    TERMINAL_HORIZON,
    TERMINAL_WINDOWS,
    card_features,
    feature_vector,
    terminal_features,
)
from model.schemas import Payment

# Keep members this long past the longest window, so late (out-of-order) events still
# find the history they need.
SLACK = 2 * DAY


def card_key(card_id: str) -> str:
    return f"fs:card:{card_id}"


def terminal_key(terminal_id: str) -> str:
    return f"fs:term:{terminal_id}"


def terminal_fraud_key(terminal_id: str) -> str:
    return f"fs:tfraud:{terminal_id}"


def _card_member(payment_id: str, amount: float, terminal_id: str) -> str:
    return f"{payment_id}|{float(amount)!r}|{terminal_id}"


@dataclass(frozen=True, slots=True)
class TerminalFraudUpdate:
    terminal_id: str
    payment_id: str
    is_fraud: bool
    reported_at: float


class OnlineStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def observe_and_compute(self, payment: Payment) -> dict[str, float]:
        """Read every online feature of ``payment`` and record it, in one atomic round trip.

        MULTI/EXEC makes the read and the counter update one step, so concurrent payments
        on the same card each see all the ones before them. A retried payment_id finds
        itself already recorded and is left out of its own history, so it never counts twice.
        """
        ts = payment.ts
        pid = payment.payment_id
        ckey, tkey, fkey = (
            card_key(payment.card_id),
            terminal_key(payment.terminal_id),
            terminal_fraud_key(payment.terminal_id),
        )
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrangebyscore(ckey, f"({ts - CARD_HORIZON}", ts, withscores=True)
        for span in TERMINAL_WINDOWS.values():
            pipe.zcount(tkey, f"({ts - span}", ts)
        pipe.zscore(tkey, pid)
        pipe.zcount(fkey, f"({ts - RISK_WINDOW}", ts)
        pipe.zadd(ckey, {_card_member(pid, payment.amount, payment.terminal_id): ts})
        pipe.zadd(tkey, {pid: ts})
        pipe.zremrangebyscore(ckey, "-inf", f"({ts - CARD_HORIZON - SLACK}")
        pipe.zremrangebyscore(tkey, "-inf", f"({ts - TERMINAL_HORIZON - SLACK}")
        pipe.expire(ckey, int(CARD_HORIZON + SLACK))
        pipe.expire(tkey, int(TERMINAL_HORIZON + SLACK))
        res = await pipe.execute()

        card_rows: list[tuple[bytes, float]] = res[0]
        n_windows = len(TERMINAL_WINDOWS)
        term_counts = res[1 : 1 + n_windows]
        own_term_ts = res[1 + n_windows]
        fraud_count = int(res[2 + n_windows])

        prior_ts: list[float] = []
        prior_amount: list[float] = []
        prior_terminal: list[str] = []
        for member, score in card_rows:
            member_pid, amount, terminal = member.decode().split("|", 2)
            if member_pid == pid:
                continue
            prior_ts.append(score)
            prior_amount.append(float(amount))
            prior_terminal.append(terminal)
        counts: dict[str, int] = {}
        for (w, span), count in zip(TERMINAL_WINDOWS.items(), term_counts, strict=True):
            self_counted = own_term_ts is not None and ts - span < own_term_ts <= ts
            counts[w] = int(count) - (1 if self_counted else 0)

        card = card_features(
            ts,
            payment.amount,
            payment.terminal_id,
            np.asarray(prior_ts, dtype=float),
            np.asarray(prior_amount, dtype=float),
            prior_terminal,
        )
        terminal = terminal_features(ts, counts, fraud_count)
        return feature_vector(ts, payment.amount, card, terminal)

    async def backfill(
        self,
        payments: Iterable[tuple[str, float, str, str, float]],
        fraud: Iterable[tuple[str, str, float]],
        chunk: int = 5000,
    ) -> int:
        """Load recorded history into the store, as if it had been scored live.

        ``payments``: (payment_id, ts, card_id, terminal_id, amount) of the last 30 days;
        ``fraud``: (terminal_id, payment_id, reported_at) of payments currently labelled
        fraud. Idempotent: members are keyed by payment_id.
        """
        count = 0
        pipe = self.redis.pipeline(transaction=False)
        for pid, ts, card, terminal, amount in payments:
            pipe.zadd(card_key(card), {_card_member(pid, amount, terminal): ts})
            pipe.expire(card_key(card), int(CARD_HORIZON + SLACK))
            pipe.zadd(terminal_key(terminal), {pid: ts})
            pipe.expire(terminal_key(terminal), int(TERMINAL_HORIZON + SLACK))
            # So that a label arriving later for this payment finds its terminal.
            pipe.set(payment_key(pid), terminal, ex=int(JOIN_HORIZON))
            count += 1
            if count % chunk == 0:
                await pipe.execute()
        for terminal, pid, reported_at in fraud:
            pipe.zadd(terminal_fraud_key(terminal), {pid: reported_at})
            pipe.expire(terminal_fraud_key(terminal), int(RISK_WINDOW + SLACK))
        await pipe.execute()
        return count

    async def apply_terminal_label(self, update: TerminalFraudUpdate) -> None:
        """Record (or, for a "not fraud" verdict, withdraw) a fraud label on a terminal.

        Keyed by payment_id, so a redelivered label changes nothing.
        """
        key = terminal_fraud_key(update.terminal_id)
        pipe = self.redis.pipeline(transaction=True)
        if update.is_fraud:
            pipe.zadd(key, {update.payment_id: update.reported_at})
        else:
            pipe.zrem(key, update.payment_id)
        pipe.zremrangebyscore(key, "-inf", f"({update.reported_at - RISK_WINDOW - SLACK}")
        pipe.expire(key, int(RISK_WINDOW + SLACK))
        await pipe.execute()


# ---- label join state, kept by the stream processor ------------------------------------
# A label may reach the stream before its payment does (separate topics, separate agents).
# Both sides run as Lua scripts, atomic in Redis, so a label is either joined at once or
# queued and then picked up by the payment: never both, never neither.
JOIN_HORIZON = 180 * DAY

_REMEMBER_PAYMENT = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local pending = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
return pending
"""

_JOIN_OR_QUEUE = """
local terminal = redis.call('GET', KEYS[1])
if terminal then return terminal end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return false
"""


def payment_key(payment_id: str) -> str:
    return f"fs:pay:{payment_id}"


def pending_key(payment_id: str) -> str:
    return f"fs:pending:{payment_id}"


def recorded_key(payment_id: str) -> str:
    return f"fs:hist:{payment_id}"


class JoinState:
    """Which terminal each payment was at, labels waiting for their payment, and which
    payments the history already holds."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._remember = redis.register_script(_REMEMBER_PAYMENT)
        self._join = redis.register_script(_JOIN_OR_QUEUE)

    async def remember_payment(self, payment_id: str, terminal_id: str) -> list[bytes]:
        """Record the payment's terminal; returns the labels that were waiting for it."""
        return await self._remember(
            keys=[payment_key(payment_id), pending_key(payment_id)],
            args=[terminal_id, int(JOIN_HORIZON)],
        )

    async def terminal_or_queue(self, payment_id: str, raw_label: bytes) -> str | None:
        """The payment's terminal, or None after queueing the label for its payment."""
        terminal = await self._join(
            keys=[payment_key(payment_id), pending_key(payment_id)],
            args=[raw_label, int(JOIN_HORIZON)],
        )
        return terminal.decode() if terminal else None

    async def already_recorded(self, payment_ids: list[str]) -> set[str]:
        if not payment_ids:
            return set()
        flags = await self.redis.mget([recorded_key(p) for p in payment_ids])
        return {p for p, f in zip(payment_ids, flags, strict=True) if f is not None}

    async def mark_recorded(self, payment_ids: list[str]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for pid in payment_ids:
            pipe.set(recorded_key(pid), 1, ex=int(JOIN_HORIZON))
        await pipe.execute()
