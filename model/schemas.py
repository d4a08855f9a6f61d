"""Event schemas: what crosses an edge (HTTP, Kafka, the history store)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Decision = Literal["approve", "review", "decline"]
LabelSource = Literal["chargeback", "analyst", "customer_report", "import"]
Channel = Literal["pos", "ecom", "moto", "atm"]
ThreeDS = Literal["none", "attempted", "authenticated", "failed"]
EntryMode = Literal["chip", "contactless", "magstripe", "keyed", "ecommerce", "card_on_file"]

Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]

_DIGITS = re.compile(r"^\d{12,19}$")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def looks_like_pan(value: str) -> bool:
    """A 12-19 digit string passing the Luhn check is treated as a raw card number."""
    compact = value.replace(" ", "").replace("-", "")
    return bool(_DIGITS.match(compact)) and luhn_valid(compact)


def as_utc(value: datetime) -> datetime:
    # Event time drives every window; a naive timestamp would silently shift them by the
    # server's offset, so naive input is read as UTC and everything is kept in UTC.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class Payment(BaseModel):
    """A payment as the gateway sends it to the scoring hook."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "payment_id": "pay_000123",
                    "timestamp": "2026-11-22T10:15:00Z",
                    "card_id": "card_8f2a",
                    "terminal_id": "term_0042",
                    "amount": 42.5,
                    "currency": "EUR",
                    "country": "FR",
                    "channel": "pos",
                    "merchant_category": "5411",
                }
            ]
        },
    )

    payment_id: Identifier
    timestamp: datetime
    card_id: Identifier = Field(description="The card's token. A raw card number is refused.")
    terminal_id: Identifier = Field(description="Terminal or merchant id.")
    amount: float = Field(ge=0, le=1_000_000)
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. EUR")
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    channel: Channel | None = None
    merchant_category: str | None = Field(default=None, pattern=r"^\d{4}$")
    # What a card-not-present gateway also knows; every one optional (a POS payment has no
    # IP or e-mail). A missing field is a missing value in the features.
    customer_id: Identifier | None = Field(default=None, description="the shopper's account")
    device_id: Identifier | None = Field(default=None, description="device fingerprint")
    ip: str | None = Field(default=None, max_length=64,
                           description="the shopper's IP address; pseudonymised on arrival")
    email: str | None = Field(default=None, max_length=254,
                              description="the shopper's e-mail; pseudonymised on arrival")
    card_bin: str | None = Field(default=None, pattern=r"^[0-9]{6,8}$",
                                 description="the card's first 6-8 digits (issuer BIN)")
    billing_country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    shipping_country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    merchant_id: Identifier | None = Field(default=None,
                                           description="the merchant behind the terminal")
    three_ds: ThreeDS | None = Field(default=None, description="3-D Secure result")
    entry_mode: EntryMode | None = None

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return as_utc(v)

    @field_validator("card_id")
    @classmethod
    def _no_pan(cls, v: str) -> str:
        if looks_like_pan(v):
            raise ValueError("card_id looks like a raw card number (PAN); send the card token")
        return v

    @property
    def ts(self) -> float:
        return self.timestamp.timestamp()


class Reason(BaseModel):
    code: str
    feature: str | None = None
    value: float | None = None
    contribution: float | None = None  # log-odds this feature added to this payment's score
    detail: str


class Freshness(BaseModel):
    """How fresh the inputs of an answer were."""

    stream_lag_s: float | None = Field(
        default=None, description="how far the stream worker, which keeps the features, "
                                  "is behind the payments this API has scored (seconds)")
    label_lag_s: float | None = Field(
        default=None, description="the newest payment the stream has seen minus the newest "
                                  "label the features have applied (event time, seconds)")
    stale: bool = False


class ScoreResponse(BaseModel):
    payment_id: str
    decision: Decision
    score: float | None
    reasons: list[Reason]
    model_version: str | None
    rules_version: int = 0
    degraded: bool = False
    replay: bool = False  # true: this payment_id was scored before; this is that answer
    freshness: Freshness | None = None
    latency_ms: float


class ScoredPayment(BaseModel):
    """What the API publishes for every payment it scored: the exact inputs and outcome."""

    payment: Payment
    features: dict[str, float]
    score: float | None
    decision: Decision
    model_version: str | None
    reasons: list[str] = []
    degraded: bool = False
    scored_at: datetime


class Label(BaseModel):
    """A fraud verdict on a past payment; arrives days after the payment."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "payment_id": "pay_000123",
                    "is_fraud": True,
                    "source": "chargeback",
                    "reported_at": "2026-12-02T09:00:00Z",
                }
            ]
        },
    )

    payment_id: Identifier
    is_fraud: bool
    source: LabelSource
    reported_at: datetime
    # Who decided, for an analyst's verdict: the audit trail kept in the history.
    analyst: str | None = Field(default=None, max_length=64)
    note: str | None = Field(default=None, max_length=2000)

    @field_validator("reported_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return as_utc(v)
