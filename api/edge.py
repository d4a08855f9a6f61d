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

from api.auth import check_key, check_signature
from api.deps import Services
from api.scoring import score_answer
from model.schemas import Payment

log = logging.getLogger(__name__)

SCORE_PATH = "/v1/payments/score"
MAX_BODY = 64 * 1024  # a payment is well under 1 KiB
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


async def score_request(svc: Services, header: Header, body: bytes) -> Answer:
    """Authenticate, validate, score. Every failure is a 4xx naming what is wrong."""
    try:
        key = check_key(svc, "score", header("x-api-key"))
        if key is not None and key.signing_secret is not None:
            check_signature(key, header("x-signature"), body,
                            svc.settings.signature_tolerance_seconds)
        try:
            payment = Payment.model_validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc
        deadline_ms = _deadline(header("x-deadline-ms"))
        _, body = await score_answer(payment, svc, deadline_ms)
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
    """ASGI app: ``POST /v1/payments/score`` answered here, the rest by ``app``."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    @property
    def state(self) -> Any:
        """The FastAPI app's state (its services), as on a Starlette app."""
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == SCORE_PATH \
                and scope["method"] == "POST":
            await self._score(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _score(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: Mapping[bytes, bytes] = dict(scope["headers"])
        try:
            body = await _read_body(receive)
        except _Disconnected:
            return  # the caller hung up before sending the whole body: nothing to score
        if body is None:
            answer: Answer = (413, orjson.dumps(
                {"detail": f"request body larger than {MAX_BODY} bytes"}), [JSON])
        else:
            def header(name: str) -> str | None:
                value = headers.get(name.encode())
                return None if value is None else value.decode("latin-1")
            try:
                answer = await score_request(self.app.state.services, header, body)
            except Exception:
                log.exception("scoring failed")
                answer = 500, b'{"detail":"internal error"}', [JSON]
        status, payload, extra = answer
        await send({"type": "http.response.start", "status": status,
                    "headers": [*extra, (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


class _Disconnected(Exception):
    pass


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, or None if it is larger than MAX_BODY."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
