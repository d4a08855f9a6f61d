"""Which labels each payment was sent through the API, to cap them
(``fs:lblin:{<payment_id>}``, a set of the labels' digests, kept as long as a label can
join its payment).

Every label of a payment is kept in the online features and its fraud spell worked out
from all of them on each new one (``stores.online_features``), and a label waiting for
its payment waits in a list (``stores.label_join``): both grow with the labels a payment
gets. A real payment has a handful (a chargeback, its reversal, a cardholder's report, an
analyst's verdict); past ``MAX_LABELS_PER_PAYMENT`` distinct ones, the API refuses more.
The same label sent again is not a new one: a retry is always accepted.
"""

from __future__ import annotations

import hashlib

from model.schemas import Label
from stores.label_join import JOIN_HORIZON
from stores.redis_client import RedisClient

MAX_LABELS_PER_PAYMENT = 16

# KEYS[1] the payment's set; ARGV digest, cap, ttl. 1: admitted (new or seen), 0: full.
_ADMIT = b"""
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


def intake_key(payment_id: str) -> str:
    return f"fs:lblin:{{{payment_id}}}"


def label_digest(label: Label) -> str:
    """What makes a label the same label (the note apart)."""
    return hashlib.sha256("|".join((
        label.source, str(label.is_fraud), f"{label.reported_at.timestamp():.6f}",
        label.analyst or "")).encode()).hexdigest()[:32]


class LabelIntake:
    def __init__(self, redis: RedisClient, cap: int = MAX_LABELS_PER_PAYMENT) -> None:
        self.redis = redis
        self.cap = cap

    async def admit(self, label: Label) -> bool:
        """False if the payment has ``cap`` other labels already."""
        return bool(await self.redis.script(
            _ADMIT, [intake_key(label.payment_id)],
            [label_digest(label), self.cap, int(JOIN_HORIZON)]))
