"""The scoring hook's HTTP edge: bytes in, bytes out, for the one route on every payment.

``score_request`` turns a request's headers and body into the answer's status, body and
headers. Two adapters serve it: the FastAPI route (which also documents it in OpenAPI, and
is what in-process tests drive) and ``ScoringEdge``, the ASGI app the server runs, which
answers ``POST /v1/payments/score`` itself and hands every other request to FastAPI.

Why a second adapter: measured on this machine at 200 payments/s, FastAPI's and
Starlette's layers (middleware stack, routing, dependency solving, Request and Response
objects) took more CPU per payment than the scoring itself.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.arrival import arrived
from api.auth import Signed, check_key, check_signature, known_key, require_scope
from api.deps import Services
from api.scoring import score_answer
from api.throttle import retry_after
from model.api_keys import ApiKey
from model.schemas import Payment

log = logging.getLogger(__name__)

SCORE_PATH = "/v1/payments/score"
MAX_BODY = 64 * 1024  # a payment is well under 1 KiB
KIB = 1024
# The largest body each route may send, checked before it is read (from Content-Length, or
# counted as it comes): exact paths, then prefixes, then the default. A batch holds up to
# 500 payments; a rule set a few hundred rules; a label or a verdict a note of 2,000
# characters.
BODY_LIMITS = {SCORE_PATH: MAX_BODY, "/v1/payments/score/batch": 1024 * KIB,
               "/v1/admin/rules": 1024 * KIB}
BODY_LIMIT_PREFIXES = (("/v1/labels", 16 * KIB), ("/v1/reviews", 16 * KIB),
                       ("/v1/admin", 16 * KIB))
DEFAULT_BODY_LIMIT = 64 * KIB
BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON = (b"content-type", b"application/json")

Header = Callable[[str], str | None]
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def validation_detail(errors: list[Any]) -> list[dict[str, Any]]:
    """pydantic's errors without the offending input: it may be a card number."""
    return [{k: v for k, v in e.items() if k not in ("input", "ctx", "url")} for e in errors]


def error_answer(exc: HTTPException | RequestValidationError) -> Answer:
    if isinstance(exc, RequestValidationError):
        return 422, orjson.dumps({"detail": validation_detail(list(exc.errors()))}), [JSON]
    headers = [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]
    return exc.status_code, orjson.dumps({"detail": exc.detail}), [JSON, *headers]


async def score_request(svc: Services, header: Header, body: bytes,
                        query: str = "", known: ApiKey | None = None,
                        first_byte: float | None = None) -> Answer:
    """Authenticate, validate, score. Every failure is a 4xx naming what is wrong.
    ``known``: the caller's key, already looked up by the edge (its scope still checked);
    ``first_byte``: when the request's first byte came (``api.arrival``), where its
    deadline starts."""
    try:
        key = check_key(svc, "score", header("x-api-key")) if known is None \
            else require_scope(known, "score")
        if key is not None and key.signing_secret is not None:
            check_signature(key, header("x-signature"), Signed("POST", SCORE_PATH, query, body),
                            svc.settings.signature_tolerance_seconds)
        try:
            payment = Payment.model_validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc
        deadline_ms = _deadline(header("x-deadline-ms"))
        _, body = await score_answer(payment, svc, deadline_ms, first_byte)
    except (HTTPException, RequestValidationError) as exc:
        return error_answer(exc)
    return 200, body, [JSON]


def _deadline(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 60_000:
        raise RequestValidationError([{"type": "value_error", "loc": ("header", "X-Deadline-Ms"),
                                       "msg": "X-Deadline-Ms must be an integer 1..60000"}])
    return int(raw)


class ScoringEdge:
    """ASGI app: ``POST /v1/payments/score`` answered here, the rest by ``app``. For every
    request with a body, the key is known and the body within its route's limit
    (``body_limit``) before it is read."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    @property
    def state(self) -> Any:
        """The FastAPI app's state (its services), as on a Starlette app."""
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: Mapping[bytes, bytes] = dict(scope["headers"])
        if scope["method"] in BODYLESS:
            # The route checks the key's scope; a known key is held to its rate here.
            refusal = await self._over_rate(self._presented_key(headers))
            if refusal is not None:
                await _respond(send, refusal)
                return
            await self.app(scope, receive, send)
            return
        # Limits before work: a body is read only from a known key within its rate, and only
        # up to the route's limit, so a caller without a key cannot make the API read
        # anything, and one with a key no more than its limit allows.
        limit = body_limit(scope["path"])
        refusal, key = self._refuse_unread(headers, limit)
        if refusal is None:
            refusal = await self._over_rate(key)
        if refusal is not None:
            await _respond(send, refusal)
            return
        if scope["path"] == SCORE_PATH and scope["method"] == "POST":
            await self._score(headers, scope.get("query_string", b"").decode("latin-1"),
                              key, receive, send, arrived(scope))
            return
        try:
            body = await _read_body(receive, limit)
        except _Disconnected:
            return
        if body is None:
            await _respond(send, _too_large(limit))
            return
        await self.app(scope, _replaying(body, receive), send)

    def _refuse_unread(self, headers: Mapping[bytes, bytes], limit: int
                       ) -> tuple[Answer | None, ApiKey | None]:
        """401 without a known key, 413 (or 400) on the declared length: before reading.
        Also the key found (None when auth is off)."""
        svc: Services | None = getattr(self.app.state, "services", None)
        key = None
        if svc is not None:
            presented = headers.get(b"x-api-key")
            try:
                key = known_key(svc, None if presented is None
                                else presented.decode("latin-1"))
            except HTTPException as exc:
                return error_answer(exc), None
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return (400, b'{"detail":"Content-Length must be a number of bytes"}',
                        [JSON]), key
            if int(declared) > limit:
                return _too_large(limit), key
        return None, key

    def _presented_key(self, headers: Mapping[bytes, bytes]) -> ApiKey | None:
        """The known key in X-API-Key, if any (None when auth is off or no key is known)."""
        svc: Services | None = getattr(self.app.state, "services", None)
        presented = headers.get(b"x-api-key")
        if svc is None or presented is None:
            return None
        try:
            return known_key(svc, presented.decode("latin-1"))
        except HTTPException:
            return None

    async def _over_rate(self, key: ApiKey | None) -> Answer | None:
        """429 with Retry-After if ``key`` is over its rate limit, else None."""
        svc: Services | None = getattr(self.app.state, "services", None)
        if key is None or svc is None:
            return None
        wait = await svc.throttle.admit(key)
        if wait is None:
            return None
        limit = svc.throttle.limit(key)
        assert limit is not None
        after = retry_after(wait)
        return 429, orjson.dumps({"detail": (
            f"key {key.name!r} is over its rate limit ({limit.rate:g} requests/s, burst "
            f"{limit.burst}); retry after {after} s")}), [JSON, (b"retry-after", after.encode())]

    async def _score(self, headers: Mapping[bytes, bytes], query: str, key: ApiKey | None,
                     receive: Receive, send: Send, first_byte: float) -> None:
        try:
            body = await _read_body(receive, MAX_BODY)
        except _Disconnected:
            return  # the caller hung up before sending the whole body: nothing to score
        if body is None:
            answer = _too_large(MAX_BODY)
        else:
            def header(name: str) -> str | None:
                value = headers.get(name.encode())
                return None if value is None else value.decode("latin-1")
            try:
                answer = await score_request(self.app.state.services, header, body, query,
                                             key, first_byte)
            except Exception:
                log.exception("scoring failed")
                answer = 500, b'{"detail":"internal error"}', [JSON]
        await _respond(send, answer)


def body_limit(path: str) -> int:
    """The largest body ``path`` accepts, in bytes."""
    exact = BODY_LIMITS.get(path)
    if exact is not None:
        return exact
    for prefix, limit in BODY_LIMIT_PREFIXES:
        if path.startswith(prefix):
            return limit
    return DEFAULT_BODY_LIMIT


def _too_large(limit: int) -> Answer:
    return 413, orjson.dumps({"detail": f"request body larger than {limit} bytes"}), [JSON]


async def _respond(send: Send, answer: Answer) -> None:
    status, payload, extra = answer
    await send({"type": "http.response.start", "status": status,
                "headers": [*extra, (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def _replaying(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the app: the body already read, then the caller's own messages (a
    disconnect) as they come."""
    sent = False

    async def replay() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class _Disconnected(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it is larger than ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
