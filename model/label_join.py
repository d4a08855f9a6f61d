"""The stream's join of labels to their payments, kept in Redis.

A label names only its payment_id; to update the features it needs the payment's terminal,
card and timestamp (``PaymentRef``), which the stream remembers when it records the
payment. A label may reach the stream before its payment does (separate topics, separate
agents). Both sides run as Lua scripts, atomic in Redis, so a label is either joined at once
or queued and then picked up by the payment: never both, never neither.

Keys: ``fs:pay:{payment_id}`` the payment's ref; ``fs:pending:{payment_id}`` labels waiting
for it; ``fs:hist:{payment_id}`` set once the history holds the payment.
"""

from __future__ import annotations

from redis.asyncio import Redis

from model.features import DAY
from model.online_features import PaymentRef

JOIN_HORIZON = 180 * DAY

_REMEMBER_PAYMENT = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local pending = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
return pending
"""

_JOIN_OR_QUEUE = """
local ref = redis.call('GET', KEYS[1])
if ref then return ref end
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
    """Each payment's ref, labels waiting for their payment, and which payments the history
    already holds."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._remember = redis.register_script(_REMEMBER_PAYMENT)
        self._join = redis.register_script(_JOIN_OR_QUEUE)

    async def remember_payments(
        self, payments: list[tuple[str, PaymentRef]]
    ) -> list[list[bytes]]:
        """Record each (payment_id, ref); returns, per payment, the labels that were
        waiting for it. One round trip for the whole batch."""
        if not payments:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for payment_id, ref in payments:
            await self._remember(keys=[payment_key(payment_id), pending_key(payment_id)],
                                 args=[ref.encode(), int(JOIN_HORIZON)], client=pipe)
        return list(await pipe.execute())

    async def ref_or_queue(self, payment_id: str, raw_label: bytes) -> PaymentRef | None:
        """The payment's ref, or None after queueing the label for its payment."""
        ref = await self._join(
            keys=[payment_key(payment_id), pending_key(payment_id)],
            args=[raw_label, int(JOIN_HORIZON)],
        )
        return PaymentRef.decode(ref) if ref else None

    async def remember_refs(self, refs: list[tuple[str, PaymentRef]], chunk: int = 5000) -> None:
        """Back-fill: refs of payments already in the history, so their labels join."""
        pipe = self.redis.pipeline(transaction=False)
        for i, (payment_id, ref) in enumerate(refs, 1):
            pipe.set(payment_key(payment_id), ref.encode(), ex=int(JOIN_HORIZON))
            if i % chunk == 0:
                await pipe.execute()
        await pipe.execute()

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
