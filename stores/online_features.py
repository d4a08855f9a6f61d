"""The online feature store in Redis: its key layout, the scoring round trip, and how
labels and back-fills change it.

Keys (each expires after the longest window it serves, plus slack for late events). The
part in braces is the Redis Cluster hash tag: a card's keys share one slot, a terminal's
another, so every script below touches one slot and runs on a cluster as on one server.

- ``fs3:card:{c:<card>}``  sorted set: ``{payment_id}|{amount in thousandths}|{terminal_id}|
                           {country}|{merchant_category}`` per payment, scored by event
                           timestamp (written when scored)
- ``fs3:cfk:{c:<card>}``   the card's payments now known as fraud, by when it became known
- ``fs3:cfv:{c:<card>}``   hash: per payment, how many labels its ``cfk`` entry reflects
- ``fs:dec:{c:<card>}:<payment_id>``  the idempotency record (``stores.idempotency``)
- ``fs3:term:{t:<terminal>}`` sorted set: payment ids by event timestamp (written when scored)
- ``fs3:tfk:{t:<terminal>}``  the terminal's payments now known as fraud, scored by the time
                              their fraud became known (see ``model.labels``)
- ``fs3:tfp:{t:<terminal>}``  the same payments, scored by their own timestamp
- ``fs3:lbl:{t:<terminal>}:<payment_id>``  the payment's labels

Scoring a payment is one write of up to four calls, all in flight together (on a cluster,
one write per node serving them):

- the card's script: the idempotency check, every card window, and the payment recorded in
  them. **Atomic per card**: concurrent payments on one card each see all those before them,
  and a retried payment_id is caught in the same step that would count it twice;
- the terminal's script: the matured windows and their known fraud, and the payment id
  recorded (read-write, but the windows it reads end a week before any payment it records);
- the payment_id's owner (``SET NX GET``): the card it was first scored on. A payment_id
  sent again with another card is a conflict the card's script cannot see from its slot;
  its card and terminal entries are then taken back (``_FORGET_CARD``);
- the allow/block lists (``stores.policy_store``), in their own slot.

Each script returns aggregates, not rows: the card's 30-day history is summed inside Redis,
next to the data. The formulas on top are ``model.features.compute``, the same the
history's point-in-time features use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

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
from model.policy import list_values
from model.schemas import Payment
from stores.catalogue_store import CatalogueStore
from stores.idempotency import (
    CHECK_LUA,
    IDEMPOTENCY_WINDOW,
    PENDING_MARGIN_MS,
    decision_key,
    owner_key,
)
from stores.policy_store import LIST_KEYS, LIST_LOOKUP_LUA
from stores.redis_client import RedisClient
from stores.redis_mux import Step

# Keep members this long past the longest window, so late (out-of-order) events still
# find the history they need.
SLACK = 2 * DAY
CARD_TTL = int(max(CARD_HORIZON, CARD_FRAUD_WINDOW) + SLACK)
TERMINAL_TTL = int(TERMINAL_HORIZON + SLACK)
# A payment's labels are kept while more may come (chargebacks up to ~120 days).
LABELS_TTL = int(180 * DAY)
PREFIX = "fs3"  # bumped with the layout: a store of another layout is not misread


def card_tag(card_id: str) -> str:
    return f"{{c:{card_id}}}"


def terminal_tag(terminal_id: str) -> str:
    return f"{{t:{terminal_id}}}"


def card_key(card_id: str) -> str:
    return f"{PREFIX}:card:{card_tag(card_id)}"


def card_fraud_known_key(card_id: str) -> str:
    return f"{PREFIX}:cfk:{card_tag(card_id)}"


def card_state_key(card_id: str) -> str:
    return f"{PREFIX}:cagg:{card_tag(card_id)}"


def card_seen_key(card_id: str) -> str:
    return f"{PREFIX}:cseen:{card_tag(card_id)}"


def card_label_count_key(card_id: str) -> str:
    return f"{PREFIX}:cfv:{card_tag(card_id)}"


def terminal_key(terminal_id: str) -> str:
    return f"{PREFIX}:term:{terminal_tag(terminal_id)}"


def terminal_fraud_known_key(terminal_id: str) -> str:
    return f"{PREFIX}:tfk:{terminal_tag(terminal_id)}"


def terminal_fraud_paid_key(terminal_id: str) -> str:
    return f"{PREFIX}:tfp:{terminal_tag(terminal_id)}"


def labels_key(terminal_id: str, payment_id: str) -> str:
    return f"{PREFIX}:lbl:{terminal_tag(terminal_id)}:{payment_id}"


def card_member(payment_id: str, amount: float, terminal_id: str, country: str | None,
                mcc: str | None) -> str:
    return f"{payment_id}|{to_milli(amount)}|{terminal_id}|{country or ''}|{mcc or ''}"


def _lua_list(values: Iterable[float]) -> str:
    return "{" + ", ".join(repr(float(v)) for v in values) + "}"


# Bounds are formatted with 17 significant digits: the exact double Python would compute.
# Window tests are written as the same expressions as in model.point_in_time.
_EXACT = "local function exact(x) return string.format('%.17g', x) end\n"
# The aggregates are integers (counts, thousandths, tenths): printed as such, which is
# cheaper in Redis than the 17 digits of a double and reads back as the same number.
_INT = "local function int(x) return string.format('%d', x) end\n"

# The card's windows are kept as running aggregates (``card_state_key``): per window its
# count and amount sum, the 30-day tenths and squared tenths, and the newest payment's
# time. A payment at or after the newest one (the usual case) reads the aggregates and the
# few payments that left each window since then: a cost that does not grow with the card's
# activity. A late payment (before the newest), a retry of one already counted, or a card
# with no aggregates yet (back-filled, or taken back by a conflict) sums the 30 days
# instead, as the aggregates' definition says; the two ways give the same integers, so
# the features stay equal to the history's point-in-time ones.
_STATE_FIELDS = ["last"] + [f"n{i}" for i in range(1, len(CARD_WINDOWS) + 1)] + \
    [f"m{i}" for i in range(1, len(CARD_WINDOWS) + 1)] + ["u", "uu"]

# KEYS: card, card fraud known, decision, card state, card seen values. ARGV: payload hash,
# ts, payment_id, member, terminal, country, merchant category, pending mark's life (ms).
_OBSERVE_CARD = (
    f"local DECISION_KEY_INDEX, PENDING_ARG = 3, 8\n"
    f"local CARD_HORIZON = {CARD_HORIZON!r}\n"
    f"local CARD_SPANS = {_lua_list(CARD_WINDOWS.values())}\n"
    f"local CARD_FRAUD, SLACK = {CARD_FRAUD_WINDOW!r}, {SLACK!r}\n"
    f"local STATE_FIELDS = {{{', '.join(repr(f) for f in _STATE_FIELDS)}}}\n"
    + CHECK_LUA + _EXACT + _INT
    + f"""
local ts = tonumber(ARGV[2])
local own = ARGV[3] .. '|'
local W = #CARD_SPANS
local function parse(member)
  local _, _, milli, terminal, country, mcc = string.find(
    member, '^.-|(-?%d+)|([^|]*)|([^|]*)|([^|]*)$')
  return tonumber(milli), terminal, country, mcc
end
local function tenth(milli) return math.floor((milli + 50) / 100) end  -- to_tenths
local counts, sums = {{}}, {{}}
for i = 1, W do counts[i] = 0; sums[i] = 0 end
local prev, seen_t, seen_c, seen_m = nil, 0, 0, 0
local SEEN = {{'t|' .. ARGV[5], 'c|' .. ARGV[6], 'm|' .. ARGV[7]}}
local had = nil  -- the card's newest times of SEEN, when read
local tenths, tenths_sq = 0, 0
local st = redis.call('HMGET', KEYS[4], unpack(STATE_FIELDS))
local last = tonumber(st[1])
local retry = redis.call('ZSCORE', KEYS[1], ARGV[4])
local newest = {{}}  -- value -> newest time seen, when the seen values are rebuilt
-- (a card idle for 30 days has nothing left in its windows: summed, to be safe from expiry)
if last ~= nil and ts >= last and last > ts - CARD_HORIZON and not retry then
  -- the windows ending at ts: the aggregates ending at last, less what left since
  for i = 1, W do counts[i] = tonumber(st[1 + i]); sums[i] = tonumber(st[1 + W + i]) end
  tenths, tenths_sq = tonumber(st[2 + 2 * W]), tonumber(st[3 + 2 * W])
  if ts > last then
    for i, span in ipairs(CARD_SPANS) do
      local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. exact(last - span),
                              exact(ts - span))
      for _, member in ipairs(gone) do
        local milli = parse(member)
        counts[i] = counts[i] - 1; sums[i] = sums[i] - milli
        if span == CARD_HORIZON then
          local u = tenth(milli)
          tenths = tenths - u; tenths_sq = tenths_sq - u * u
        end
      end
    end
  end
  if last > ts - CARD_HORIZON then prev = last end
  had = redis.call('HMGET', KEYS[5], unpack(SEEN))
  if had[1] and tonumber(had[1]) > ts - CARD_HORIZON then seen_t = 1 end
  if had[2] and tonumber(had[2]) > ts - CARD_HORIZON then seen_c = 1 end
  if had[3] and tonumber(had[3]) > ts - CARD_HORIZON then seen_m = 1 end
else
  -- the card's earlier payments in (ts - 30d, ts], summed
  local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. exact(ts - CARD_HORIZON), ARGV[2],
                          'WITHSCORES')
  for j = 1, #rows, 2 do
    local member = rows[j]
    if string.sub(member, 1, #own) ~= own then  -- an earlier attempt of this same payment
      local t = tonumber(rows[j + 1])
      local milli, terminal, country, mcc = parse(member)
      for i, span in ipairs(CARD_SPANS) do
        if t > ts - span then counts[i] = counts[i] + 1; sums[i] = sums[i] + milli end
      end
      if t > ts - CARD_HORIZON then  -- integers, so the sums are exact
        local u = tenth(milli)
        tenths = tenths + u; tenths_sq = tenths_sq + u * u
      end
      if prev == nil or t > prev then prev = t end
      if terminal == ARGV[5] then seen_t = 1 end
      if country == ARGV[6] then seen_c = 1 end
      if mcc == ARGV[7] then seen_m = 1 end
      for _, v in ipairs({{'t|' .. terminal, 'c|' .. country, 'm|' .. mcc}}) do
        if newest[v] == nil or t > newest[v] then newest[v] = t end
      end
    end
  end
end
if ARGV[6] == '' then seen_c = 1 end  -- not given: not new
if ARGV[7] == '' then seen_m = 1 end
local cfraud = redis.call('ZCOUNT', KEYS[2], '(' .. exact(ts - CARD_FRAUD), ARGV[2])
-- record this payment, and keep the aggregates true
if not retry then
  local milli = parse(ARGV[4])
  local u = tenth(milli)
  local function start_at_ts()
    local flat = {{'last', ARGV[2]}}
    for i = 1, W do
      flat[#flat + 1] = 'n' .. i; flat[#flat + 1] = int(counts[i] + 1)
      flat[#flat + 1] = 'm' .. i; flat[#flat + 1] = int(sums[i] + milli)
    end
    flat[#flat + 1] = 'u'; flat[#flat + 1] = int(tenths + u)
    flat[#flat + 1] = 'uu'; flat[#flat + 1] = int(tenths_sq + u * u)
    redis.call('HSET', KEYS[4], unpack(flat))
  end
  local keep_seen = true
  if last == nil then
    if redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[2], '+inf') == 0 then
      -- no aggregates yet: those of the windows ending at ts, from the sums just made
      start_at_ts()
      redis.call('DEL', KEYS[5])
      local flat = {{}}
      for v, t in pairs(newest) do
        flat[#flat + 1] = v; flat[#flat + 1] = exact(t)
        if #flat >= 1000 then redis.call('HSET', KEYS[5], unpack(flat)); flat = {{}} end
      end
      if #flat > 0 then redis.call('HSET', KEYS[5], unpack(flat)) end
      had = {{newest[SEEN[1]] or false, newest[SEEN[2]] or false, newest[SEEN[3]] or false}}
    else
      keep_seen = false  -- later payments exist: the next one at the newest time starts them
    end
  elseif ts >= last then
    start_at_ts()
  else
    -- late: it joins the windows ending at last that reach back to it
    local flat = {{}}
    for i, span in ipairs(CARD_SPANS) do
      if ts > last - span then
        flat[#flat + 1] = 'n' .. i; flat[#flat + 1] = int(tonumber(st[1 + i]) + 1)
        flat[#flat + 1] = 'm' .. i; flat[#flat + 1] = int(tonumber(st[1 + W + i]) + milli)
        if span == CARD_HORIZON then
          flat[#flat + 1] = 'u'; flat[#flat + 1] = int(tonumber(st[2 + 2 * W]) + u)
          flat[#flat + 1] = 'uu'; flat[#flat + 1] = int(tonumber(st[3 + 2 * W]) + u * u)
        end
      end
    end
    if #flat > 0 then redis.call('HSET', KEYS[4], unpack(flat)) end
  end
  if keep_seen then
    had = had or redis.call('HMGET', KEYS[5], unpack(SEEN))
    local flat = {{}}
    for k = 1, 3 do
      if not had[k] or ts > tonumber(had[k]) then
        flat[#flat + 1] = SEEN[k]; flat[#flat + 1] = ARGV[2]
      end
    end
    if #flat > 0 then redis.call('HSET', KEYS[5], unpack(flat)) end
  end
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. exact(ts - CARD_HORIZON - SLACK))
redis.call('EXPIRE', KEYS[1], {CARD_TTL})
redis.call('EXPIRE', KEYS[4], {CARD_TTL})
redis.call('EXPIRE', KEYS[5], {CARD_TTL})
local prev_s = false
if prev ~= nil then prev_s = exact(prev) end
local now = redis.call('TIME')
return {{1, counts, sums, prev_s, {{seen_t, seen_c, seen_m}}, cfraud, {{tenths, tenths_sq}},
        now[1] .. string.format('.%06d', tonumber(now[2]))}}
"""
)

# KEYS: terminal, terminal fraud known, terminal fraud by payment time. ARGV: ts,
# payment_id. Returns the matured windows' counts and fraud, the fresh fraud, and whether
# the payment id was added (not already there).
_OBSERVE_TERMINAL = (
    f"local MATURITY = {MATURITY!r}\n"
    f"local RISK_SPANS = {_lua_list(RISK_WINDOWS.values())}\n"
    f"local RISK_MAX, FRESH = {max(RISK_WINDOWS.values())!r}, {FRESH_FRAUD_WINDOW!r}\n"
    f"local SLACK, TERMINAL_HORIZON = {SLACK!r}, {TERMINAL_HORIZON!r}\n"
    + _EXACT
    + f"""
local ts = tonumber(ARGV[1])
local hi = ts - MATURITY
local tcounts, tfraud = {{}}, {{}}
for i, span in ipairs(RISK_SPANS) do
  tcounts[i] = redis.call('ZCOUNT', KEYS[1], '(' .. exact(hi - span), exact(hi))
  tfraud[i] = 0
end
local paid = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. exact(hi - RISK_MAX), exact(hi),
                        'WITHSCORES')
for j = 1, #paid, 2 do
  local known = redis.call('ZSCORE', KEYS[2], paid[j])
  if known and tonumber(known) <= ts then
    local p = tonumber(paid[j + 1])
    for i, span in ipairs(RISK_SPANS) do
      if p > hi - span then tfraud[i] = tfraud[i] + 1 end
    end
  end
end
local fresh = redis.call('ZCOUNT', KEYS[2], '(' .. exact(ts - FRESH), ARGV[1])
local added = redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. exact(ts - TERMINAL_HORIZON - SLACK))
redis.call('EXPIRE', KEYS[1], {TERMINAL_TTL})
return {{tcounts, tfraud, fresh, added}}
"""
)

# A payment_id first scored on another card: take back what this call recorded on its
# card (KEYS: card, decision, card state, card seen values; ARGV: member). The aggregates
# go with it: the card's next payment sums its windows again.
_FORGET_CARD = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
return 1
"""

# A payment's labels are kept (``labels_key``) and its fraud spell worked out from all of
# them each time one is added, by the rule of ``model.labels``: the latest label decides,
# fraud wins a tie, repeated fraud keeps the spell's start. Applying a label is then
# idempotent and independent of arrival order: a redelivered label, or a chargeback that
# reaches the stream after the analyst's later "not fraud", ends in the state the history
# says. A payment back-filled as fraud has no labels kept; its spell's start seeds them.
#
# The terminal's keys and the card's live in different slots: the terminal's script works
# the spell out and returns it with the number of labels it saw; the card's applies it
# unless it already applied a spell worked out from at least as many labels. Labels of a
# payment only grow, so the card ends where the terminal did, whatever order the two
# steps of concurrent labels run in, and a crash between them is mended by the redelivery.
# KEYS: terminal fraud known, terminal fraud by payment time, labels. ARGV: payment_id,
# 0 or 1, reported_at, payment ts.
_LABEL_TERMINAL = f"""
local pid, paid = ARGV[1], ARGV[4]
if redis.call('EXISTS', KEYS[3]) == 0 then
  local start = redis.call('ZSCORE', KEYS[1], pid)
  if start then
    start = string.format('%.17g', tonumber(start))  -- as Python's format(x, '.17g')
    redis.call('ZADD', KEYS[3], start, start .. '|1')
  end
end
-- members 'reported_at|0 or 1': at equal times '|0' sorts first, so fraud is applied last
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[3] .. '|' .. ARGV[2])
local start = false
local members = redis.call('ZRANGE', KEYS[3], 0, -1)
for _, member in ipairs(members) do
  local at, fraud = string.match(member, '^(.*)|([01])$')
  if fraud == '0' then start = false elseif not start then start = at end
end
if start then
  redis.call('ZADD', KEYS[1], start, pid)
  redis.call('ZADD', KEYS[2], paid, pid)
else
  redis.call('ZREM', KEYS[1], pid)
  redis.call('ZREM', KEYS[2], pid)
end
local cut = '(' .. string.format('%.17g', tonumber(ARGV[3]) - {TERMINAL_TTL})
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cut)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cut)
redis.call('EXPIRE', KEYS[1], {TERMINAL_TTL})
redis.call('EXPIRE', KEYS[2], {TERMINAL_TTL})
redis.call('EXPIRE', KEYS[3], {LABELS_TTL})
return {{start, #members}}
"""

# KEYS: card fraud known, card label counts. ARGV: payment_id, spell start ('' for none),
# labels seen, reported_at.
_LABEL_CARD = f"""
local seen = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if tonumber(ARGV[3]) < seen then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if ARGV[2] ~= '' then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
local cut = '(' .. string.format('%.17g', tonumber(ARGV[4]) - {CARD_TTL})
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cut)
redis.call('EXPIRE', KEYS[1], {CARD_TTL})
redis.call('EXPIRE', KEYS[2], {LABELS_TTL})
return 1
"""


(_OBSERVE_CARD_B, _OBSERVE_TERMINAL_B, _FORGET_CARD_B, _LIST_LOOKUP_B, _LABEL_TERMINAL_B,
 _LABEL_CARD_B) = (s.encode() for s in (_OBSERVE_CARD, _OBSERVE_TERMINAL, _FORGET_CARD,
                                        LIST_LOOKUP_LUA, _LABEL_TERMINAL, _LABEL_CARD))


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


def _fields(payment: Payment, catalogue: CatalogueStore) -> dict[str, Any]:
    """What the catalogue's calls read of a payment."""
    fields: dict[str, Any] = {c: getattr(payment, c, None) for c in catalogue.columns}
    fields["payment_id"], fields["ts"] = payment.payment_id, payment.ts
    return fields


@dataclass(frozen=True, slots=True)
class LabelUpdate:
    payment_id: str
    payment: PaymentRef
    is_fraud: bool
    reported_at: float


@dataclass(frozen=True)
class Observation:
    """What Redis said about one payment.

    ``previous`` is set when the payment_id was seen before on this card (``pending|hash``
    or ``done|hash|response``); then nothing was read or recorded. ``conflict`` when it was
    first scored on another card; then what this call recorded was taken back.
    """

    features: dict[str, float] | None = None
    # When the card's state took the payment, by the clock of the Redis server holding it.
    # The history orders a card's payments by this time (``scored_at``): with calls to
    # several servers in flight, or several API processes, the order in which answers
    # come back is not the order in which the card counted them.
    recorded_at: float | None = None
    previous: bytes | None = None
    conflict: bool = False
    list_hits: tuple[tuple[str, str, str], ...] = ()  # (kind, entity, value)


def _exact(seconds: float) -> str:
    """Seconds as the exact double, for the scripts."""
    return format(float(seconds), ".17g")


def _hash_of(record: bytes) -> str:
    """The payload hash in an idempotency record ``state|hash|...``."""
    return record.split(b"|", 2)[1].decode()


def _hit(raw: bytes, payment: Payment) -> tuple[str, str, str]:
    kind, entity = raw.decode().split("|")
    return kind, entity, str(getattr(payment, entity))


class OnlineStore:
    """The online features in Redis: scoring and labels through ``redis``'s pipelined
    connection (one write per payment), back-fills and scans through its redis-py."""

    def __init__(self, redis: RedisClient, catalogue: CatalogueStore | None = None) -> None:
        """``catalogue``: the catalogue's stateful features, read and recorded in the same
        write as the card's and terminal's (``stores.catalogue_store``)."""
        self.redis = redis
        self.catalogue = catalogue

    @property
    def served(self) -> frozenset[str]:
        """Every feature ``observe`` gives."""
        return frozenset(FEATURE_NAMES) | frozenset(
            self.catalogue.names if self.catalogue else ())

    async def observe(
        self, payment: Payment, payload_hash: str = "", check_lists: bool = False,
        pending_ms: int = 250 + PENDING_MARGIN_MS,
    ) -> Observation:
        """Read every online feature of ``payment`` and record it: one write of concurrent
        calls, each atomic on its own keys (see the module's docstring).

        With a ``payload_hash``, a payment_id seen before is not counted again: the
        previous record is returned instead. With ``check_lists``, the payment's entities
        are looked up in the allow/block lists in the same trip. ``pending_ms``: how long
        a retry of this payment_id waits for this call's answer (``stores.idempotency``).
        """
        ts = payment.ts
        pid, card, terminal = payment.payment_id, payment.card_id, payment.terminal_id
        member = card_member(pid, payment.amount, terminal, payment.country,
                             payment.merchant_category)
        steps: list[Step] = [
            (_OBSERVE_CARD_B, [card_key(card), card_fraud_known_key(card),
                               decision_key(card, pid), card_state_key(card),
                               card_seen_key(card)],
             [payload_hash, repr(ts), pid, member, terminal, payment.country or "",
              payment.merchant_category or "", pending_ms]),
            (_OBSERVE_TERMINAL_B, [terminal_key(terminal), terminal_fraud_known_key(terminal),
                                   terminal_fraud_paid_key(terminal)], [repr(ts), pid]),
        ]
        if check_lists:
            steps.append((_LIST_LOOKUP_B, LIST_KEYS, [list_values(payment)]))
        if payload_hash:
            steps.append((None, ("SET", owner_key(pid), card, "NX", "GET", "EX",
                                 int(IDEMPOTENCY_WINDOW)), ()))
        # The catalogue's calls last: the replies above keep their places.
        base = len(steps)
        extra = self.catalogue.steps(_fields(payment, self.catalogue)) \
            if self.catalogue is not None else None
        if extra is not None:
            steps += extra.calls
        replies = await self.redis.run(steps)
        replies, catalogue_replies = replies[:base], replies[base:]
        card_res, (tcounts, tfraud, fresh, term_added) = replies[0], replies[1]
        owner = replies[-1] if payload_hash else None
        if owner is not None and owner != card.encode():
            # First scored on another card: nothing of this call may stay counted.
            if card_res[0] == 1:
                await self.redis.run([(_FORGET_CARD_B, [card_key(card), decision_key(card, pid),
                                                   card_state_key(card), card_seen_key(card)],
                                  [member])])
            if term_added:
                await self.redis.run([(None, ("ZREM", terminal_key(terminal), pid), ())])
            return Observation(conflict=True)
        if card_res[0] == 0:
            if term_added and _hash_of(card_res[1]) != payload_hash:
                # Another payload under this id, with another terminal: not counted there.
                # (Left: were both calls in flight at once with the same terminal, and this
                # one's terminal script ran first, this takes the first call's entry back.)
                await self.redis.run([(None, ("ZREM", terminal_key(terminal), pid), ())])
            return Observation(previous=card_res[1])
        _, counts, sums, prev, seen, cfraud, tenths, recorded_at = card_res
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
        hits = replies[2] if check_lists else []
        features = {name: float(values_by_name[name]) for name in FEATURE_NAMES}
        if extra is not None:
            features.update(extra.features(catalogue_replies))
        return Observation(
            features=features,
            recorded_at=float(recorded_at),
            list_hits=tuple(_hit(h, payment) for h in hits),
        )

    async def apply_label(self, update: LabelUpdate) -> None:
        """One label: ``apply_labels([update])``."""
        await self.apply_labels([update])

    async def apply_labels(self, updates: Sequence[LabelUpdate]) -> None:
        """Add each label (fraud, or a "not fraud" verdict) to its payment's, and update the
        terminal's and card's fraud accordingly: every label's terminal step in one round
        trip, then every card's in another. Idempotent, and the order labels arrive in, or
        are applied in within a batch, does not matter (see ``_LABEL_TERMINAL``)."""
        if updates:
            await self._card_steps(updates, await self._terminal_steps(updates))

    async def _terminal_steps(self, updates: Sequence[LabelUpdate]) -> list[Any]:
        """Each label into its payment's labels; the terminal's fraud updated. Returns per
        label the payment's fraud spell start (or None) and how many labels it has."""
        return await self.redis.scripts(_LABEL_TERMINAL_B, [
            ([terminal_fraud_known_key(u.payment.terminal_id),
              terminal_fraud_paid_key(u.payment.terminal_id),
              labels_key(u.payment.terminal_id, u.payment_id)],
             [u.payment_id, "1" if u.is_fraud else "0", _exact(u.reported_at),
              repr(float(u.payment.ts))])
            for u in updates])

    async def _card_steps(self, updates: Sequence[LabelUpdate], spells: list[Any]) -> None:
        """The card's fraud set from each payment's spell, unless the card already holds
        one worked out from as many labels or more."""
        await self.redis.scripts(_LABEL_CARD_B, [
            ([card_fraud_known_key(u.payment.card_id), card_label_count_key(u.payment.card_id)],
             [u.payment_id, start.decode() if start else "", seen, _exact(u.reported_at)])
            for u, (start, seen) in zip(updates, spells, strict=True)])

    async def holds_cards(self) -> bool:
        """Whether the store knows any card (on a cluster, on any node)."""
        async for _ in self.redis.admin.scan_iter(match=f"{PREFIX}:card:*", count=1000):
            return True
        return False

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
        pipe = self.redis.admin.pipeline(transaction=False)
        for pid, ts, card, terminal, amount, country, mcc in payments:
            pipe.zadd(card_key(card), {card_member(pid, amount, terminal, country, mcc): ts})
            pipe.expire(card_key(card), CARD_TTL)
            # rows written around the aggregates: the card's next payment sums again
            pipe.delete(card_state_key(card))
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
