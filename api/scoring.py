"""Scoring one payment: idempotency, features, model, rules, degradation, publishing."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException, status

from api.deps import Services
from api.metrics import OVERLOAD_SHED, QUEUE_DELAY, REPLAYS, SCORE_LATENCY, STALE_ANSWERS, decided
from api.publisher import ENQUEUE_TIMEOUT, NotRecorded
from model.pseudonym import pseudonymise
from model.schemas import Payment, Reason, ScoredPayment, ScoreResponse
from stores.idempotency import PENDING_MARGIN_MS
from stores.online_features import Observation

log = logging.getLogger(__name__)
# Share of the deadline the Redis round trip may use; the rest covers scoring and answering.
FEATURE_BUDGET = 0.6


def payload_hash(payment: Payment) -> str:
    # The validated model's JSON, fields in declared order: the same payment hashes the
    # same whatever the key order or spacing of the request that carried it.
    return hashlib.sha256(payment.model_dump_json().encode()).hexdigest()[:32]


def within_event_time(ts: float, field: str, svc: Services) -> None:
    """Windows run on event time: a timestamp from the future would poison them, and one
    far back would slip past every velocity window and open a history partition of its
    own. 422 outside (now - FRAUDSTREAM_MAX_PAST_DAYS, now + FRAUDSTREAM_MAX_FUTURE_SECONDS)."""
    now = time.time()
    ahead = ts - now
    if ahead > svc.settings.max_future_seconds:
        raise _event_time_error(field, f"{field} is {ahead:.0f}s in the future (more than "
                                       f"{svc.settings.max_future_seconds:g}s allowed for "
                                       "clock skew)")
    behind_days = -ahead / 86_400
    if behind_days > svc.settings.max_past_days:
        raise _event_time_error(field, f"{field} is {behind_days:.0f} days in the past (more "
                                       f"than {svc.settings.max_past_days:g} allowed, "
                                       "FRAUDSTREAM_MAX_PAST_DAYS)")


def _event_time_error(field: str, msg: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=[
        {"type": "value_error", "loc": ["body", field], "msg": msg}])


def conflict(payment_id: str, why: str) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail=f"payment_id {payment_id!r}: {why}")


async def score_one(payment: Payment, svc: Services, deadline_ms: int | None) -> ScoreResponse:
    return (await score_answer(payment, svc, deadline_ms))[0]


async def score_answer(payment: Payment, svc: Services, deadline_ms: int | None,
                       arrived: float | None = None) -> tuple[ScoreResponse, bytes]:
    """The answer, and its JSON: serialised once, for the caller and for replays.

    The deadline counts from ``arrived`` (``time.perf_counter()`` at the request's first
    byte, ``api.arrival``), else from now. A request that waited past the features' share
    of its deadline, or shed by admission control while a queue stands in this process
    (``api.admission``), is answered degraded at once, without the Redis round trip.

    The e-mail and IP become their tokens first: Redis, the answers kept for replays, the
    spool, Kafka and the history see only those (a retry with the same e-mail in another
    case hashes alike)."""
    # The wait before the first byte was read counts: the loop's lag (``api.admission``).
    started = (time.perf_counter() if arrived is None else arrived) - svc.admission.loop.lag
    payment = pseudonymise(payment, svc.pii_key)
    budget = (deadline_ms or svc.settings.default_deadline_ms) / 1000
    within_event_time(payment.ts, "timestamp", svc)
    phash = payload_hash(payment)
    reasons: list[dict[str, Any]] = []
    obs = Observation()
    now = time.perf_counter()
    waited = now - started
    QUEUE_DELAY.observe(waited)
    left = budget * FEATURE_BUDGET - waited
    try:
        if left <= 0 or not svc.admission.admit(waited, budget, now):
            OVERLOAD_SHED.inc()
            reasons.append({"code": "degraded_overload", "detail": (
                f"waited {waited * 1000:.0f} ms in a busy API process before scoring: "
                "answered at once without the features, inside the deadline")})
        else:
            async with asyncio.timeout(left):
                obs = await svc.store.observe(
                    payment, phash, check_lists=True,
                    pending_ms=int(budget * 1000) + PENDING_MARGIN_MS)
    except TimeoutError:
        reasons.append({"code": "degraded_features_timeout",
                        "detail": "online features not read within the deadline"})
    except Exception as exc:
        log.warning("online features unavailable for %s: %s", payment.payment_id,
                    type(exc).__name__)
        reasons.append({"code": "degraded_features_unavailable",
                        "detail": "online features could not be read"})

    if obs.conflict:
        raise conflict(payment.payment_id, "already scored with another card")
    if obs.previous is not None:
        first = await replay(payment, phash, obs.previous, svc,
                             started + budget * FEATURE_BUDGET)
        return first, first.model_dump_json().encode()

    scorer = svc.models.scorer
    features = obs.features or {}
    if features and scorer is not None:
        outcome = scorer.score(features)
        score: float | None = outcome.score
        decision = outcome.decision
        reasons.extend(outcome.reasons)
        degraded = False
        if outcome.vector is not None:
            svc.monitor.observe(scorer, outcome.vector, outcome.score)
    else:
        if scorer is None:
            reasons.append({"code": "degraded_no_model", "detail": "no model is loaded"})
        score, decision, degraded = None, svc.settings.degraded_decision, True
    policy = svc.policy.policy
    decision, policy_reasons = policy.apply(decision, features, obs.list_hits,
                                            svc.settings.known_fraud_card_action, payment,
                                            score)
    reasons = policy_reasons + reasons
    freshness = svc.monitor.freshness
    if freshness.stale:
        STALE_ANSWERS.inc()
        if svc.settings.stale_action == "review" and decision == "approve":
            decision = "review"
            reasons.insert(0, {"code": "stale_inputs", "detail": (
                f"inputs stale (stream lag {freshness.stream_lag_s}s, label lag "
                f"{freshness.label_lag_s}s): approve held for review")})

    elapsed = time.perf_counter() - started
    response = ScoreResponse(
        payment_id=payment.payment_id, decision=decision, score=score,
        # pydantic makes the dicts Reasons (the model, policy and freshness give dicts)
        reasons=reasons,  # type: ignore[arg-type]
        model_version=scorer.version if scorer else None, rules_version=policy.version,
        degraded=degraded, freshness=freshness, latency_ms=round(elapsed * 1000, 3),
    )
    remaining = budget - (time.perf_counter() - started)
    try:
        spooled = await svc.publisher.publish_scored(ScoredPayment(
            payment=payment, features=features, score=score, decision=decision,
            model_version=response.model_version, reasons=[r["code"] for r in reasons],
            degraded=degraded,
            scored_at=datetime.fromtimestamp(obs.recorded_at, UTC)
            if obs.recorded_at is not None else datetime.now(UTC),
        ), enqueue_timeout=max(min(ENQUEUE_TIMEOUT, remaining), 0.001))
    except NotRecorded as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=(
            f"payment not scored: it could not be recorded ({exc}); apply your fallback"),
            headers={"Retry-After": "5"}) from exc
    if not spooled:
        response = response.model_copy(update={"reasons": [*response.reasons, Reason(
            code="not_spooled", detail="the API's spool refused the write (full); the "
                                       "payment went on without its copy on disk")]})
    # Kept even when degraded, so that a retry gets this same answer. Off the response's
    # path: a retry racing it waits for it (see ``replay``).
    body = response.model_dump_json().encode()
    svc.decisions.add(payment.card_id, payment.payment_id, phash, body)
    SCORE_LATENCY.observe(time.perf_counter() - started)
    decided(decision, degraded).inc()
    return response, body


async def replay(payment: Payment, phash: str, previous: bytes, svc: Services,
                 wait_until: float) -> ScoreResponse:
    """A payment_id seen before: the first answer again, or 409 if the payload differs."""
    payment_id = payment.payment_id
    while True:
        state, _, rest = previous.partition(b"|")
        first_hash, _, body = rest.partition(b"|")
        if first_hash.decode() != phash:
            raise conflict(payment_id, "already scored with a different payload")
        if state == b"done":
            REPLAYS.inc()
            return ScoreResponse.model_validate_json(body).model_copy(update={"replay": True})
        # The first call is still being scored (a retry raced it): wait for its answer.
        if time.perf_counter() >= wait_until:
            raise conflict(payment_id, "is being scored by an earlier request; retry")
        await asyncio.sleep(0.005)
        async with asyncio.timeout(max(wait_until - time.perf_counter(), 0.001)):
            latest = await svc.decisions.store.previous_decision(payment.card_id, payment_id)
        if latest is None:
            raise conflict(payment_id, "earlier request did not finish; retry")
        previous = latest
