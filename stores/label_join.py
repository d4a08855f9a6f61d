"""The stream's join of labels to their payments, kept in Redis.

A label names only its payment_id; to update the features it needs the payment's terminal,
card and timestamp (``PaymentRef``), which the stream remembers when it records the
payment. A label may reach the stream before its payment does (separate topics, separate
agents). Both sides run as Lua scripts, atomic in Redis, so a label is either joined at once
or queued and then picked up by the payment: never both, never neither.

Keys: ``fs:pay:{<payment_id>}`` the payment's ref; ``fs:pending:{<payment_id>}`` labels
waiting for it; ``fs:hist:{<payment_id>}`` the history part file promised to hold the
payment. The payment_id is their Redis Cluster hash tag: the scripts below touch one slot.

Waiting labels leave their queue only after they were applied (``forget_waiting``), so a
crash in between applies them again, which changes nothing (applying is idempotent), rather
than losing them. Once a payment's ref is set no label queues for it any more, so dropping
the queue after applying what it held cannot drop a newcomer.
"""

from __future__ import annotations

from collections.abc import Mapping

from model.features import DAY
from stores.online_features import PaymentRef
from stores.redis_client import RedisClient

JOIN_HORIZON = 180 * DAY

_REMEMBER_PAYMENT = b"""
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return redis.call('LRANGE', KEYS[2], 0, -1)
"""

# ARGV: the label, the queue's ttl, '1' if it may queue. The ref; else 1 queued, 0 not.
_JOIN_OR_QUEUE = b"""
local ref = redis.call('GET', KEYS[1])
if ref then return ref end
if ARGV[3] ~= '1' then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# The payments that have labels waiting, by when their first label queued: how many there
# are is bounded (labels for payment_ids that never come must not fill Redis). One key, on
# one node: labels are few beside payments.
WAITING_INDEX = "fs:pending-index"
# A label on this, instead of a ref: its payment is unknown and no more labels may wait.
NOT_QUEUED = "not queued"


def payment_key(payment_id: str) -> str:
    return f"fs:pay:{{{payment_id}}}"


def pending_key(payment_id: str) -> str:
    return f"fs:pending:{{{payment_id}}}"


def recorded_key(payment_id: str) -> str:
    return f"fs:hist:{{{payment_id}}}"


class JoinState:
    """Each payment's ref, labels waiting for their payment, and which payments the history
    already holds. A batch's calls go in one write of the pipelined connection (the
    stream worker); back-fills through redis-py's pipelines."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    async def remember_payments(
        self, payments: list[tuple[str, PaymentRef]]
    ) -> list[list[bytes]]:
        """Record each (payment_id, ref); returns, per payment, the labels waiting for it
        (still queued until ``forget_waiting``). One round trip for the whole batch."""
        if not payments:
            return []
        return await self.redis.scripts(_REMEMBER_PAYMENT, [
            ([payment_key(payment_id), pending_key(payment_id)],
             [ref.encode(), int(JOIN_HORIZON)]) for payment_id, ref in payments])

    async def refs_or_queue(self, labels: list[tuple[str, bytes]], max_waiting: int,
                            now: float) -> list[PaymentRef | str | None]:
        """For each (payment_id, encoded label): the payment's ref, or None after queueing
        the label for its payment, or ``NOT_QUEUED`` when ``max_waiting`` payments have
        labels waiting already (a batch may pass it by its own size). Two round trips."""
        if not labels:
            return []
        _, waiting = await self.redis.commands([
            ("ZREMRANGEBYSCORE", WAITING_INDEX, "-inf", now - JOIN_HORIZON),  # expired
            ("ZCARD", WAITING_INDEX)])
        may_queue = "1" if int(waiting) < max_waiting else "0"
        refs = await self.redis.scripts(_JOIN_OR_QUEUE, [
            ([payment_key(payment_id), pending_key(payment_id)],
             [raw, int(JOIN_HORIZON), may_queue]) for payment_id, raw in labels])
        queued = [payment_id for (payment_id, _), ref in zip(labels, refs, strict=True)
                  if ref == 1]
        if queued:
            await self.redis.command("ZADD", WAITING_INDEX, "NX",
                                     *(x for p in queued for x in (now, p)))
        return [PaymentRef.decode(ref) if isinstance(ref, bytes)
                else None if ref == 1 else NOT_QUEUED for ref in refs]

    async def waiting(self) -> int:
        """Payments with labels waiting for them (expired ones included until the next
        label trims them)."""
        return int(await self.redis.command("ZCARD", WAITING_INDEX))

    async def remember_refs(self, refs: list[tuple[str, PaymentRef]], chunk: int = 5000) -> None:
        """Back-fill: refs of payments already in the history, so their labels join."""
        pipe = self.redis.admin.pipeline(transaction=False)
        for i, (payment_id, ref) in enumerate(refs, 1):
            pipe.set(payment_key(payment_id), ref.encode(), ex=int(JOIN_HORIZON))
            if i % chunk == 0:
                await pipe.execute()
        await pipe.execute()

    async def forget_waiting(self, payment_ids: list[str]) -> None:
        """Drop the queues of labels that waited for these payments, once applied."""
        if payment_ids:  # one key per call: on a cluster they live on every node
            await self.redis.commands([("DEL", pending_key(p)) for p in payment_ids]
                                      + [("ZREM", WAITING_INDEX, *payment_ids)])

    async def promised_parts(self, payment_ids: list[str]) -> dict[str, str]:
        """The history part each payment was promised to, for those that have one."""
        if not payment_ids:
            return {}
        parts = await self.redis.commands([("GET", recorded_key(p)) for p in payment_ids])
        return {p: part.decode() for p, part in zip(payment_ids, parts, strict=True)
                if part is not None}

    async def promise(self, promises: Mapping[str, str]) -> None:
        """Promise payments to the part file about to be written (by payment_id, the part's
        name, with the scoring's time after a '|' for a payment): if it is on disk
        afterwards they are recorded, if it is not (a crash before its rename) they are
        not, and the next attempt writes them again."""
        await self.redis.commands([("SET", recorded_key(pid), value, "EX", int(JOIN_HORIZON))
                                   for pid, value in promises.items()])
