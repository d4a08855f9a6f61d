"""API keys: who may call which endpoints, kept in a JSON file readable by root only.

The file stores each key's sha256, never the key itself, plus its scopes and, when the
caller must sign requests, the shared signing secret (which has to be kept in clear to
check signatures). Keys are shown once, when created.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from model.schemas import LabelSource

Scope = Literal["score", "labels", "review", "admin", "metrics"]
# review: the analysts' queue (list, claim, verdict); metrics: /metrics alone (a scraper)
SCOPES: tuple[Scope, ...] = ("score", "labels", "review", "admin", "metrics")


class ApiKey(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: set[Scope]
    signing_secret: SecretStr | None = None  # set: requests must carry an HMAC signature
    # What a ``labels`` key may report (``POST /v1/labels``). Analyst verdicts belong to
    # the review queue, where the analyst is the key; a key given ``analyst`` here (a case
    # tool of its own) reports verdicts in its own name.
    label_sources: set[LabelSource] = Field(
        default_factory=lambda: set(DEFAULT_LABEL_SOURCES))
    # Refused from then on: the old key of a rotation, or a key made to expire.
    expires_at: datetime | None = None
    # Requests a second this key may make, across every API process, and how many at
    # once (default: the installation's FRAUDSTREAM_RATE_LIMIT_PER_SECOND and _BURST).
    rate_per_second: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    burst: int | None = Field(default=None, ge=1)

    def own_limit(self) -> tuple[float, int] | None:
        """(requests a second, burst) set on this key; None: the installation's default.
        A rate without a burst allows a second's worth at once."""
        if self.rate_per_second is None:
            return None
        return self.rate_per_second, self.burst or max(1, math.ceil(self.rate_per_second))


DEFAULT_LABEL_SOURCES: tuple[LabelSource, ...] = ("chargeback", "customer_report")
API_LABEL_SOURCES: tuple[LabelSource, ...] = ("chargeback", "customer_report", "analyst")


class KeyFile(BaseModel):
    keys: list[ApiKey] = []


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_keys(path: Path) -> dict[str, ApiKey]:
    """sha256 -> key. A missing file means no keys."""
    if not path.exists():
        return {}
    data = KeyFile.model_validate_json(path.read_text())
    return {k.key_sha256: k for k in data.keys}


def _read(path: Path) -> KeyFile:
    return KeyFile.model_validate_json(path.read_text()) if path.exists() else KeyFile()


def _write(path: Path, keys: list[ApiKey]) -> None:
    """The whole file, replaced atomically (mode 600): a reader sees the old or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"keys": [
        {**k.model_dump(mode="json", exclude={"signing_secret"}), "scopes": sorted(k.scopes),
         "label_sources": sorted(k.label_sources),
         "signing_secret": k.signing_secret.get_secret_value() if k.signing_secret else None}
        for k in keys
    ]}
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
    os.replace(tmp, path)


def _new(name: str, scopes: set[Scope], signing: bool, label_sources: set[LabelSource] | None,
         expires_at: datetime | None = None) -> tuple[ApiKey, str, str | None]:
    key = "fsk_" + secrets.token_urlsafe(32)
    secret = secrets.token_urlsafe(32) if signing else None
    return ApiKey(name=name, key_sha256=hash_key(key), scopes=scopes,
                  signing_secret=SecretStr(secret) if secret else None,
                  label_sources=set(DEFAULT_LABEL_SOURCES if label_sources is None
                                    else label_sources),
                  expires_at=expires_at), key, secret


def create_key(path: Path, name: str, scopes: set[Scope], signing: bool = False,
               label_sources: set[LabelSource] | None = None,
               expires_at: datetime | None = None, rate_per_second: float | None = None,
               burst: int | None = None) -> tuple[str, str | None]:
    """Add a key to the file; returns (key, signing secret) -- the only time they are seen."""
    current = _read(path)
    if any(k.name == name for k in current.keys):
        raise ValueError(f"a key named {name!r} exists already (rotate it, or revoke it)")
    entry, key, secret = _new(name, scopes, signing, label_sources, expires_at)
    entry = ApiKey.model_validate({**entry.model_dump(), "rate_per_second": rate_per_second,
                                   "burst": burst})
    _write(path, [*current.keys, entry])
    return key, secret


def rotate_key(path: Path, name: str, grace: timedelta) -> tuple[str, str | None, datetime]:
    """A new key for ``name``, with the same scopes, sources and signing; the current ones
    stay valid for ``grace``, so callers can switch. Returns (key, secret, old keys' end)."""
    current = _read(path)
    now = datetime.now(UTC)
    live = [k for k in current.keys if k.name == name
            and (k.expires_at is None or k.expires_at > now)]
    if not live:
        raise ValueError(f"no valid key named {name!r}; create one with `fraudstream keys "
                         "create`")
    newest = live[-1]
    until = now + grace
    entry, key, secret = _new(name, set(newest.scopes), newest.signing_secret is not None,
                              set(newest.label_sources))
    entry = entry.model_copy(update={"rate_per_second": newest.rate_per_second,
                                     "burst": newest.burst})
    kept = [k.model_copy(update={"expires_at": min(k.expires_at or until, until)})
            if k in live else k for k in current.keys]
    _write(path, [*kept, entry])
    return key, secret, until


def limit_key(path: Path, name: str, rate_per_second: float | None,
              burst: int | None) -> int:
    """Set the rate limit of every key named ``name`` (None: the installation's default);
    returns how many keys that is. Validated as the key file is: a bad value changes
    nothing."""
    current = _read(path)
    if not any(k.name == name for k in current.keys):
        raise ValueError(f"no key named {name!r}")
    updated = [ApiKey.model_validate({**k.model_dump(), "rate_per_second": rate_per_second,
                                      "burst": burst}) if k.name == name else k
               for k in current.keys]
    _write(path, updated)
    return sum(k.name == name for k in current.keys)


def revoke_key(path: Path, name: str) -> int:
    """Remove every key named ``name``; returns how many there were."""
    current = _read(path)
    kept = [k for k in current.keys if k.name != name]
    if len(kept) == len(current.keys):
        raise ValueError(f"no key named {name!r}")
    _write(path, kept)
    return len(current.keys) - len(kept)


def parse_label_sources(names: list[str]) -> set[LabelSource]:
    """The label sources named; ``ValueError`` naming those a key cannot be given."""
    bad = [n for n in names if n not in API_LABEL_SOURCES]
    if bad:
        raise ValueError(f"unknown label source(s) {bad}; use {', '.join(API_LABEL_SOURCES)}")
    return {s for s in API_LABEL_SOURCES if s in names}


def parse_scopes(names: list[str]) -> set[Scope]:
    """The scopes named; ``ValueError`` naming those that are none."""
    bad = [n for n in names if n not in SCOPES]
    if bad:
        raise ValueError(f"unknown scope(s) {bad}; use {', '.join(SCOPES)}")
    return {s for s in SCOPES if s in names}


@dataclass(frozen=True)
class DemoKey:
    key: str
    stash: Path  # where it is kept, readable by its owner only
    created: bool  # now, by this call


def demo_key(keys_file: Path) -> DemoKey:
    """The key of the demo and replay traffic (scopes score, labels; every label source,
    since the simulated back office reports analyst verdicts too): created once, then
    read from its stash beside the key file."""
    stash = keys_file.with_name("demo-client.key")
    if stash.exists():
        return DemoKey(stash.read_text().strip(), stash, created=False)
    key, _ = create_key(keys_file, "demo-client", {"score", "labels"},
                        label_sources=set(API_LABEL_SOURCES))
    stash.touch(mode=0o600)
    stash.write_text(key)
    return DemoKey(key, stash, created=True)
