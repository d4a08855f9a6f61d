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
from model.redis_mux import RedisMux
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


# How long a payment_id's decision is kept for replays (gateways retry within minutes).
IDEMPOTENCY_WINDOW = DAY
# How long a first call may hold a payment_id before a retry stops waiting on it.
PENDING_TTL = 30



# Everything one payment needs from Redis, in one atomic round trip (a Lua script):
# the idempotency check, the card's and terminal's history, the terminal's fraud labels,
# the allow/block list look-ups, and recording the payment in the counters. The windows
# are written into the script, so a call carries only the payment's own values: argument
# packing, not Redis, was the largest cost of the call. Bounds are formatted with 17
# significant digits, the exact double that Python would send.
LIST_ENTITIES = ("card_id", "terminal_id", "country", "merchant_category", "currency",
                 "channel")
_SEP = "\x1f"

_OBSERVE = (
    """
local function exact(x) return string.format('%.17g', x) end
if ARGV[1] ~= '' then
  local stored = redis.call('GET', KEYS[4])
  if stored then return {0, stored} end
  redis.call('SET', KEYS[4], 'pending|' .. ARGV[1], 'EX', PENDING_TTL)
end
local ts = tonumber(ARGV[2])
local out = {1}
out[2] = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. exact(ts - CARD_HORIZON), ARGV[2],
                    'WITHSCORES')
local counts = {}
for i, span in ipairs(TERMINAL_SPANS) do
  counts[i] = redis.call('ZCOUNT', KEYS[2], '(' .. exact(ts - span), ARGV[2])
end
out[3] = counts
out[4] = redis.call('ZSCORE', KEYS[2], ARGV[3])
out[5] = redis.call('ZCOUNT', KEYS[3], '(' .. exact(ts - RISK_WINDOW), ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. exact(ts - CARD_HORIZON - SLACK))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. exact(ts - TERMINAL_HORIZON - SLACK))
redis.call('EXPIRE', KEYS[1], CARD_TTL)
redis.call('EXPIRE', KEYS[2], TERMINAL_TTL)
local hits = {}
if ARGV[5] ~= '' then
  local i = 0
  for value in string.gmatch(ARGV[5] .. SEP, '([^' .. SEP .. ']*)' .. SEP) do
    i = i + 1
    if value ~= '' then
      for _, kind in ipairs({'block', 'allow'}) do
        if redis.call('SISMEMBER', 'fs:list:' .. kind .. ':' .. ENTITIES[i], value) == 1 then
          hits[#hits + 1] = kind .. '|' .. ENTITIES[i]
        end
      end
    end
  end
end
out[6] = hits
return out
"""
)
_OBSERVE = (
    "local CARD_HORIZON, RISK_WINDOW = " + repr(CARD_HORIZON) + ", " + repr(RISK_WINDOW) + "\n"
    + "local SLACK, TERMINAL_HORIZON = " + repr(SLACK) + ", " + repr(TERMINAL_HORIZON) + "\n"
    + "local CARD_TTL, TERMINAL_TTL = " + str(int(CARD_HORIZON + SLACK)) + ", "
    + str(int(TERMINAL_HORIZON + SLACK)) + "\n"
    + "local TERMINAL_SPANS = {" + ", ".join(map(repr, TERMINAL_WINDOWS.values())) + "}\n"
    + "local ENTITIES = {" + ", ".join(f"'{e}'" for e in LIST_ENTITIES) + "}\n"
    + "local SEP = '" + _SEP + "'\n"
    + "local PENDING_TTL = " + str(PENDING_TTL) + "\n"
    + _OBSERVE
)

def decision_key(payment_id: str) -> str:
    return f"fs:dec:{payment_id}"


def list_key(kind: str, entity: str) -> str:
    """Redis set of the values of ``entity`` (card_id, country...) on the allow/block list."""
    return f"fs:list:{kind}:{entity}"


@dataclass(frozen=True)
class Observation:
    """What Redis said about one payment.

    ``previous`` is set when the payment_id was seen before (``pending|hash`` or
    ``done|hash|response``); then nothing was read or recorded.
    """

    features: dict[str, float] | None = None
    previous: bytes | None = None
    list_hits: tuple[tuple[str, str, str], ...] = ()  # (kind, entity, value)


def _hit(raw: bytes, payment: Payment) -> tuple[str, str, str]:
    kind, entity = raw.decode().split("|")
    return kind, entity, str(getattr(payment, entity))


class OnlineStore:
    """The online features in Redis. With a ``mux``, the scoring path's calls (``observe``
    and the decisions, which need it) go through that pipelined connection; the rest
    through ``redis``."""

    def __init__(self, redis: Redis, mux: RedisMux | None = None) -> None:
        self.redis = redis
        self.mux = mux
        self._observe = redis.register_script(_OBSERVE)
        self._observe_src = _OBSERVE.encode()

    async def observe(
        self, payment: Payment, payload_hash: str = "", check_lists: bool = False
    ) -> Observation:
        """Read every online feature of ``payment`` and record it, in one atomic round trip.

        The script runs atomically, so concurrent payments on the same card each see all
        the ones before them. With a ``payload_hash``, a payment_id seen before is not
        counted again: the previous record is returned instead. With ``check_lists``, the
        payment's entities are looked up in the allow/block lists in the same trip.
        """
        ts = payment.ts
        pid = payment.payment_id
        values = ""
        if check_lists:
            values = _SEP.join("" if (v := getattr(payment, e)) is None else str(v)
                               for e in LIST_ENTITIES)
        keys = [card_key(payment.card_id), terminal_key(payment.terminal_id),
                terminal_fraud_key(payment.terminal_id), decision_key(pid)]
        args = [payload_hash, repr(ts), pid,
                _card_member(pid, payment.amount, payment.terminal_id), values]
        if self.mux is not None:
            res = await self.mux.evalsha(self._observe_src, keys, args)
        else:
            res = await self._observe(keys=keys, args=args)
        if res[0] == 0:
            return Observation(previous=res[1])
        _, card_rows, term_counts, own_term_ts, fraud_count, hits = res

        prior_ts: list[float] = []
        prior_amount: list[float] = []
        prior_terminal: list[str] = []
        # WITHSCORES inside a script comes back flat: member, score, member, score...
        for member, score in zip(card_rows[::2], card_rows[1::2], strict=True):
            member_pid, amount, terminal = member.decode().split("|", 2)
            if member_pid == pid:  # recorded by an earlier attempt: not its own history
                continue
            prior_ts.append(float(score))
            prior_amount.append(float(amount))
            prior_terminal.append(terminal)
        own = float(own_term_ts) if own_term_ts is not None else None
        counts: dict[str, int] = {}
        for (w, span), count in zip(TERMINAL_WINDOWS.items(), term_counts, strict=True):
            self_counted = own is not None and ts - span < own <= ts
            counts[w] = int(count) - (1 if self_counted else 0)

        card = card_features(
            ts,
            payment.amount,
            payment.terminal_id,
            np.asarray(prior_ts, dtype=float),
            np.asarray(prior_amount, dtype=float),
            prior_terminal,
        )
        terminal = terminal_features(ts, counts, int(fraud_count))
        return Observation(
            features=feature_vector(ts, payment.amount, card, terminal),
            list_hits=tuple(_hit(h, payment) for h in hits),
        )

    async def observe_and_compute(self, payment: Payment) -> dict[str, float]:
        """The features alone (no idempotency record, no list look-ups)."""
        obs = await self.observe(payment)
        assert obs.features is not None
        return obs.features

    async def record_decisions(self, decisions: Iterable[tuple[str, str, bytes]]) -> None:
        """Keep the answers given, for replays: (payment_id, payload hash, response body)
        each, in one round trip."""
        commands = [("SET", decision_key(payment_id),
                     b"done|" + payload_hash.encode() + b"|" + body,
                     "EX", int(IDEMPOTENCY_WINDOW)) for payment_id, payload_hash, body in decisions]
        for reply in await self._scoring_mux().execute_many(commands):
            if isinstance(reply, Exception):
                raise reply

    async def previous_decision(self, payment_id: str) -> bytes | None:
        return await self._scoring_mux().execute("GET", decision_key(payment_id))  # type: ignore[no-any-return]

    def _scoring_mux(self) -> RedisMux:
        if self.mux is None:
            raise RuntimeError("the decisions are the scoring path's: build OnlineStore "
                               "with a RedisMux")
        return self.mux

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

    async def remember_payments(self, payments: list[tuple[str, str]]) -> list[list[bytes]]:
        """Record each (payment_id, terminal_id); returns, per payment, the labels that were
        waiting for it. One round trip for the whole batch."""
        if not payments:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for payment_id, terminal_id in payments:
            await self._remember(keys=[payment_key(payment_id), pending_key(payment_id)],
                                 args=[terminal_id, int(JOIN_HORIZON)], client=pipe)
        return list(await pipe.execute())

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
