"""How fresh the online features are: the stream worker notes what it has applied, the API
reads it (once a second, off the scoring path) and tells each answer.

``fs:fresh`` (HASH), written by the stream worker:

- ``scored_at``: the newest API time (``scored_at``) among the payments it has recorded.
  An API process knows when it last published a payment; the difference is how far the
  stream, which keeps the features, is behind it. An idle, caught-up stream has no lag.
- ``payment_ts``: the newest payment (event time) it has recorded;
- ``label_ts``: the newest label (``reported_at``, event time) applied to the features.
  ``payment_ts - label_ts`` is how stale the label-aware features are, in the traffic's
  own time (replays of past traffic read the same as live traffic).

``fs:label_delay`` (HASH): how many applied labels came how long after their payment,
by bucket of days (a label applied again after a crash counts again: an approximate view).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from stores.redis_client import RedisClient
from stores.redis_mux import pairs

FRESH_KEY = "fs:fresh"
LABEL_DELAY_KEY = "fs:label_delay"
DAY = 86_400.0
# Upper bounds (days) of the label-delay buckets; the last one is open.
DELAY_BUCKETS = (1.0, 2.0, 3.0, 5.0, 7.0, 14.0, 30.0, 60.0, float("inf"))

# Keep the maximum: batches of several workers, or redelivered ones, may arrive out of order.
_MAX = b"""
for i = 1, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1e300')
  if tonumber(ARGV[i + 1]) > cur then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"""


def delay_bucket(days: float) -> str:
    for bound in DELAY_BUCKETS:
        if days <= bound:
            return "inf" if bound == float("inf") else f"{bound:g}"
    return "inf"


@dataclass(frozen=True)
class FreshState:
    scored_at: float | None = None
    payment_ts: float | None = None
    label_ts: float | None = None
    label_delays: tuple[tuple[str, int], ...] = ()

    @property
    def label_lag_s(self) -> float | None:
        if self.payment_ts is None or self.label_ts is None:
            return None
        return max(self.payment_ts - self.label_ts, 0.0)


class FreshnessBoard:
    """Written by the stream worker once per batch, read by the API once a second: both
    through the pipelined connection."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    async def note_recorded(self, newest_scored_at: float, newest_payment_ts: float) -> None:
        await self.redis.script(_MAX, [FRESH_KEY], ["scored_at", repr(newest_scored_at),
                                                    "payment_ts", repr(newest_payment_ts)])

    async def note_labels(self, reported: Iterable[tuple[float, float]]) -> None:
        """(payment time, label reported time) of the labels just applied."""
        told = list(reported)
        if not told:
            return
        await self.redis.run([
            *((None, ("HINCRBY", LABEL_DELAY_KEY,
                      delay_bucket(max(at - paid, 0.0) / DAY), 1), ()) for paid, at in told),
            (_MAX, [FRESH_KEY], ["label_ts", repr(max(at for _, at in told))])])

    async def read(self) -> FreshState:
        fresh, delays = map(pairs, await self.redis.commands(
            [("HGETALL", FRESH_KEY), ("HGETALL", LABEL_DELAY_KEY)]))

        def num(name: bytes) -> float | None:
            return float(fresh[name]) if name in fresh else None

        order = {f"{b:g}" if b != float("inf") else "inf": i for i, b in
                 enumerate(DELAY_BUCKETS)}
        buckets = sorted(((k.decode(), int(v)) for k, v in delays.items()),
                         key=lambda kv: order.get(kv[0], len(order)))
        return FreshState(num(b"scored_at"), num(b"payment_ts"), num(b"label_ts"),
                          tuple(buckets))
