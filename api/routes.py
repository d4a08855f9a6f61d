"""HTTP routes of the scoring service."""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from pydantic import BaseModel, ConfigDict, Field

from api.auth import authenticate, require
from api.deps import Services, get_services
from api.edge import score_request
from api.scoring import score_one, within_event_time
from model.api_keys import ApiKey
from model.policy import LIST_ENTITIES, ListKind, RuleSet
from model.schemas import Label, Payment, ScoreResponse

router = APIRouter()
log = logging.getLogger(__name__)
ServicesDep = Annotated[Services, Depends(get_services)]
Deadline = Annotated[int | None, Header(
    alias="X-Deadline-Ms", gt=0, le=60_000,
    description="Answer within this many milliseconds, degraded if need be.")]

# Typed as FastAPI's ``responses`` parameter, which reads the keys as status codes.
Responses = dict[int | str, dict[str, Any]]
CONFLICT: Responses = {409: {"description": "payment_id already scored with a different payload"}}
AUTH: Responses = {401: {"description": "missing or wrong API key or signature"},
        403: {"description": "the key lacks the scope"}}


# Served by ``api.edge.ScoringEdge`` in the running service; this route documents it in
# OpenAPI (declared by hand: the body is not parsed by FastAPI) and serves in-process use.
@router.post(
    "/v1/payments/score", response_model=ScoreResponse, tags=["scoring"],
    responses={**AUTH, **CONFLICT, 413: {"description": "body larger than 64 KiB"},
               422: {"description": "an invalid field, named in `loc`"}},
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Payment"}}}},
        "parameters": [{"name": "X-Deadline-Ms", "in": "header", "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 60000},
                        "description": "answer within this many ms, degraded if need be"}],
    },
)
async def score_payment(request: Request) -> Response:
    """Score one payment: approve, review or decline, with the score and its reasons.

    - **Idempotent**: a retried payment_id gets the first answer again, with
      `"replay": true`, and counts once in every feature; a different payload under a
      known payment_id gets 409.
    - **Deadline**: the answer comes within `X-Deadline-Ms` (default 250 ms). If Redis or
      the model cannot serve in time, the answer is the configured degraded decision
      with `"degraded": true`, never a 5xx.
    - **Reasons**: allow/block list hits, rules that fired, the score threshold crossed,
      and the features that raised this payment's score most, with their values.

    The scored payment (with the exact feature vector used) then goes to Kafka for the
    history; the response does not wait for Kafka, and a Kafka outage loses nothing.
    """
    status_code, payload, headers = await score_request(
        request.app.state.services, request.headers.get, await request.body(),
        request.url.query)
    return Response(payload, status_code,
                    headers={k.decode(): v.decode() for k, v in headers})


class PaymentBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payments: list[Payment] = Field(min_length=1, max_length=500)


class BatchItem(BaseModel):
    payment_id: str
    result: ScoreResponse | None = None
    error: dict[str, Any] | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem]


@router.post("/v1/payments/score/batch", response_model=BatchResponse, tags=["scoring"],
             dependencies=[Depends(require("score"))], responses=AUTH)
async def score_batch(batch: PaymentBatch, svc: ServicesDep,
                      deadline_ms: Deadline = None) -> BatchResponse:
    """Score up to 500 payments in one call (back office), in the order given, so that
    payments of one card see the ones before them. An item that cannot be scored (a
    conflicting payment_id, a timestamp in the future) gets an error; the others go on."""
    items = []
    for payment in batch.payments:
        try:
            items.append(BatchItem(payment_id=payment.payment_id,
                                   result=await score_one(payment, svc, deadline_ms)))
        except HTTPException as exc:
            items.append(BatchItem(payment_id=payment.payment_id,
                                   error={"status": exc.status_code, "detail": exc.detail}))
    return BatchResponse(results=items)


class LabelAccepted(BaseModel):
    payment_id: str
    accepted: bool = True
    queued: bool = Field(default=False, description=(
        "true: Kafka was unavailable; the label is kept on the API's disk and forwarded "
        "as soon as Kafka is back"))


@router.post("/v1/labels", status_code=status.HTTP_202_ACCEPTED, response_model=LabelAccepted,
             tags=["labels"], responses={**AUTH, 409: {
                 "description": "the payment has the most labels a payment may get"}})
async def post_label(label: Label, svc: ServicesDep,
                     key: ApiKey | None = Depends(require("labels"))) -> LabelAccepted:
    """Report a fraud verdict (chargeback, customer report) on a past payment.

    A key reports the sources it was given (by default `chargeback` and
    `customer_report`): analyst verdicts come through the review queue, where the
    analyst is the key. A key given `analyst` reports verdicts in its own name.

    Answers 202 once the label is durable: in Kafka, or, while Kafka is unavailable, on
    the API's disk (`queued: true`), forwarded as soon as Kafka is back. The stream
    processor applies it; sending the same label again changes nothing.
    """
    within_event_time(label.reported_at.timestamp(), "reported_at", svc)
    if key is not None:
        if label.source not in key.label_sources:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=(
                f"key {key.name!r} may not report {label.source!r} labels (its sources: "
                f"{', '.join(sorted(key.label_sources))}); analyst verdicts go through "
                "the review queue"))
        if label.analyst not in (None, key.name):
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=(
                f"key {key.name!r} reports labels in its own name, not {label.analyst!r}"))
        if label.source == "analyst":
            label = label.model_copy(update={"analyst": key.name})
    await _within_label_cap(svc, label)
    try:
        in_kafka = await svc.publisher.publish_label(label)
    except OSError as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"label not accepted: Kafka unavailable and the spool failed "
                   f"({type(exc).__name__}); retry",
        ) from exc
    return LabelAccepted(payment_id=label.payment_id, queued=not in_kafka)


async def _within_label_cap(svc: Services, label: Label) -> None:
    """409 if the payment has the most labels a payment may get (``stores.label_intake``).
    Redis away: admitted, since the label's way to the stream does not need Redis."""
    try:
        admitted = await svc.label_intake.admit(label)
    except Exception as exc:
        log.warning("label cap not checked (%s); label admitted", type(exc).__name__)
        return
    if not admitted:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=(
            f"payment {label.payment_id!r} has {svc.label_intake.cap} labels already; "
            "a label sent before may be sent again, a new one is refused"))


# ---- administration ------------------------------------------------------------------
admin = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require("admin"))],
                  responses=AUTH)


def _caller(request: Request) -> str:
    return getattr(request.state, "caller", "anonymous")


@admin.get("/rules")
async def get_rules(svc: ServicesDep) -> dict[str, Any]:
    """The rule set in force and its version."""
    policy = await svc.policy.store.load()
    return {"version": policy.version, **policy.rules.document()}


@admin.put("/rules")
async def put_rules(rules: RuleSet, request: Request, svc: ServicesDep) -> dict[str, Any]:
    """Replace the rule set. Every API worker applies it within
    `FRAUDSTREAM_RULES_POLL_SECONDS`, without a restart."""
    try:
        version = await svc.policy.store.save(rules, _caller(request))
    except ValueError as exc:  # it would not load in the API processes: nothing saved
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    await svc.policy.refresh()
    return {"version": version, "rules": len(rules.rules)}


class ListChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=500)


def _entity(entity: str) -> str:
    if entity not in LIST_ENTITIES:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            detail=[{"loc": ["path", "entity"], "type": "value_error",
                                     "msg": f"entity must be one of {list(LIST_ENTITIES)}"}])
    return entity


@admin.put("/lists/{kind}/{entity}/{value}")
async def add_to_list(kind: ListKind, entity: str, value: str, request: Request,
                      svc: ServicesDep, change: ListChange | None = None) -> dict[str, Any]:
    """Put a value of an entity (card_id, terminal_id, country, merchant_category, currency,
    channel) on the allow or block list; applies to the next payment on every worker."""
    changed = await svc.policy.store.set_listed(kind, _entity(entity), value, True,
                                                _caller(request), change.reason if change else "")
    return {"kind": kind, "entity": entity, "listed": True, "changed": changed}


@admin.delete("/lists/{kind}/{entity}/{value}")
async def remove_from_list(kind: ListKind, entity: str, value: str, request: Request,
                           svc: ServicesDep) -> dict[str, Any]:
    changed = await svc.policy.store.set_listed(kind, _entity(entity), value, False,
                                                _caller(request))
    return {"kind": kind, "entity": entity, "listed": False, "changed": changed}


@admin.get("/lists/{kind}/{entity}")
async def get_list(kind: ListKind, entity: str, svc: ServicesDep) -> dict[str, Any]:
    return {"kind": kind, "entity": entity,
            "values": await svc.policy.store.members(kind, _entity(entity))}


@admin.get("/audit")
async def get_audit(svc: ServicesDep,
                    count: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    """Who changed which rules and lists, newest first."""
    return await svc.policy.store.audit(count)


# A retraining run as /v1/model shows it: what triggered it, the window it trained and
# tested on, the candidate's metrics, the decision, how long it took.
RUN_FIELDS = ("run", "kind", "trigger", "status", "clock_iso", "started_at", "version",
              "window", "metrics", "decision", "duration_s", "error")


@router.get("/v1/model", tags=["model"], responses=AUTH)
async def current_model(svc: ServicesDep,
                        key: ApiKey | None = Depends(require("score"))) -> dict[str, Any]:
    """The champion in use (version, training window, metrics), the challenger in shadow if
    any, the last retraining runs and the last champion changes. The decision thresholds
    only for a key with the `admin` scope: they tell a fraudster how far to go."""
    scorer = svc.models.scorer
    if scorer is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no model is loaded")
    registry = svc.models.registry
    meta = registry.get(scorer.version).metadata
    shown = ("version", "created_at", "training", "metrics", "thresholds", "features",
             "sha256")
    out = {k: meta.get(k) for k in shown
           if k != "thresholds" or key is None or "admin" in key.scopes}
    challenger = registry.challenger_version()
    out["challenger"] = None if challenger is None else {
        "version": challenger, "in_shadow_since": registry.challenger_since(),
        "metrics": registry.get(challenger).metadata.get("metrics")}
    out["runs"] = [{k: r.get(k) for k in RUN_FIELDS} for r in registry.runs(last=10)]
    out["promotions"] = registry.promotions()[-10:]
    out["drift_psi"] = svc.monitor.psi
    return out


@router.get("/healthz", tags=["operations"])
async def healthz(svc: ServicesDep) -> dict[str, Any]:
    """`ok`, or `amber` with the reasons: stale inputs, drift, an old review queue, Kafka
    unavailable (payments spooled), the spool refusing writes (full disk or cap). Amber
    still serves."""
    scorer = svc.models.scorer
    kafka_ok = svc.publisher.kafka_ok and svc.publisher.labels_ok
    warnings = svc.monitor.warnings()
    if not kafka_ok:
        warnings.append("Kafka unavailable: payments and labels spooled on disk")
    if scorer is None:
        warnings.append("no model loaded: answers are degraded")
    publisher = svc.publisher
    refusing = publisher.spool.refusing or publisher.label_spool.refusing
    if refusing:
        warnings.append(f"spool refusing writes ({refusing}): payments go on without a copy "
                        "on disk" + (f"; {len(publisher.held)} held in memory until Kafka is "
                                     "back" if publisher.held else ""))
    return {"status": "amber" if warnings else "ok", "warnings": warnings,
            "model_version": scorer.version if scorer else None,
            "rules_version": svc.policy.policy.version,
            "kafka": "ok" if kafka_ok else "spooling",
            "spool": "refusing" if refusing else "ok",
            "freshness": svc.monitor.freshness.model_dump()}


@router.get("/metrics", tags=["operations"], responses=AUTH)
async def metrics(request: Request, svc: ServicesDep) -> Response:
    """Prometheus metrics; with several API processes, added up over all of them. Needs a
    key with the `metrics` scope unless `FRAUDSTREAM_METRICS_PUBLIC` is set."""
    if not svc.settings.metrics_public:
        await authenticate(request, svc, "metrics")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
