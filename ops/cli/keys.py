"""``keys``: the API keys of the callers."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from model.config import Settings, get_settings
from ops.cli.output import console, fail

app = typer.Typer(help="API keys of the callers.", no_args_is_help=True)


def _audit(s: Settings, action: str, name: str, **entry: object) -> None:
    """Every change of a key goes to the history's audit (trail ``keys``), with the
    operator's login as the actor; never the key or its secret."""
    import getpass

    from stores.audit_archive import KEYS_TRAIL, change_row
    from stores.history import HistoryStore

    HistoryStore(s.history_dir).append_audit(
        [change_row(KEYS_TRAIL, action, getpass.getuser(), {"key": name, **entry})])


@app.command("create")
def keys_create(
    name: str,
    # typer reads the default, never mutates it
    scope: Annotated[list[str], typer.Option(
        help="score, labels, review, admin or metrics; repeat for more")] = ["score"],  # noqa: B006
    signing: bool = typer.Option(False, help="also require an HMAC signature of each request"),
    label_source: Annotated[list[str], typer.Option(
        help="with the labels scope: chargeback, customer_report or analyst, repeat for "
             "more (default: chargeback and customer_report; analyst verdicts belong to "
             "the review queue)")] = [],  # noqa: B006
    rate: float | None = typer.Option(None, min=0.001, help="requests a second across every "
                                      "API process (default FRAUDSTREAM_RATE_LIMIT_PER_SECOND)"),
    burst: int | None = typer.Option(None, min=1, help="requests at once above the rate "
                                     "(default: the rate's one second, or the installation's)"),
) -> None:
    """Create an API key; it is shown once, only its sha256 is kept."""
    from model.api_keys import create_key, parse_label_sources, parse_scopes

    try:
        scopes = parse_scopes(scope)
        sources = parse_label_sources(label_source) if label_source else None
    except ValueError as exc:
        raise fail(str(exc)) from exc
    s = get_settings()
    assert s.api_keys_file is not None
    try:
        key, secret = create_key(s.api_keys_file, name, scopes, signing, sources,
                                 rate_per_second=rate, burst=burst)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    _audit(s, "key_created", name, scopes=sorted(scopes), signing=signing,
           label_sources=None if sources is None else sorted(sources), rate_per_second=rate,
           burst=burst)
    console.print(f"key {name!r} ({', '.join(sorted(scope))}) created; keep it now, it is "
                  "not shown again:")
    console.print(f"  X-API-Key: {key}")
    if secret:
        console.print(f"  signing secret: {secret}")
    console.print(f"every API process accepts it within {s.keys_poll_seconds:g} s")


@app.command("rotate")
def keys_rotate(
    name: str,
    grace_hours: float = typer.Option(24.0, min=0.0, help="how long the current key stays "
                                                          "valid, for the caller to switch"),
) -> None:
    """A new key for NAME (same scopes, label sources, signing); the current one keeps
    working for the grace period, then is refused."""
    from datetime import timedelta

    from model.api_keys import rotate_key

    s = get_settings()
    assert s.api_keys_file is not None
    try:
        key, secret, until = rotate_key(s.api_keys_file, name, timedelta(hours=grace_hours))
    except ValueError as exc:
        raise fail(str(exc)) from exc
    _audit(s, "key_rotated", name, previous_valid_until=until.isoformat())
    console.print(f"new key for {name!r}; keep it now, it is not shown again:")
    console.print(f"  X-API-Key: {key}")
    if secret:
        console.print(f"  signing secret: {secret}")
    console.print(f"the previous key is refused from {until:%Y-%m-%d %H:%M} UTC")


@app.command("limit")
def keys_limit(
    name: str,
    rate: float | None = typer.Option(None, min=0.001, help="requests a second across every "
                                      "API process; leave out for the installation's default"),
    burst: int | None = typer.Option(None, min=1, help="requests at once above the rate"),
) -> None:
    """Set the rate limit of NAME's keys; every API process applies it within seconds."""
    from model.api_keys import ApiKey, limit_key

    s = get_settings()
    assert s.api_keys_file is not None
    if burst is not None and rate is None:
        raise fail("--burst needs --rate: the installation's default rate has its own burst")
    try:
        limit_key(s.api_keys_file, name, rate, burst)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    _audit(s, "key_limited", name, rate_per_second=rate, burst=burst)
    own = ApiKey(name=name, key_sha256="0" * 64, scopes=set(), rate_per_second=rate,
                 burst=burst).own_limit()
    said = (f"{own[0]:g} requests/s, burst {own[1]}" if own
            else f"the installation's default ({s.rate_limit_per_second:g} requests/s, burst "
                 f"{s.rate_limit_burst})" if s.rate_limit_per_second > 0 else "no limit")
    console.print(f"{name!r}: {said}; every API process applies it within "
                  f"{s.keys_poll_seconds:g} s")


@app.command("revoke")
def keys_revoke(name: str) -> None:
    """Refuse every key named NAME from now on (every API process within seconds)."""
    from model.api_keys import revoke_key

    s = get_settings()
    assert s.api_keys_file is not None
    try:
        n = revoke_key(s.api_keys_file, name)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    _audit(s, "key_revoked", name, keys=n)
    console.print(f"revoked {n} key(s) named {name!r}; every API process refuses them within "
                  f"{s.keys_poll_seconds:g} s")


def _last_used(s: Settings) -> dict[str, float] | None:
    import asyncio

    from stores.key_usage import KeyUsage
    from stores.redis_client import connect

    async def read() -> dict[str, float]:
        redis = connect(s)
        try:
            return await asyncio.wait_for(KeyUsage(redis).last_used(), 3)
        finally:
            await redis.aclose()

    try:
        return asyncio.run(read())
    except Exception:  # Redis away: the list still shows the keys
        return None


@app.command("list")
def keys_list() -> None:
    """Key names, scopes, label sources, expiry and last use (never the keys)."""
    from datetime import UTC, datetime

    from model.api_keys import load_keys

    s = get_settings()
    assert s.api_keys_file is not None
    used = _last_used(s)
    now = datetime.now(UTC)
    table = Table("name", "scopes", "label sources", "signed", "rate limit", "expires",
                  "last used", "sha256 (first 12)")
    for digest, key in load_keys(s.api_keys_file).items():
        expires = "" if key.expires_at is None else (
            f"{key.expires_at:%Y-%m-%d %H:%M}" + (" (expired)" if key.expires_at <= now
                                                   else ""))
        last = "?" if used is None else (
            f"{datetime.fromtimestamp(used[digest[:12]], UTC):%Y-%m-%d %H:%M:%S}"
            if digest[:12] in used else "never")
        table.add_row(key.name, ", ".join(sorted(key.scopes)),
                      ", ".join(sorted(key.label_sources)) if "labels" in key.scopes else "",
                      "yes" if key.signing_secret else "",
                      "default" if (own := key.own_limit()) is None
                      else f"{own[0]:g}/s, burst {own[1]}",
                      expires, last, digest[:12])
    console.print(table)
    if used is None:
        console.print("(last use unknown: Redis did not answer)")
