"""The analysts' review queue, kept in Redis (the payments themselves are in the history).

Every payment decided ``review`` becomes a *case* when the stream worker records it. An
analyst lists the open cases (oldest payment first), claims one (nobody else may decide it
while the claim runs) and gives a verdict, fraud or legitimate, with a note. The verdict
becomes a label (source ``analyst``) that travels the chargebacks' path: API -> Kafka ->
stream -> history and features.

Keys::

    fs:{rq}:open           ZSET  payment_id -> payment time: the cases not decided yet
    fs:{rq}:waiting        ZSET  the same cases -> when they were queued (the queue's age)
    fs:{rq}:decided        ZSET  payment_id -> decision time (trimmed after DECIDED_TTL)
    fs:{rq}:case:<id>      HASH  the case: payment, score, reasons, status, claim, verdict
    fs:{rq}:unsent         SET   decided cases whose label is not yet durable (Kafka or spool)
    fs:{rq}:audit          STREAM who claimed, released and decided what, when

A claim is optional: an analyst may decide an open case at once; a claim only keeps the
others from deciding (or claiming) it while it holds.

A label from elsewhere (a chargeback, a customer report) on a payment whose case is still
open closes the case with that label's verdict (``decided_by`` ``label:<source>``): nobody
need work a case the issuer has answered, and no analyst label is made of it.

Exactly once: a case's verdict is fixed by the first ``decide`` (a Lua script, atomic), with
its time. Every later ``decide`` with the same verdict returns that same verdict and time,
so the label sent again is the same label (same identity in the history) and applying it
again changes nothing; a different verdict is refused. A verdict whose label did not reach
Kafka or the API's spool stays in ``fs:{rq}:unsent`` until it does.
"""

from __future__ import annotations

import base64
import builtins  # ReviewQueue.list shadows list in the annotations after it
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

import orjson
from pydantic import BaseModel, ConfigDict
from redis.exceptions import ResponseError

from model.schemas import Label
from stores.redis_client import RedisClient
from stores.redis_mux import pairs

OPEN_KEY = "fs:{rq}:open"
WAITING_KEY = "fs:{rq}:waiting"
DECIDED_KEY = "fs:{rq}:decided"
UNSENT_KEY = "fs:{rq}:unsent"
# Who claimed and decided what: a stream nothing trims, so no amount of activity flushes
# it. Its growth is bounded by what is recorded: new claims (capped per case, renewals not
# written), verdicts and closings, one per case.
AUDIT_KEY = "fs:{rq}:audit"
# New claims of one case (a first claim, a hand-over, a claim after one lapsed); renewing
# one's own claim does not count. Far above a real case's life, low enough that looping
# claims cannot fill the audit.
MAX_CLAIMS_PER_CASE = 20
# Case ids one listing looks at, whatever its filters: the rest through its cursor.
LIST_SCAN_BUDGET = 1000
# Decided cases stay readable this long (the label in the history is the lasting record).
DECIDED_TTL_SECONDS = 90 * 86_400

Verdict = Literal["fraud", "legitimate"]
Status = Literal["open", "claimed", "decided"]


def case_key(payment_id: str) -> str:
    return f"fs:{{rq}}:case:{payment_id}"


class ReviewError(Exception):
    """A request the queue refuses: ``CaseNotFound`` or ``CaseConflict``."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class CaseNotFound(ReviewError):
    """No review case for this payment."""


class CaseConflict(ReviewError):
    """The case is claimed by another analyst, decided otherwise, or closed by a label."""


class CaseLimit(ReviewError):
    """The case was claimed ``MAX_CLAIMS_PER_CASE`` times (renewals apart)."""


# The scripts' error replies start with one of these words.
_REFUSALS: dict[str, type[ReviewError]] = {"NOCASE": CaseNotFound, "CONFLICT": CaseConflict,
                                           "LIMIT": CaseLimit}


class Case(BaseModel):
    """A review case, as the queue keeps it and the API returns it (``api.reviews``
    names it ``CaseOut`` in its OpenAPI document): times are UTC datetimes."""

    model_config = ConfigDict(frozen=True)

    payment_id: str
    paid_at: datetime
    card_id: str
    terminal_id: str
    amount: float
    currency: str
    score: float | None
    model_version: str | None
    degraded: bool
    reasons: list[str]
    enqueued_at: datetime
    status: Status
    claimed_by: str | None
    claimed_until: datetime | None
    verdict: Verdict | None
    note: str | None
    decided_by: str | None
    decided_at: datetime | None

    @classmethod
    def from_hash(cls, raw: Mapping[bytes, bytes], now: float) -> Case:
        h = {k.decode(): v.decode() for k, v in raw.items()}

        def num(name: str) -> float | None:
            return float(h[name]) if h.get(name) not in (None, "") else None

        def at(ts: float | None) -> datetime | None:
            return None if ts is None else datetime.fromtimestamp(ts, UTC)

        # The scripts below write only these values.
        status = cast(Status, h["status"])
        claimed_until = num("claimed_until")
        if status == "claimed" and (claimed_until is None or claimed_until <= now):
            status = "open"  # the claim lapsed: anyone may take the case
        return cls(
            payment_id=h["payment_id"], paid_at=datetime.fromtimestamp(float(h["ts"]), UTC),
            card_id=h["card_id"],
            terminal_id=h["terminal_id"], amount=float(h["amount"]), currency=h["currency"],
            score=num("score"), model_version=h.get("model_version") or None,
            degraded=h.get("degraded") == "1", reasons=orjson.loads(h.get("reasons", "[]")),
            enqueued_at=datetime.fromtimestamp(float(h["enqueued_at"]), UTC), status=status,
            claimed_by=(h.get("claimed_by") or None) if status == "claimed" else None,
            claimed_until=at(claimed_until) if status == "claimed" else None,
            verdict=cast(Verdict | None, h.get("verdict") or None),
            note=h.get("note") or None, decided_by=h.get("decided_by") or None,
            decided_at=at(num("decided_at")),
        )

    def label(self) -> Label:
        """The label this case's verdict makes: the same label however often it is asked."""
        assert self.verdict is not None and self.decided_at is not None
        return Label(payment_id=self.payment_id, is_fraud=self.verdict == "fraud",
                     source="analyst", reported_at=self.decided_at,
                     analyst=self.decided_by, note=self.note)


# A case is created once: a payment recorded again (redelivery, a stream restart) does not
# reopen a case already decided. ARGV: now, then per case payment_id, ts, fields as JSON.
_ENQUEUE = b"""
local added = 0
for i = 2, #ARGV, 3 do
  local key = 'fs:{rq}:case:' .. ARGV[i]
  if redis.call('EXISTS', key) == 0 then
    local fields = cjson.decode(ARGV[i + 2])
    local flat = {'status', 'open', 'enqueued_at', ARGV[1]}
    for k, v in pairs(fields) do
      flat[#flat + 1] = k
      flat[#flat + 1] = tostring(v)
    end
    redis.call('HSET', key, unpack(flat))
    redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
    redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i])
    added = added + 1
  end
end
return added
"""

# Shared by claim and decide (ARGV[1] payment_id, ARGV[2] analyst, ARGV[3] now): the case,
# and a refusal while another analyst's claim holds. Errors are "WORD message" (``_REFUSALS``).
_FIND_CASE = """
local key = 'fs:{rq}:case:' .. ARGV[1]
local status = redis.call('HGET', key, 'status')
if not status then return redis.error_reply('NOCASE no review case for this payment') end
"""
_NOT_HELD_BY_OTHERS = """
local holder = redis.call('HGET', key, 'claimed_by')
local until_ = tonumber(redis.call('HGET', key, 'claimed_until') or '0')
if status == 'claimed' and holder ~= ARGV[2] and until_ > tonumber(ARGV[3]) then
  return redis.error_reply('CONFLICT claimed by ' .. holder .. ' until ' .. until_)
end
"""

# ARGV: payment_id, analyst, now, claim seconds, most claims per case. The
# holder claiming again renews the claim: no audit entry, not counted (renewals in a loop
# must not flood the audit); a new claim (a first one, a hand-over, one after a lapse) is
# recorded and counted, up to the cap.
_CLAIM = _FIND_CASE + """
if status == 'decided' then
  return redis.error_reply('CONFLICT already decided by ' .. redis.call('HGET', key, 'decided_by'))
end
""" + _NOT_HELD_BY_OTHERS + """
local new_until = tonumber(ARGV[3]) + tonumber(ARGV[4])
if not (status == 'claimed' and holder == ARGV[2] and until_ > tonumber(ARGV[3])) then
  local claims = tonumber(redis.call('HGET', key, 'claims') or '0')
  if claims >= tonumber(ARGV[5]) then
    return redis.error_reply('LIMIT claimed ' .. claims .. ' times already: decide it, or ' ..
                             'ask an administrator')
  end
  redis.call('HSET', key, 'claims', tostring(claims + 1))
  redis.call('XADD', KEYS[1], '*', 'action', 'claim',
             'payment_id', ARGV[1], 'analyst', ARGV[2], 'at', ARGV[3])
end
redis.call('HSET', key, 'status', 'claimed', 'claimed_by', ARGV[2],
           'claimed_until', tostring(new_until))
return redis.call('HGETALL', key)
"""

# ARGV: payment_id, analyst, now, verdict, note, decided ttl.
_DECIDE = _FIND_CASE + """
if status == 'decided' then
  local closed_by = redis.call('HGET', key, 'closed_by')
  if closed_by then
    return redis.error_reply('CONFLICT already closed by a ' .. closed_by .. ' label')
  end
  local verdict = redis.call('HGET', key, 'verdict')
  if verdict ~= ARGV[4] then
    return redis.error_reply('CONFLICT already decided ' .. verdict .. ' by ' ..
                             redis.call('HGET', key, 'decided_by'))
  end
  return redis.call('HGETALL', key)
end
""" + _NOT_HELD_BY_OTHERS + """
redis.call('HSET', key, 'status', 'decided', 'verdict', ARGV[4], 'note', ARGV[5],
           'decided_by', ARGV[2], 'decided_at', ARGV[3])
redis.call('EXPIRE', key, ARGV[6])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
-- the hashes of older decided cases have expired: their ids go too
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[6]))
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[4], '*', 'action', 'verdict',
           'payment_id', ARGV[1], 'analyst', ARGV[2], 'verdict', ARGV[4], 'note', ARGV[5],
           'at', ARGV[3])
return redis.call('HGETALL', key)
"""


# A label from elsewhere (a chargeback, the cardholder) answers the case's question: the
# case is closed with it, never reopened, and no analyst's label is made of it. ARGV: now,
# decided ttl, then per label payment_id, verdict, source, reported_at.
_CLOSE_BY_LABEL = b"""
local closed = 0
for i = 3, #ARGV, 4 do
  local id = ARGV[i]
  local key = 'fs:{rq}:case:' .. id
  local status = redis.call('HGET', key, 'status')
  if status and status ~= 'decided' then
    local note = 'closed by a ' .. ARGV[i + 2] .. ' label reported at ' .. ARGV[i + 3]
    redis.call('HSET', key, 'status', 'decided', 'verdict', ARGV[i + 1], 'note', note,
               'decided_by', 'label:' .. ARGV[i + 2], 'decided_at', ARGV[1],
               'closed_by', ARGV[i + 2])
    redis.call('EXPIRE', key, ARGV[2])
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZADD', KEYS[2], ARGV[1], id)
    redis.call('XADD', KEYS[3], '*', 'action', 'closed_by_label',
               'payment_id', id, 'analyst', 'label:' .. ARGV[i + 2], 'verdict', ARGV[i + 1],
               'note', note, 'at', ARGV[1])
    closed = closed + 1
  end
end
return closed
"""


_CLAIM_B, _DECIDE_B = _CLAIM.encode(), _DECIDE.encode()


@dataclass(frozen=True, slots=True)
class CasePage:
    cases: builtins.list[Case]
    cursor: str | None  # where the next call goes on from; None: nothing after these


BAD_CURSOR = ("cursor is not one this queue gave: pass the X-Next-Cursor of the previous "
              "page, or none")


def _write_cursor(at: tuple[float, str]) -> str:
    return base64.urlsafe_b64encode(f"{at[0]!r} {at[1]}".encode()).decode().rstrip("=")


def _read_cursor(cursor: str | None) -> tuple[float, str] | None:
    if cursor is None:
        return None
    try:
        score, _, pid = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)) \
            .decode().partition(" ")
        at = float(score)
    except ValueError as exc:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise ValueError(BAD_CURSOR) from exc
    if not pid or not math.isfinite(at):
        raise ValueError(BAD_CURSOR)
    return at, pid


class ReviewQueue:
    """The cases, through the pipelined connection: the stream worker's per-batch scripts,
    the API's periodic stats and the analysts' calls. The audit stream is read through
    redis-py."""

    def __init__(self, redis: RedisClient, claim_seconds: float = 900.0) -> None:
        self.redis = redis
        self.claim_seconds = claim_seconds

    async def enqueue(self, rows: Iterable[Mapping[str, Any]], now: float | None = None) -> int:
        """History rows of payments decided ``review``: a case each, unless one exists."""
        argv: list[Any] = [now if now is not None else time.time()]
        for r in rows:
            ts = r["ts"].timestamp() if isinstance(r["ts"], datetime) else float(r["ts"])
            # Strings only: Lua would print numbers with 14 digits.
            argv += [r["payment_id"], repr(ts), orjson.dumps({
                "payment_id": r["payment_id"], "ts": repr(ts), "card_id": r["card_id"],
                "terminal_id": r["terminal_id"], "amount": repr(float(r["amount"])),
                "currency": r["currency"],
                "score": "" if r.get("score") is None else repr(float(r["score"])),
                "model_version": r.get("model_version") or "",
                "degraded": "1" if r.get("degraded") else "0",
                "reasons": orjson.dumps(list(r.get("reasons") or [])).decode(),
            }).decode()]
        if len(argv) == 1:
            return 0
        return int(await self.redis.script(_ENQUEUE, [OPEN_KEY, WAITING_KEY], argv))

    async def close_by_labels(self, labels: Iterable[Label], now: float | None = None) -> int:
        """Close the open cases these labels answer (the first label decides; a case
        already decided stays as it is). Analysts' own labels are left out: they come from
        a verdict. Returns how many cases were closed."""
        argv: list[Any] = [now if now is not None else time.time(), DECIDED_TTL_SECONDS]
        for label in labels:
            if label.source != "analyst":
                argv += [label.payment_id, "fraud" if label.is_fraud else "legitimate",
                         label.source, label.reported_at.isoformat()]
        if len(argv) == 3:
            return 0
        return int(await self.redis.script(
            _CLOSE_BY_LABEL, [OPEN_KEY, DECIDED_KEY, AUDIT_KEY, WAITING_KEY], argv))

    async def get(self, payment_id: str, now: float | None = None) -> Case | None:
        raw = pairs(await self.redis.command("HGETALL", case_key(payment_id)))
        return Case.from_hash(raw, now if now is not None else time.time()) if raw else None

    async def list(self, status: Literal["open", "claimed", "decided", "pending"] = "pending",
                   limit: int = 50, card_id: str | None = None,
                   terminal_id: str | None = None, min_score: float | None = None,
                   analyst: str | None = None, now: float | None = None,
                   cursor: str | None = None) -> CasePage:
        """Cases oldest payment first (decided ones: oldest decision first). ``pending``:
        open and claimed. One call looks at no more than ``LIST_SCAN_BUDGET`` cases, so a
        filter that matches little returns a short page and a cursor: pass it back to go
        on from there (a case decided meanwhile is neither skipped nor shown twice).
        ``ValueError`` for a cursor this queue did not give."""
        now = now if now is not None else time.time()
        source = DECIDED_KEY if status == "decided" else OPEN_KEY
        after = _read_cursor(cursor)
        out: list[Case] = []
        looked, offset = 0, 0
        while len(out) < limit and looked < LIST_SCAN_BUDGET:
            low = "-inf" if after is None else repr(after[0])
            flat = await self.redis.command("ZRANGE", source, low, "+inf", "BYSCORE", "LIMIT",
                                            offset, min(200, LIST_SCAN_BUDGET - looked),
                                            "WITHSCORES")
            if not flat:
                return CasePage(out, None)
            entries = [(flat[k].decode(), float(flat[k + 1])) for k in range(0, len(flat), 2)]
            looked += len(entries)
            # the ids at the cursor's own score up to its id were seen (ties in id order)
            fresh = [(pid, at) for pid, at in entries
                     if after is None or at > after[0] or pid > after[1]]
            offset = offset + len(entries) if not fresh else 0
            hashes = await self.redis.commands([("HGETALL", case_key(pid)) for pid, _ in fresh])
            for (pid, at), flat_case in zip(fresh, hashes, strict=True):
                after = (at, pid)
                raw = pairs(flat_case)
                if not raw:
                    continue  # a decided case expired
                case = Case.from_hash(raw, now)
                if status in ("open", "claimed", "decided") and case.status != status:
                    continue
                if (card_id and case.card_id != card_id) or \
                        (terminal_id and case.terminal_id != terminal_id) or \
                        (min_score is not None and (case.score or 0.0) < min_score) or \
                        (analyst and analyst not in (case.claimed_by, case.decided_by)):
                    continue
                out.append(case)
                if len(out) == limit:
                    break
        return CasePage(out, None if after is None else _write_cursor(after))

    async def claim(self, payment_id: str, analyst: str, now: float | None = None) -> Case:
        now = now if now is not None else time.time()
        flat = await self._run(_CLAIM_B, [AUDIT_KEY],
                               [payment_id, analyst, now, self.claim_seconds,
                                MAX_CLAIMS_PER_CASE])
        return Case.from_hash(pairs(flat), now)

    async def decide(self, payment_id: str, analyst: str, verdict: Verdict, note: str = "",
                     now: float | None = None) -> Case:
        """Fix the case's verdict (or return the one fixed before, if the same)."""
        now = now if now is not None else time.time()
        flat = await self._run(_DECIDE_B,
                               [OPEN_KEY, DECIDED_KEY, UNSENT_KEY, AUDIT_KEY, WAITING_KEY],
                               [payment_id, analyst, now, verdict, note,
                                DECIDED_TTL_SECONDS])
        return Case.from_hash(pairs(flat), now)

    async def label_sent(self, payment_id: str) -> None:
        await self.redis.command("SREM", UNSENT_KEY, payment_id)

    async def unsent(self, older_than: float,
                     now: float | None = None) -> builtins.list[Case]:
        """Decided cases whose label is not known durable, decided over ``older_than`` s ago."""
        now = now if now is not None else time.time()
        cases = []
        for pid in await self.redis.command("SMEMBERS", UNSENT_KEY):
            case = await self.get(pid.decode(), now)
            if case is None:
                await self.redis.command("SREM", UNSENT_KEY, pid)
            elif case.decided_at is not None and \
                    case.decided_at.timestamp() <= now - older_than:
                cases.append(case)
        return cases

    async def stats(self, now: float | None = None) -> tuple[int, float | None]:
        """Cases waiting, and how long the longest-waiting one has (seconds since queued)."""
        now = now if now is not None else time.time()
        size, flat = await self.redis.commands(
            [("ZCARD", OPEN_KEY), ("ZRANGE", WAITING_KEY, 0, 0, "WITHSCORES")])
        oldest = float(flat[1]) if flat else None
        return int(size), (now - oldest) if oldest is not None else None

    async def audit(self, count: int = 100) -> builtins.list[dict[str, str]]:
        """Who claimed and decided what, newest first."""
        # bytes, as the admin client answers (see PolicyStore.audit)
        entries = cast(builtins.list[tuple[bytes, dict[bytes, bytes]]],
                       await self.redis.admin.xrevrange(AUDIT_KEY, count=count))
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]

    async def _run(self, script: bytes, keys: builtins.list[str],
                   args: builtins.list[Any]) -> builtins.list[bytes]:
        try:
            flat: builtins.list[bytes] = await self.redis.script(script, keys, args)
            return flat
        except ResponseError as exc:
            code, _, detail = str(exc).partition(" ")
            refusal = _REFUSALS.get(code)
            if refusal is not None:
                raise refusal(detail) from exc
            raise
