"""Authentication: an API key per caller, with scopes; optionally an HMAC body signature.

- ``X-API-Key: <key>``: required on every endpoint but health and metrics.
- ``X-Signature: t=<unix seconds>,v2=<hex HMAC-SHA256(secret, canonical)>``: required for
  keys created with a signing secret, where ``canonical`` is ``t``, the method, the path,
  the query string and the body's SHA-256 (hex), joined by newlines. It binds the request,
  not only its body: a signed ``GET`` is no signature for a ``DELETE``. ``t`` must be
  within the tolerance window, and outside the scoring routes a signature is good once
  (kept in Redis for the window, so every API process refuses it): a captured admin call
  cannot be replayed. Scoring requests may be sent again as they are, since a gateway
  retries them and a retried payment_id gets its first answer anyway.

Failures are 401 (who are you?) or 403 (not allowed), and change nothing. Keys never
appear in logs: only the key's name is.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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
            tolerance = svc.settings.signature_tolerance_seconds
            signature = check_signature(
                key, request.headers.get("x-signature"),
                # the path as sent (percent-encoding and all), as the caller signed it
                Signed(request.method, request.scope.get("raw_path", b"").decode("latin-1")
                       or request.url.path, request.url.query, await request.body()),
                tolerance)
            if scope != "score":
                await refuse_reused(svc, key, signature, tolerance)
        request.state.caller = key.name
    return key


def known_key(svc: Services, presented: str | None) -> ApiKey | None:
    """The key presented in X-API-Key, whatever its scopes; None when auth is off."""
    if not svc.settings.auth_enabled:
        return None
    if not presented:
        raise _unauthorized("missing X-API-Key header")
    digest = hash_key(presented)
    key = svc.api_keys.get(digest)
    if key is None:
        raise _unauthorized("API key expired" if svc.api_keys.expired(digest)
                            else "unknown API key")
    return key


def check_key(svc: Services, scope: Scope, presented: str | None) -> ApiKey | None:
    """The key presented in X-API-Key, if it has ``scope``; None when auth is off."""
    key = known_key(svc, presented)
    return None if key is None else require_scope(key, scope)


def require_scope(key: ApiKey, scope: Scope) -> ApiKey:
    """``key``, if it has ``scope``; 403 otherwise."""
    if scope not in key.scopes:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            detail=f"key {key.name!r} lacks the {scope!r} scope")
    return key


@dataclass(frozen=True, slots=True)
class Signed:
    """What a signature covers."""

    method: str
    path: str
    query: str
    body: bytes

    def canonical(self, stamp: int) -> bytes:
        return b"\n".join((str(stamp).encode(), self.method.upper().encode(),
                           self.path.encode(), self.query.encode(),
                           hashlib.sha256(self.body).hexdigest().encode()))


def check_signature(key: ApiKey, header: str | None, request: Signed,
                    tolerance: float) -> str:
    """The signature (hex), if it is the key's over ``request`` and fresh; raises 401."""
    if not header:
        raise _unauthorized("missing X-Signature header (this key must sign its requests)")
    try:
        parts = dict(item.strip().split("=", 1) for item in header.split(","))
        stamp = int(parts["t"])
    except (KeyError, ValueError) as exc:
        raise _unauthorized("malformed X-Signature: expected t=<unix>,v2=<hex>") from exc
    given = parts.get("v2")
    if given is None:
        raise _unauthorized(
            "X-Signature: v1 (the body alone) is no longer accepted; sign v2 over the "
            "method, path, query and body" if "v1" in parts
            else "malformed X-Signature: expected t=<unix>,v2=<hex>")
    if abs(time.time() - stamp) > tolerance:
        raise _unauthorized(f"X-Signature timestamp outside the {tolerance:g}s window")
    assert key.signing_secret is not None
    expected = sign(key.signing_secret.get_secret_value(), stamp, request)
    if not hmac.compare_digest(expected, given):
        raise _unauthorized("X-Signature does not match the request")
    return expected


async def refuse_reused(svc: Services, key: ApiKey, signature: str, tolerance: float) -> None:
    """A signature is good once within its window, across API processes (Redis)."""
    try:
        first = await svc.store.redis.command(
            "SET", f"fs:sig:{{{key.name}}}:{signature}", "1", "NX", "EX",
            int(2 * tolerance) + 1)
    except Exception as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=(
            "the signature's single use cannot be checked now (Redis unavailable); retry "
            "with a new signature"), headers={"Retry-After": "1"}) from exc
    if first is None:
        raise _unauthorized("X-Signature already used: sign each request anew")


def sign(secret: str, stamp: int, request: Signed) -> str:
    """The v2 signature of ``request`` at ``stamp`` (hex)."""
    return hmac.new(secret.encode(), request.canonical(stamp), hashlib.sha256).hexdigest()
