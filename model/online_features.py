"""The online feature store in Redis: its key layout, the scoring round trip, and how
labels and back-fills change it.

Keys (each expires after the longest window it serves, plus slack for late events):

- ``fs2:card:{card_id}``  sorted set: ``{payment_id}|{amount in thousandths}|{terminal_id}|
                          {country}|{merchant_category}`` per payment, scored by event
                          timestamp (written when scored)
- ``fs2:term:{terminal}`` sorted set: payment ids by event timestamp (written when scored)
- ``fs2:tfk:{terminal}``  sorted set: the terminal's payments now known as fraud, scored by
                          the time their fraud became known (see ``model.labels``)
- ``fs2:tfp:{terminal}``  the same payments, scored by their own timestamp
- ``fs2:cfk:{card_id}``   the card's payments now known as fraud, by when it became known

One Lua script per payment reads every window aggregate, checks idempotency and the
allow/block lists, and records the payment: one atomic round trip, so concurrent payments
on one card each see all those before them. The script returns aggregates, not rows: the
card's 30-day history is summed inside Redis, next to the data. The formulas on top are
``model.features.compute``, the same the history's point-in-time features use.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from redis.asyncio import Redis

from model.features import (
    CARD_FRAUD_WINDOW,
    CARD_HORIZON,
    CARD_WINDOWS,
    DAY,
    FEATURE_NAMES,
    FRESH_FRAUD_WINDOW,
    MATURITY,
    NOVELTY,
    RISK_WINDOWS,
    TERMINAL_HORIZON,
    Aggregates,
    compute,
    to_milli,
)
from model.idempotency import CHECK_LUA, decision_key
from model.policy import LIST_ENTITIES, LIST_LOOKUP_LUA, LIST_SEP
from model.redis_mux import RedisMux
from model.schemas import Payment

# Keep members this long past the longest window, so late (out-of-order) events still
# find the history they need.
SLACK = 2 * DAY
CARD_TTL = int(max(CARD_HORIZON, CARD_FRAUD_WINDOW) + SLACK)
TERMINAL_TTL = int(TERMINAL_HORIZON + SLACK)
# A payment's labels are kept while more may come (chargebacks up to ~120 days).
LABELS_TTL = int(180 * DAY)
PREFIX = "fs2"  # bumped with the layout: a store of another layout is not misread


def card_key(card_id: str) -> str:
    return f"{PREFIX}:card:{card_id}"


def terminal_key(terminal_id: str) -> str:
    return f"{PREFIX}:term:{terminal_id}"


def terminal_fraud_known_key(terminal_id: str) -> str:
    return f"{PREFIX}:tfk:{terminal_id}"


def terminal_fraud_paid_key(terminal_id: str) -> str:
    return f"{PREFIX}:tfp:{terminal_id}"


def card_fraud_known_key(card_id: str) -> str:
    return f"{PREFIX}:cfk:{card_id}"


def labels_key(payment_id: str) -> str:
    return f"{PREFIX}:lbl:{payment_id}"


def card_member(payment_id: str, amount: float, terminal_id: str, country: str | None,
                mcc: str | None) -> str:
    return f"{payment_id}|{to_milli(amount)}|{terminal_id}|{country or ''}|{mcc or ''}"


def _lua_list(values: Iterable[float]) -> str:
    return "{" + ", ".join(repr(float(v)) for v in values) + "}"


# Bounds are formatted with 17 significant digits: the exact double Python would compute.
# Window tests are written as the same expressions as in model.point_in_time.
_OBSERVE = (
    f"local DECISION_KEY_INDEX, LIST_ARG = 6, 6\n"
    f"local CARD_HORIZON, MATURITY = {CARD_HORIZON!r}, {MATURITY!r}\n"
    f"local CARD_SPANS = {_lua_list(CARD_WINDOWS.values())}\n"
    f"local RISK_SPANS = {_lua_list(RISK_WINDOWS.values())}\n"
    f"local RISK_MAX, FRESH, CARD_FRAUD = {max(RISK_WINDOWS.values())!r}, "
    f"{FRESH_FRAUD_WINDOW!r}, {CARD_FRAUD_WINDOW!r}\n"
    f"local SLACK, TERMINAL_HORIZON = {SLACK!r}, {TERMINAL_HORIZON!r}\n"
    + CHECK_LUA
    + f"""
local function exact(x) return string.format('%.17g', x) end
local ts = tonumber(ARGV[2])
local own = ARGV[3] .. '|'
-- the card: its earlier payments in (ts - 30d, ts]
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. exact(ts - CARD_HORIZON), ARGV[2],
                        'WITHSCORES')
local counts, sums = {{}}, {{}}
for i = 1, #CARD_SPANS do counts[i] = 0; sums[i] = 0 end
local prev, seen_t, seen_c, seen_m = nil, 0, 0, 0
local tenths, tenths_sq = 0, 0
if ARGV[7] == '' then seen_c = 1 end  -- not given: not new
if ARGV[8] == '' then seen_m = 1 end
for j = 1, #rows, 2 do
  local member = rows[j]
  if string.sub(member, 1, #own) ~= own then  -- an earlier attempt of this same payment
    local t = tonumber(rows[j + 1])
    local _, _, milli, terminal, country, mcc = string.find(
      member, '^.-|(-?%d+)|([^|]*)|([^|]*)|([^|]*)$')
    milli = tonumber(milli)
    for i, span in ipairs(CARD_SPANS) do
      if t > ts - span then counts[i] = counts[i] + 1; sums[i] = sums[i] + milli end
    end
    if t > ts - CARD_HORIZON then  -- to_tenths: integers, so the sums are exact
      local u = math.floor((milli + 50) / 100)
      tenths = tenths + u; tenths_sq = tenths_sq + u * u
    end
    if prev == nil or t > prev then prev = t end
    if terminal == ARGV[5] then seen_t = 1 end
    if country == ARGV[7] then seen_c = 1 end
    if mcc == ARGV[8] then seen_m = 1 end
  end
end
-- the terminal: its matured windows, and the fraud known in them now
local hi = ts - MATURITY
local tcounts, tfraud = {{}}, {{}}
for i, span in ipairs(RISK_SPANS) do
  tcounts[i] = redis.call('ZCOUNT', KEYS[2], '(' .. exact(hi - span), exact(hi))
  tfraud[i] = 0
end
local paid = redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. exact(hi - RISK_MAX), exact(hi),
                        'WITHSCORES')
for j = 1, #paid, 2 do
  local known = redis.call('ZSCORE', KEYS[3], paid[j])
  if known and tonumber(known) <= ts then
    local p = tonumber(paid[j + 1])
    for i, span in ipairs(RISK_SPANS) do
      if p > hi - span then tfraud[i] = tfraud[i] + 1 end
    end
  end
end
local fresh = redis.call('ZCOUNT', KEYS[3], '(' .. exact(ts - FRESH), ARGV[2])
local cfraud = redis.call('ZCOUNT', KEYS[5], '(' .. exact(ts - CARD_FRAUD), ARGV[2])
-- record this payment
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. exact(ts - CARD_HORIZON - SLACK))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. exact(ts - TERMINAL_HORIZON - SLACK))
redis.call('EXPIRE', KEYS[1], {CARD_TTL})
redis.call('EXPIRE', KEYS[2], {TERMINAL_TTL})
"""
    + LIST_LOOKUP_LUA
    + """
local prev_s = false
if prev ~= nil then prev_s = exact(prev) end
return {1, counts, sums, prev_s, {seen_t, seen_c, seen_m}, cfraud, tcounts, tfraud, fresh, hits,
        {tenths, tenths_sq}}
"""
)

# A payment's labels are kept (``labels_key``) and its fraud spell worked out from all of
# them each time one is added, by the rule of ``model.labels``: the latest label decides,
# fraud wins a tie, repeated fraud keeps the spell's start. Applying a label is then
# idempotent and independent of arrival order: a redelivered label, or a chargeback that
# reaches the stream after the analyst's later "not fraud", ends in the state the history
# says. A payment back-filled as fraud has no labels kept; its spell's start seeds them.
_APPLY_LABEL = f"""
local pid, paid = ARGV[1], ARGV[4]
if redis.call('EXISTS', KEYS[4]) == 0 then
  local start = redis.call('ZSCORE', KEYS[1], pid)
  if start then
    start = string.format('%.17g', tonumber(start))  -- as Python's format(x, '.17g')
    redis.call('ZADD', KEYS[4], start, start .. '|1')
  end
end
-- members 'reported_at|0 or 1': at equal times '|0' sorts first, so fraud is applied last
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[3] .. '|' .. ARGV[2])
local start = false
for _, member in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  local at, fraud = string.match(member, '^(.*)|([01])$')
  if fraud == '0' then start = false elseif not start then start = at end
end
if start then
  redis.call('ZADD', KEYS[1], start, pid)
  redis.call('ZADD', KEYS[2], paid, pid)
  redis.call('ZADD', KEYS[3], start, pid)
else
  redis.call('ZREM', KEYS[1], pid)
  redis.call('ZREM', KEYS[2], pid)
  redis.call('ZREM', KEYS[3], pid)
end
local now = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.17g', now - {TERMINAL_TTL}))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%.17g', now - {TERMINAL_TTL}))
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. string.format('%.17g', now - {CARD_TTL}))
redis.call('EXPIRE', KEYS[1], {TERMINAL_TTL})
redis.call('EXPIRE', KEYS[2], {TERMINAL_TTL})
redis.call('EXPIRE', KEYS[3], {CARD_TTL})
redis.call('EXPIRE', KEYS[4], {LABELS_TTL})
return 1
"""


@dataclass(frozen=True, slots=True)
class PaymentRef:
    """What a label needs to know of its payment to update the features."""

    terminal_id: str
    card_id: str
    ts: float

    def encode(self) -> str:
        return f"{self.terminal_id}|{self.card_id}|{self.ts!r}"

    @classmethod
    def decode(cls, raw: bytes | str) -> PaymentRef:
        text = raw.decode() if isinstance(raw, bytes) else raw
        terminal, card, ts = text.split("|")
        return cls(terminal, card, float(ts))


@dataclass(frozen=True, slots=True)
class LabelUpdate:
    payment_id: str
    payment: PaymentRef
    is_fraud: bool
    reported_at: float


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
    """The online features in Redis. With a ``mux``, ``observe`` goes through that
    pipelined connection (the scoring path); everything else through ``redis``."""

    def __init__(self, redis: Redis, mux: RedisMux | None = None) -> None:
        self.redis = redis
        self.mux = mux
        self._observe = redis.register_script(_OBSERVE)
        self._observe_src = _OBSERVE.encode()
        self._apply_label = redis.register_script(_APPLY_LABEL)

    async def observe(
        self, payment: Payment, payload_hash: str = "", check_lists: bool = False
    ) -> Observation:
        """Read every online feature of ``payment`` and record it, in one atomic round trip.

        With a ``payload_hash``, a payment_id seen before is not counted again: the
        previous record is returned instead. With ``check_lists``, the payment's entities
        are looked up in the allow/block lists in the same trip.
        """
        ts = payment.ts
        pid = payment.payment_id
        values = ""
        if check_lists:
            values = LIST_SEP.join("" if (v := getattr(payment, e)) is None else str(v)
                                   for e in LIST_ENTITIES)
        keys = [card_key(payment.card_id), terminal_key(payment.terminal_id),
                terminal_fraud_known_key(payment.terminal_id),
                terminal_fraud_paid_key(payment.terminal_id),
                card_fraud_known_key(payment.card_id), decision_key(pid)]
        args = [payload_hash, repr(ts), pid,
                card_member(pid, payment.amount, payment.terminal_id, payment.country,
                            payment.merchant_category),
                payment.terminal_id, values, payment.country or "",
                payment.merchant_category or ""]
        if self.mux is not None:
            res = await self.mux.evalsha(self._observe_src, keys, args)
        else:
            res = await self._observe(keys=keys, args=args)
        if res[0] == 0:
            return Observation(previous=res[1])
        _, counts, sums, prev, seen, cfraud, tcounts, tfraud, fresh, hits, tenths = res
        agg = Aggregates(
            ts=ts,
            amount=payment.amount,
            card_count=dict(zip(CARD_WINDOWS, counts, strict=True)),
            card_milli=dict(zip(CARD_WINDOWS, sums, strict=True)),
            card_tenths=tenths[0],
            card_tenths_sq=tenths[1],
            card_prev_ts=float(prev) if prev else float("nan"),
            card_seen=dict(zip(NOVELTY, seen, strict=True)),
            card_fraud=cfraud,
            terminal_count=dict(zip(RISK_WINDOWS, tcounts, strict=True)),
            terminal_fraud=dict(zip(RISK_WINDOWS, tfraud, strict=True)),
            terminal_fresh=fresh,
        )
        values_by_name = compute(agg)
        return Observation(
            features={name: float(values_by_name[name]) for name in FEATURE_NAMES},
            list_hits=tuple(_hit(h, payment) for h in hits),
        )

    async def apply_label(self, update: LabelUpdate) -> None:
        """Add a label (fraud, or a "not fraud" verdict) to the payment's, and update its
        terminal's and card's fraud accordingly. Idempotent, and the order labels arrive in
        does not matter (see ``_APPLY_LABEL``)."""
        ref = update.payment
        await self._apply_label(
            keys=[terminal_fraud_known_key(ref.terminal_id),
                  terminal_fraud_paid_key(ref.terminal_id), card_fraud_known_key(ref.card_id),
                  labels_key(update.payment_id)],
            args=[update.payment_id, "1" if update.is_fraud else "0",
                  format(float(update.reported_at), ".17g"), repr(float(ref.ts))],
        )

    async def backfill(
        self,
        payments: Iterable[tuple[str, float, str, str, float, str | None, str | None]],
        fraud: Iterable[tuple[str, float, str, str, float]],
        chunk: int = 5000,
    ) -> int:
        """Load recorded history into the store, as if it had been scored live.

        ``payments``: (payment_id, ts, card_id, terminal_id, amount, country,
        merchant_category) of the recent past;
        ``fraud``: (payment_id, ts, card_id, terminal_id, known_since) of the payments
        fraud now. Idempotent: members are keyed by payment_id.
        """
        count = 0
        pipe = self.redis.pipeline(transaction=False)
        for pid, ts, card, terminal, amount, country, mcc in payments:
            pipe.zadd(card_key(card), {card_member(pid, amount, terminal, country, mcc): ts})
            pipe.expire(card_key(card), CARD_TTL)
            pipe.zadd(terminal_key(terminal), {pid: ts})
            pipe.expire(terminal_key(terminal), TERMINAL_TTL)
            count += 1
            if count % chunk == 0:
                await pipe.execute()
        for pid, ts, card, terminal, known in fraud:
            pipe.zadd(terminal_fraud_known_key(terminal), {pid: known})
            pipe.zadd(terminal_fraud_paid_key(terminal), {pid: ts})
            pipe.zadd(card_fraud_known_key(card), {pid: known})
            pipe.expire(terminal_fraud_known_key(terminal), TERMINAL_TTL)
            pipe.expire(terminal_fraud_paid_key(terminal), TERMINAL_TTL)
            pipe.expire(card_fraud_known_key(card), CARD_TTL)
        await pipe.execute()
        return count
