"""The audits' append-only copy: the Redis audit streams copied into the history.

The audit trails are written where the change happens, in Redis, by the same script that
makes it (a rule set and its entry at once, a verdict and its entry at once). Redis is
the live store, and whoever can reach it can ``XDEL`` an entry or delete the stream. So
the stream worker (its leader) copies every new entry, every few seconds, into the
history's ``audit`` table: Parquet part files that nothing rewrites, trims or deletes.
``verify`` then says which copied entries are gone from Redis: a trail edited behind the
service's back is found, and the copy still holds what was there.

Exactly once without a cursor of its own: where to go on from is the newest entry id
the history holds for each trail, read from the files when an archive is made (a new
leader after a crash), so a copy written just before a crash is not written again. Two
leaders for a moment (a rebalance) may write an entry twice; the ``audit`` view holds it
once (``audit_raw`` shows the files as written).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import orjson

from stores import policy_store, reviews
from stores.history import HistoryStore
from stores.redis_client import RedisClient

# trail name -> its Redis stream
TRAILS: dict[str, str] = {"policy": policy_store.AUDIT_KEY, "reviews": reviews.AUDIT_KEY}
# Written to the history directly, by the command that makes the change: API keys live in
# a file on the operator's machine, not in Redis.
KEYS_TRAIL = "keys"
ALL_TRAILS = (*TRAILS, KEYS_TRAIL)
# Entries per XRANGE: a copy after a long outage goes in pieces of this size.
PAGE = 1_000

StreamId = tuple[int, int]


def parse_id(entry_id: str) -> StreamId:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def audit_row(trail: str, entry_id: str, fields: Mapping[bytes, bytes]) -> dict[str, Any]:
    """One history row of a stream entry. The rules-and-lists trail keeps its entry as one
    JSON document (``what``, ``actor``); the review queue's as fields (``action``,
    ``analyst``): both end as the action, who did it, and the whole entry as JSON."""
    decoded = {k.decode(): v.decode() for k, v in fields.items()}
    entry: dict[str, Any] = orjson.loads(decoded["entry"]) if "entry" in decoded else decoded
    ms, _ = parse_id(entry_id)
    return {
        "trail": trail,
        "entry_id": entry_id,
        "logged_at": datetime.fromtimestamp(ms / 1000, UTC),
        "action": str(entry.get("what") or entry.get("action") or ""),
        "actor": str(entry.get("actor") or entry.get("analyst") or ""),
        "entry": orjson.dumps(entry, option=orjson.OPT_SORT_KEYS).decode(),
    }


def change_row(trail: str, action: str, actor: str, entry: Mapping[str, Any],
               at: datetime | None = None) -> dict[str, Any]:
    """One history row of a change recorded where it is made (``KEYS_TRAIL``); its id is
    the time in ms and a random part, unique without a stream to number it."""
    import secrets

    at = at or datetime.now(UTC)
    return {"trail": trail, "entry_id": f"{int(at.timestamp() * 1000)}-{secrets.randbits(48)}",
            "logged_at": at, "action": action, "actor": actor,
            "entry": orjson.dumps({"what": action, "actor": actor, **entry},
                                  option=orjson.OPT_SORT_KEYS).decode()}


@dataclass
class Verification:
    """What ``AuditArchive.verify`` found, per trail."""

    copied: dict[str, int] = field(default_factory=dict)
    not_copied_yet: dict[str, int] = field(default_factory=dict)
    # entry ids the history holds that Redis no longer does
    missing_from_redis: dict[str, list[str]] = field(default_factory=dict)
    # a stream gone or emptied while the history holds entries of it
    stream_gone: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not any(self.missing_from_redis.values()) and not self.stream_gone


class AuditArchive:
    """Copies the audit streams into ``history`` (``copy``) and checks them (``verify``)."""

    def __init__(self, redis: RedisClient, history: HistoryStore) -> None:
        self.redis = redis
        self.history = history
        self._after: dict[str, StreamId | None] | None = None

    def copied_up_to(self) -> dict[str, StreamId | None]:
        """The newest entry id of each trail in the history (None: nothing copied)."""
        if self._after is None:
            ids = self.history.query("SELECT trail, entry_id FROM audit")
            newest: dict[str, StreamId | None] = dict.fromkeys(TRAILS)
            for trail, entry_id in zip(ids["trail"], ids["entry_id"], strict=True):
                if trail in newest:
                    parsed = parse_id(entry_id)
                    seen = newest[trail]
                    newest[trail] = parsed if seen is None else max(seen, parsed)
            self._after = newest
        return self._after

    async def _read(self, key: str, after: StreamId | None
                    ) -> list[tuple[str, dict[bytes, bytes]]]:
        low = "-" if after is None else f"({after[0]}-{after[1]}"
        # bytes, as the admin client answers (see PolicyStore.audit)
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                       await self.redis.admin.xrange(key, min=low, max="+", count=PAGE))
        return [(i.decode(), f) for i, f in entries]

    async def copy(self) -> int:
        """Copy every entry not yet in the history; returns how many. Raises what Redis or
        the disk raise (the caller retries: nothing is marked copied that was not)."""
        after = self.copied_up_to()
        copied = 0
        for trail, key in TRAILS.items():
            while True:
                entries = await self._read(key, after[trail])
                if not entries:
                    break
                self.history.append_audit(audit_row(trail, i, f) for i, f in entries)
                after[trail] = parse_id(entries[-1][0])
                copied += len(entries)
                if len(entries) < PAGE:
                    break
        return copied

    async def verify(self) -> Verification:
        """Compare the history's copy with the streams: an entry copied and since removed
        from Redis is named. Entries older than a stream's first are reported too (a
        stream trimmed, or deleted and written anew)."""
        self._after = None  # read the files afresh: verify is asked rarely, by a person
        held = self.history.query("SELECT trail, entry_id FROM audit ORDER BY trail")
        result = Verification()
        for trail, key in TRAILS.items():
            ids = set(held["entry_id"][held["trail"] == trail])
            result.copied[trail] = len(ids)
            in_redis: set[str] = set()
            after: StreamId | None = None
            while True:
                entries = await self._read(key, after)
                in_redis.update(i for i, _ in entries)
                if len(entries) < PAGE:
                    break
                after = parse_id(entries[-1][0])
            result.missing_from_redis[trail] = sorted(ids - in_redis, key=parse_id)
            result.not_copied_yet[trail] = len(in_redis - ids)
            if ids and not in_redis:
                result.stream_gone.append(trail)
        return result
