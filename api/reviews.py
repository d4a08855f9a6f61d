"""The analysts' review queue over HTTP: list, claim, decide (``stores.reviews``).

Every route needs a key with the ``review`` scope; the key's name is the analyst recorded
in the audit and in the label.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api.auth import require
from api.deps import Services, get_services
from api.metrics import REVIEW_VERDICTS
from api.publisher import Publisher
from api.routes import Responses
from model.periodic import every
from model.schemas import Identifier
from stores.reviews import Case, CaseNotFound, ReviewError, ReviewQueue

log = logging.getLogger(__name__)
AUTH: Responses = {401: {"description": "missing or wrong API key or signature"},
        403: {"description": "the key lacks the review scope"}}
router = APIRouter(prefix="/v1/reviews", tags=["reviews"],
                   dependencies=[Depends(require("review"))],
                   responses={**AUTH, 404: {"description": "no review case for this payment"},
                              409: {"description": "claimed by another analyst, or decided"}})
ServicesDep = Annotated[Services, Depends(get_services)]
PaymentId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
# A verdict not known durable after this long is sent again by the API (see resend_verdicts).
RESEND_AFTER_SECONDS = 10.0


# The store's Case, under the name the OpenAPI document has always given it.
class CaseOut(Case):
    @classmethod
    def of(cls, case: Case) -> CaseOut:
        return cls.model_validate(case, from_attributes=True)


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: Literal["fraud", "legitimate"]
    note: str = Field(default="", max_length=2000)


class VerdictOut(BaseModel):
    case: CaseOut
    label_queued: bool = Field(description=(
        "true: Kafka was unavailable; the label is on the API's disk and forwarded as soon "
        "as Kafka is back"))


def _analyst(request: Request) -> str:
    return getattr(request.state, "caller", None) or "anonymous"


def _refused(exc: ReviewError) -> HTTPException:
    return HTTPException(404 if isinstance(exc, CaseNotFound) else 409, detail=exc.detail)


@router.get("", response_model=list[CaseOut])
async def list_cases(
    svc: ServicesDep,
    response: Response,
    status_: Annotated[Literal["pending", "open", "claimed", "decided"],
                       Query(alias="status", description="pending: open and claimed")]
    = "pending",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    card_id: Identifier | None = None,
    terminal_id: Identifier | None = None,
    min_score: Annotated[float | None, Query(ge=0, le=1)] = None,
    analyst: Annotated[str | None, Query(max_length=64,
                                         description="claimed or decided by")] = None,
    cursor: Annotated[str | None, Query(
        max_length=200, description="the previous page's X-Next-Cursor")] = None,
) -> list[CaseOut]:
    """Review cases, oldest payment first (decided ones: oldest verdict first). One call
    looks at a bounded number of cases: when more may follow, the answer's `X-Next-Cursor`
    header is the `cursor` of the next call (a filtered page may be short, even empty)."""
    try:
        page = await svc.reviews.list(status_, limit, card_id, terminal_id, min_score,
                                      analyst, cursor=cursor)
    except ValueError as exc:
        raise HTTPException(422, detail=str(exc)) from exc
    if page.cursor is not None:
        response.headers["X-Next-Cursor"] = page.cursor
    return [CaseOut.of(c) for c in page.cases]


@router.get("/audit")
async def audit(svc: ServicesDep,
                count: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    """Who claimed and decided what, newest first."""
    return await svc.reviews.audit(count)


@router.get("/{payment_id}", response_model=CaseOut)
async def get_case(payment_id: PaymentId, svc: ServicesDep) -> CaseOut:
    case = await svc.reviews.get(payment_id)
    if case is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"no review case for payment {payment_id!r}")
    return CaseOut.of(case)


@router.post("/{payment_id}/claim", response_model=CaseOut)
async def claim(payment_id: PaymentId, request: Request, svc: ServicesDep) -> CaseOut:
    """Take the case: nobody else may decide it while the claim holds
    (`FRAUDSTREAM_REVIEW_CLAIM_SECONDS`). Claiming it again extends the claim."""
    try:
        return CaseOut.of(await svc.reviews.claim(payment_id, _analyst(request)))
    except ReviewError as exc:
        raise _refused(exc) from exc


@router.post("/{payment_id}/verdict", response_model=VerdictOut)
async def verdict(payment_id: PaymentId, body: VerdictIn, request: Request,
                  svc: ServicesDep) -> VerdictOut:
    """Decide the case, fraud or legitimate. The verdict becomes a label (source
    `analyst`) on the chargebacks' path, exactly once: sending the same verdict again
    returns the first one and sends the same label; a different verdict is refused (409).
    A case claimed by another analyst is refused too."""
    try:
        case = await svc.reviews.decide(payment_id, _analyst(request), body.verdict,
                                        body.note)
    except ReviewError as exc:
        raise _refused(exc) from exc
    try:
        in_kafka = await svc.publisher.publish_label(case.label())
    except OSError as exc:
        # The verdict stands (a retry sends its label); the API also resends it by itself.
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            detail="verdict recorded but its label is not durable yet "
                                   f"({type(exc).__name__}); retry") from exc
    await svc.reviews.label_sent(payment_id)
    REVIEW_VERDICTS.labels(case.verdict or "").inc()
    return VerdictOut(case=CaseOut.of(case), label_queued=not in_kafka)


async def resend_verdicts(reviews: ReviewQueue, publisher: Publisher,
                          period: float = 5.0) -> None:
    """A verdict fixed in Redis whose label never became durable (the API died between
    the two): send it again. It is the same label, recorded once."""

    async def resend() -> None:
        for case in await reviews.unsent(RESEND_AFTER_SECONDS):
            await publisher.publish_label(case.label())
            await reviews.label_sent(case.payment_id)
            log.info("verdict on %s sent again", case.payment_id)

    # Redis or the disk away: the next round tries again.
    await every(period, resend, failed="verdicts not resent", log=log, level=logging.DEBUG)
