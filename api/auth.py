"""Authentication: an API key per caller, with scopes; optionally an HMAC body signature.

- ``X-API-Key: <key>``: required on every endpoint but health and metrics.
- ``X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``: required
  for keys created with a signing secret; ``t`` must be within the tolerance window, which
  stops a captured request from being replayed later.

Failures are 401 (who are you?) or 403 (not allowed), and change nothing. Keys never
appear in logs: only the key's name is.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable

from fastapi import Depends, HTTPException, Request, status

from api.deps import Services, get_services
from model.api_keys import ApiKey, Scope, hash_key


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail,
                         headers={"WWW-Authenticate": "ApiKey"})


def require(scope: Scope) -> Callable[..., Awaitable[ApiKey | None]]:
    async def check(request: Request, svc: Services = Depends(get_services)) -> ApiKey | None:
        return await authenticate(request, svc, scope)

    return check


async def authenticate(request: Request, svc: Services, scope: Scope) -> ApiKey | None:
    """The caller's key, checked for ``scope`` (and signature); raises 401/403."""
    key = check_key(svc, scope, request.headers.get("x-api-key"))
    if key is not None:
        if key.signing_secret is not None:
            check_signature(key, request.headers.get("x-signature"), await request.body(),
                            svc.settings.signature_tolerance_seconds)
        request.state.caller = key.name
    return key


def known_key(svc: Services, presented: str | None) -> ApiKey | None:
    """The key presented in X-API-Key, whatever its scopes; None when auth is off."""
    if not svc.settings.auth_enabled:
        return None
    if not presented:
        raise _unauthorized("missing X-API-Key header")
    key = svc.api_keys.get(hash_key(presented))
    if key is None:
        raise _unauthorized("unknown API key")
    return key


def check_key(svc: Services, scope: Scope, presented: str | None) -> ApiKey | None:
    """The key presented in X-API-Key, if it has ``scope``; None when auth is off."""
    key = known_key(svc, presented)
    if key is None:
        return None
    if scope not in key.scopes:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            detail=f"key {key.name!r} lacks the {scope!r} scope")
    return key


def check_signature(key: ApiKey, header: str | None, body: bytes, tolerance: float) -> None:
    if not header:
        raise _unauthorized("missing X-Signature header (this key must sign its requests)")
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        stamp, given = int(parts["t"]), parts["v1"]
    except (KeyError, ValueError) as exc:
        raise _unauthorized("malformed X-Signature: expected t=<unix>,v1=<hex>") from exc
    if abs(time.time() - stamp) > tolerance:
        raise _unauthorized(f"X-Signature timestamp outside the {tolerance:g}s window")
    assert key.signing_secret is not None
    expected = sign(key.signing_secret.get_secret_value(), stamp, body)
    if not hmac.compare_digest(expected, given):
        raise _unauthorized("X-Signature does not match the body")


def sign(secret: str, stamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), str(stamp).encode() + b"." + body,
                    hashlib.sha256).hexdigest()
