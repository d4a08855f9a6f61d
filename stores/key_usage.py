"""When each API key was last used, kept in Redis (``fs:keys:used``, a hash of the key's
sha256, first 12 hex digits, to epoch seconds): written by the API processes now and
then, read by ``keys list``."""

from __future__ import annotations

from collections.abc import Mapping

from stores.redis_client import RedisClient

USED_KEY = "fs:keys:used"
# Keeps the later of two processes' times: HSET would let an older write win.
_NOTE_LUA = b"""
for i = 1, #ARGV, 2 do
  local seen = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > seen then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
"""


class KeyUsage:
    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    async def note(self, used: Mapping[str, float]) -> None:
        args: list[str | bytes | int | float] = []
        for name, at in used.items():
            args += [name, f"{at:.3f}"]
        await self.redis.script(_NOTE_LUA, [USED_KEY], args)

    async def last_used(self) -> dict[str, float]:
        raw = await self.redis.admin.hgetall(USED_KEY)
        return {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}
