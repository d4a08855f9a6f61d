"""Per-key rate limits: a token bucket per key name, shared by every API process.

Each process takes tokens from the key's bucket in Redis (``stores.rate_limits``) a small
lease at a time (a twentieth of a second's worth, at most a tenth of the burst) and admits
that many requests without another round trip, so a limit costs one Redis call per lease,
not per request. A key over its limit is answered 429 with ``Retry-After``; until then,
the process refuses it from memory, so a flood of refused requests costs Redis nothing.

Redis away: each process admits from a bucket of its own at the key's rate (the limit then
holds per process, not across them): scoring must not stop because the limiter's store is.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from api.metrics import RATE_LIMIT_FALLBACK, RATE_LIMITED
from model.api_keys import ApiKey
from model.periodic import raise_if_cancelled
from stores.rate_limits import Grant, TokenBuckets

log = logging.getLogger(__name__)

LEASE_SECONDS = 1.0  # a lease's tokens left unused after this are given up
REDIS_TIMEOUT = 0.05  # a lease that takes longer is taken locally


@dataclass(frozen=True, slots=True)
class Limit:
    rate: float  # requests a second
    burst: int

    @property
    def lease(self) -> int:
        return max(1, min(self.burst // 10, int(self.rate / 20)))


@dataclass(slots=True)
class _Lease:
    tokens: int = 0
    until: float = 0.0
    blocked_until: float = 0.0
    # Set while one request takes the next lease from Redis; the others wait for it.
    renewing: asyncio.Future[None] | None = None


@dataclass(slots=True)
class _LocalBucket:
    tokens: float
    at: float

    def take(self, limit: Limit, want: int, now: float) -> Grant:
        self.tokens = min(limit.burst, self.tokens + max(0.0, now - self.at) * limit.rate)
        self.at = now
        granted = min(want, math.floor(self.tokens))
        self.tokens -= granted
        return Grant(granted, 0.0 if granted else (1 - self.tokens) / limit.rate)


class Throttle:
    def __init__(self, buckets: TokenBuckets, default: Limit | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.buckets = buckets
        self.default = default
        self.clock = clock
        self._leases: dict[str, _Lease] = {}
        self._local: dict[str, _LocalBucket] = {}

    def limit(self, key: ApiKey) -> Limit | None:
        """The key's own limit, else the installation's default (None: unlimited)."""
        own = key.own_limit()
        return self.default if own is None else Limit(*own)

    async def admit(self, key: ApiKey) -> float | None:
        """None if ``key`` may make this request now, else the seconds until it may."""
        limit = self.limit(key)
        if limit is None:
            return None
        lease = self._leases.get(key.name)
        if lease is None:  # (not setdefault: a _Lease built per request for nothing)
            lease = self._leases[key.name] = _Lease()
        while True:
            now = self.clock()
            if lease.blocked_until > now:
                return self._refused(key, lease.blocked_until - now)
            if lease.tokens > 0 and lease.until > now:
                lease.tokens -= 1
                return None
            if lease.renewing is None:
                break
            # One renewal at a time: requests that each took a lease of their own, all at
            # once (a backlog let in after a pause), spent the key's bucket a lease per
            # request, and the key was refused at a fraction of its rate for good.
            await asyncio.shield(lease.renewing)
        lease.renewing = asyncio.get_running_loop().create_future()
        try:
            grant = await self._take(key.name, limit, now)
        finally:
            lease.renewing.set_result(None)
            lease.renewing = None
        if grant.tokens == 0:
            lease.tokens, lease.blocked_until = 0, now + grant.wait_seconds
            return self._refused(key, grant.wait_seconds)
        lease.tokens, lease.until = grant.tokens - 1, now + LEASE_SECONDS
        return None

    async def _take(self, name: str, limit: Limit, now: float) -> Grant:
        try:
            return await asyncio.wait_for(
                self.buckets.take(name, limit.rate, limit.burst, limit.lease), REDIS_TIMEOUT)
        except Exception as exc:
            raise_if_cancelled(exc)
            RATE_LIMIT_FALLBACK.inc()
            local = self._local.setdefault(name, _LocalBucket(limit.burst, now))
            return local.take(limit, limit.lease, now)

    @staticmethod
    def _refused(key: ApiKey, wait: float) -> float:
        RATE_LIMITED.labels(key.name).inc()
        return wait


def retry_after(wait: float) -> str:
    """``Retry-After`` in whole seconds (RFC 9110), never 0."""
    return str(max(1, math.ceil(wait)))
