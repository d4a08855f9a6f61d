"""Token buckets in Redis, one per API key name, shared by every API process.

A bucket refills at ``rate`` tokens a second up to ``burst``; ``take`` hands out up to
``want`` of them in one call, so an API process can take a small lease and admit that many
requests without a Redis round trip each (``api.throttle``). Redis's own clock dates the
refill: API hosts whose clocks disagree still share one bucket fairly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stores.redis_client import RedisClient

# KEYS[1] the bucket; ARGV rate (tokens/s), burst, want. Replies {granted, wait_ms}: how
# many tokens were handed out, and, when none, how long until one is there.
_TAKE_LUA = b"""
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(held[1]), tonumber(held[2])
if tokens == nil or at == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
local wait = 0
if granted == 0 then wait = math.ceil((1 - tokens) / rate * 1000) end
return {granted, wait}
"""


@dataclass(frozen=True, slots=True)
class Grant:
    tokens: int
    wait_seconds: float  # with no tokens granted: until the next one


def bucket_key(name: str) -> str:
    return f"fs:rate:{{{name}}}"


class TokenBuckets:
    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    async def take(self, name: str, rate: float, burst: int, want: int) -> Grant:
        if not (math.isfinite(rate) and rate > 0 and burst >= 1 and want >= 1):
            raise ValueError(f"a bucket needs rate > 0, burst >= 1, want >= 1; got "
                             f"{rate}, {burst}, {want}")
        granted, wait_ms = await self.redis.script(
            _TAKE_LUA, [bucket_key(name)], [repr(float(rate)), burst, want])
        return Grant(int(granted), int(wait_ms) / 1000)
