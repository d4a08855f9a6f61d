"""HTTP routes of the scoring service."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from api.deps import Services, get_services
from api.metrics import DECISIONS, SCORE_LATENCY
from model.schemas import Label, Payment, Reason, ScoredPayment, ScoreResponse

log = logging.getLogger(__name__)
router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]


def _not_in_future(ts: float, field: str, svc: Services) -> None:
    """Windows run on event time: a timestamp from the future would poison them."""
    ahead = ts - time.time()
    if ahead > svc.settings.max_future_seconds:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[{"type": "value_error", "loc": ["body", field],
                     "msg": f"{field} is {ahead:.0f}s in the future (more than "
                            f"{svc.settings.max_future_seconds:g}s allowed for clock skew)"}],
        )


@router.post("/v1/payments/score", response_model=ScoreResponse, tags=["scoring"])
async def score_payment(payment: Payment, svc: ServicesDep) -> ScoreResponse:
    """Score one payment: approve, review or decline, with the score and its reasons.

    The scored payment (with the exact feature vector used) is then published to Kafka for
    the history; the response does not wait for Kafka.
    """
    started = time.perf_counter()
    _not_in_future(payment.ts, "timestamp", svc)
    reasons: list[dict[str, Any]] = []
    features: dict[str, float] = {}
    scorer = svc.models.scorer
    try:
        features = await svc.store.observe_and_compute(payment)
    except Exception as exc:
        log.warning("online features unavailable for %s: %s", payment.payment_id,
                    type(exc).__name__)
        reasons.append({"code": "degraded_features_unavailable",
                        "detail": "online features could not be read"})
    if features and scorer is not None:
        outcome = scorer.score(features)
        score: float | None = outcome.score
        decision = outcome.decision
        reasons.extend(outcome.reasons)
        degraded = False
    else:
        if scorer is None:
            reasons.append({"code": "degraded_no_model", "detail": "no model is loaded"})
        score, decision, degraded = None, svc.settings.degraded_decision, True

    await svc.publisher.publish_scored(
        ScoredPayment(
            payment=payment,
            features=features,
            score=score,
            decision=decision,
            model_version=scorer.version if scorer else None,
            reasons=[r["code"] for r in reasons],
            degraded=degraded,
            scored_at=datetime.now(UTC),
        )
    )
    elapsed = time.perf_counter() - started
    SCORE_LATENCY.observe(elapsed)
    DECISIONS.labels(decision, str(degraded).lower()).inc()
    return ScoreResponse(
        payment_id=payment.payment_id,
        decision=decision,
        score=score,
        reasons=[Reason(**r) for r in reasons],
        model_version=scorer.version if scorer else None,
        degraded=degraded,
        latency_ms=round(elapsed * 1000, 3),
    )


class LabelAccepted(BaseModel):
    payment_id: str
    accepted: bool = True


@router.post("/v1/labels", status_code=status.HTTP_202_ACCEPTED, response_model=LabelAccepted,
             tags=["labels"])
async def post_label(label: Label, svc: ServicesDep) -> LabelAccepted:
    """Report a fraud verdict (chargeback, analyst, customer report) on a past payment.

    Answers 202 once the label is durably in Kafka; the stream processor applies it.
    """
    _not_in_future(label.reported_at.timestamp(), "reported_at", svc)
    try:
        await svc.publisher.publish_label(label)
    except Exception as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"label not accepted, Kafka unavailable ({type(exc).__name__}); retry",
        ) from exc
    return LabelAccepted(payment_id=label.payment_id)


@router.get("/v1/model", tags=["model"])
async def current_model(svc: ServicesDep) -> dict[str, Any]:
    """The model in use: version, training window, metrics and thresholds."""
    scorer = svc.models.scorer
    if scorer is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no model is loaded")
    meta = svc.models.registry.get(scorer.version).metadata
    return {k: meta.get(k) for k in ("version", "created_at", "training", "metrics",
                                     "thresholds", "features", "sha256")}


@router.get("/healthz", tags=["operations"])
async def healthz(svc: ServicesDep) -> dict[str, Any]:
    scorer = svc.models.scorer
    return {"status": "ok", "model_version": scorer.version if scorer else None}


@router.get("/metrics", tags=["operations"])
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
