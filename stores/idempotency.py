"""The idempotency record: the answer given to each payment_id, kept for retries.

``fs:dec:{c:<card>}:<payment_id>`` holds ``pending|{payload hash}`` while the first call is
being scored, then ``done|{payload hash}|{response JSON}``. It lives in the card's slot: the
check and the pending mark are a fragment of the card's script (``CHECK_LUA``), so a retry
racing the first call is caught in the same atomic step that reads the card's windows. The
answers are written afterwards, batched (``api.decisions``). ``fs:own:<payment_id>`` holds
the card a payment_id was first scored on, for the one conflict the card's slot cannot see:
the same payment_id on another card.
"""

from __future__ import annotations

from collections.abc import Iterable

from model.features import DAY
from stores.redis_client import RedisClient

# How long a payment_id's answer is kept for replays (gateways retry within minutes).
IDEMPOTENCY_WINDOW = DAY
# How long a first call holds its payment_id (retries wait, then get 409 "retry"): its
# deadline plus this, for its answer to be kept. A call whose API process died leaves its
# mark behind; the gateway's retries are scored once the mark expires. Scoring the same
# payload twice then counts nothing twice (the card's and terminal's entries are keyed by
# payment), and the history keeps one record per payment_id.
PENDING_MARGIN_MS = 2000

# KEYS[DECISION_KEY_INDEX] is the decision key, ARGV[1] the payload hash ('' to skip),
# ARGV[PENDING_ARG] how long the pending mark lasts (ms).
CHECK_LUA = """
if ARGV[1] ~= '' then
  local stored = redis.call('GET', KEYS[DECISION_KEY_INDEX])
  if stored then return {0, stored} end
  redis.call('SET', KEYS[DECISION_KEY_INDEX], 'pending|' .. ARGV[1], 'PX', ARGV[PENDING_ARG])
end
"""


def decision_key(card_id: str, payment_id: str) -> str:
    return f"fs:dec:{{c:{card_id}}}:{payment_id}"


def owner_key(payment_id: str) -> str:
    return f"fs:own:{payment_id}"


class DecisionStore:
    """The answers given, through the scoring path's pipelined connection."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    async def record_decisions(
        self, decisions: Iterable[tuple[str, str, str, bytes]]
    ) -> None:
        """Keep the answers given, for replays: (card_id, payment_id, payload hash, response
        body) each, in one round trip (one per node on a cluster)."""
        commands = [("SET", decision_key(card_id, payment_id),
                     b"done|" + payload_hash.encode() + b"|" + body,
                     "EX", int(IDEMPOTENCY_WINDOW))
                    for card_id, payment_id, payload_hash, body in decisions]
        await self.redis.commands(commands)

    async def previous_decision(self, card_id: str, payment_id: str) -> bytes | None:
        previous: bytes | None = await self.redis.command(
            "GET", decision_key(card_id, payment_id))
        return previous
