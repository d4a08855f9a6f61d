"""API keys: who may call which endpoints, kept in a JSON file readable by root only.

The file stores each key's sha256, never the key itself, plus its scopes and, when the
caller must sign requests, the shared signing secret (which has to be kept in clear to
check signatures). Keys are shown once, when created.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
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


def create_key(path: Path, name: str, scopes: set[Scope], signing: bool = False,
               label_sources: set[LabelSource] | None = None) -> tuple[str, str | None]:
    """Add a key to the file; returns (key, signing secret) -- the only time they are seen."""
    current = KeyFile.model_validate_json(path.read_text()) if path.exists() else KeyFile()
    if any(k.name == name for k in current.keys):
        raise ValueError(f"a key named {name!r} exists already")
    key = "fsk_" + secrets.token_urlsafe(32)
    secret = secrets.token_urlsafe(32) if signing else None
    current.keys.append(ApiKey(
        name=name, key_sha256=hash_key(key), scopes=scopes,
        signing_secret=SecretStr(secret) if secret else None,
        label_sources=set(DEFAULT_LABEL_SOURCES if label_sources is None else label_sources)))
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"keys": [
        {**k.model_dump(exclude={"signing_secret"}), "scopes": sorted(k.scopes),
         "label_sources": sorted(k.label_sources),
         "signing_secret": k.signing_secret.get_secret_value() if k.signing_secret else None}
        for k in current.keys
    ]}
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
    os.replace(tmp, path)
    return key, secret


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
