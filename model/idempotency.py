"""The idempotency record: the answer given to each payment_id, kept for retries.

``fs:dec:{payment_id}`` holds ``pending|{payload hash}`` while the first call is being
scored, then ``done|{payload hash}|{response JSON}``. The check and the pending mark are a
fragment of the scoring round trip's script (``CHECK_LUA``), so a retry racing the first
call is caught in the same atomic step that reads the features; the answers are written
afterwards, batched (``api.decisions``).
"""

from __future__ import annotations

from collections.abc import Iterable

from model.features import DAY
from model.redis_mux import RedisMux

# How long a payment_id's answer is kept for replays (gateways retry within minutes).
IDEMPOTENCY_WINDOW = DAY
# How long a first call may hold a payment_id before a retry stops waiting on it.
PENDING_TTL = 30

# KEYS[DECISION_KEY_INDEX] is the decision key, ARGV[1] the payload hash ('' to skip).
CHECK_LUA = f"""
if ARGV[1] ~= '' then
  local stored = redis.call('GET', KEYS[DECISION_KEY_INDEX])
  if stored then return {{0, stored}} end
  redis.call('SET', KEYS[DECISION_KEY_INDEX], 'pending|' .. ARGV[1], 'EX', {PENDING_TTL})
end
"""


def decision_key(payment_id: str) -> str:
    return f"fs:dec:{payment_id}"


class DecisionStore:
    """The answers given, through the scoring path's pipelined connection."""

    def __init__(self, mux: RedisMux) -> None:
        self.mux = mux

    async def record_decisions(self, decisions: Iterable[tuple[str, str, bytes]]) -> None:
        """Keep the answers given, for replays: (payment_id, payload hash, response body)
        each, in one round trip."""
        commands = [("SET", decision_key(payment_id),
                     b"done|" + payload_hash.encode() + b"|" + body,
                     "EX", int(IDEMPOTENCY_WINDOW)) for payment_id, payload_hash, body in decisions]
        for reply in await self.mux.execute_many(commands):
            if isinstance(reply, Exception):
                raise reply

    async def previous_decision(self, payment_id: str) -> bytes | None:
        return await self.mux.execute("GET", decision_key(payment_id))  # type: ignore[no-any-return]
