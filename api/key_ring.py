"""The API keys this process accepts, re-read from the key file as it changes.

``fraudstream keys create / revoke / rotate`` rewrite the file (atomically); every API
process sees the change within ``FRAUDSTREAM_KEYS_POLL_SECONDS``, no restart. A file that
does not read (a hand edit gone wrong) leaves the keys as they were, said in the log.
When each key was last used is kept here and written to Redis now and then, off the
requests' path, for ``fraudstream keys list``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from model.api_keys import ApiKey, load_keys
from model.periodic import raise_if_cancelled
from stores.key_usage import KeyUsage

log = logging.getLogger(__name__)


def _expired(key: ApiKey, now: float) -> bool:
    return key.expires_at is not None and key.expires_at.timestamp() <= now


class KeyRing:
    def __init__(self, path: Path, usage: KeyUsage | None = None) -> None:
        self.path = path
        self.usage = usage
        self._keys: dict[str, ApiKey] = load_keys(path)
        self._seen = self._stamp()
        self._used: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, digest: str) -> ApiKey | None:
        """The key of this sha256, if it is valid now (not expired)."""
        key = self._keys.get(digest)
        now = time.time()
        if key is None or _expired(key, now):
            return None
        self._used[digest[:12]] = now  # per key: a rotation's two apart
        return key

    def expired(self, digest: str) -> bool:
        key = self._keys.get(digest)
        return key is not None and _expired(key, time.time())

    def refresh(self) -> bool:
        """Re-read the file if it changed; True if the keys did."""
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        try:
            keys = load_keys(self.path)
        except Exception as exc:  # a broken file: the keys stay as they were
            log.warning("API key file %s not reloaded (%s); keeping %d keys", self.path,
                        type(exc).__name__, len(self._keys))
            return False
        self._seen = stamp
        changed = keys != self._keys
        self._keys = keys
        if changed:
            log.info("API keys reloaded: %d keys", len(keys))
        return changed

    async def watch(self, period: float) -> None:
        """Refresh every ``period`` seconds, and write when keys were last used."""
        while True:
            await asyncio.sleep(period)
            self.refresh()
            used, self._used = self._used, {}
            if used and self.usage is not None:
                try:
                    await self.usage.note(used)
                except Exception as exc:
                    raise_if_cancelled(exc)
                    self._used = {**used, **self._used}  # written next time

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size
