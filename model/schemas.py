"""Event schemas: what crosses an edge (HTTP, Kafka, the history store)."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from model.pseudonym import EMAIL_TOKEN, IP_TOKEN

Decision = Literal["approve", "review", "decline"]
LabelSource = Literal["chargeback", "analyst", "customer_report", "import"]
Channel = Literal["pos", "ecom", "moto", "atm"]
ThreeDS = Literal["none", "attempted", "authenticated", "failed"]
EntryMode = Literal["chip", "contactless", "magstripe", "keyed", "ecommerce", "card_on_file"]

Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]

_DIGITS = re.compile(r"^[0-9]{12,19}$")
# What may separate a card number's digit groups: ``4111 1111-1111.1111`` is still one.
PAN_SEPARATORS = " -._/:"
_NO_SEPARATORS = str.maketrans("", "", PAN_SEPARATORS)
# Inside a longer value, a card number is digit groups joined by anything but letters and
# digits (``card_4111-1111-1111-1111``, ``note: 4111 1111 1111 1111 exp 12/26``).
_DIGIT_GROUPS = re.compile(r"[0-9]+(?:[^A-Za-z0-9]{1,3}[0-9]+)*")
_GROUP = re.compile(r"[0-9]+")
_NO_DIGITS = str.maketrans("", "", "0123456789")
# The free-text fields of a payment, each refused when it holds a raw card number.
PAN_CHECKED = ("payment_id", "card_id", "terminal_id", "customer_id", "device_id",
               "merchant_id")
_WHITESPACE = re.compile(r"\s")
# The payment's optional details from a card-not-present gateway, each a column of the
# history and of an import file under the same name.
PAYMENT_DETAILS = ("customer_id", "device_id", "ip", "email", "card_bin", "billing_country",
                   "shipping_country", "merchant_id", "three_ds", "entry_mode")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _issued_prefix(digits: str) -> bool:
    # The schemes' issuer ranges (Visa 4, Mastercard 51-55 and 2221-2720, Amex, Diners and
    # JCB 3, Discover, Maestro and UnionPay 5-6). Dates and order numbers inside an id
    # ("pay_2026-12-02_000123") start elsewhere: without this, one in ten of them would pass
    # Luhn by chance and a genuine payment would be refused.
    return digits[0] in "3456" or 2221 <= int(digits[:4]) <= 2720


def _ascii_digits(value: str) -> str:
    # A card number in another script's digits (Arabic-Indic, full-width) is still one.
    if value.isascii():
        return value
    return "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in value)


def looks_like_pan(value: str) -> bool:
    """Whether ``value`` holds a raw card number, in either form:

    - the whole value is 12-19 digits passing the Luhn check, its groups separated or not
      by spaces, dashes, dots, slashes, underscores or colons;
    - inside it, whole digit groups joined by up to three characters that are neither
      letters nor digits (``card_4111-1111-1111-1111``, ``4111 1111 1111 1111 exp 12/26``)
      make 13-19 digits in a card scheme's issuer range passing the Luhn check. A group
      glued to a letter (``...-0a1b``, as in a UUID) is not whole, so random ids pass.

    Digits of any script count."""
    text = _ascii_digits(value)
    if len(text) - len(text.translate(_NO_DIGITS)) < 12:  # most values: no scan at all
        return False
    compact = text.translate(_NO_SEPARATORS)
    if _DIGITS.match(compact) and luhn_valid(compact):
        return True
    for run in _DIGIT_GROUPS.finditer(text):
        groups = _GROUP.findall(run.group())
        whole_first = run.start() == 0 or not text[run.start() - 1].isalnum()
        whole_last = run.end() == len(text) or not text[run.end()].isalnum()
        for i in range(0 if whole_first else 1, len(groups)):
            digits = ""
            for j in range(i, len(groups)):
                digits += groups[j]
                if len(digits) > 19 or (j == len(groups) - 1 and not whole_last):
                    break
                if len(digits) >= 13 and _issued_prefix(digits) and luhn_valid(digits):
                    return True
    return False


def refuse_pan(value: str | None, field: str, hint: str = "") -> str | None:
    """``value`` as it is, or a ValueError naming ``field`` when it holds a raw card number
    (the value itself never in the message)."""
    if value is not None and looks_like_pan(value):
        raise ValueError(f"{field} looks like a raw card number (PAN){hint}")
    return value


def ip_problem(value: str) -> str | None:
    """Why ``value`` is no IP address (IPv4, IPv6) nor an IP pseudonym; None if it is one.
    The message never repeats the value."""
    if IP_TOKEN.match(value):
        return None
    text = value.strip()
    if "%" in text:
        return "ip must be an IP address without a zone (scope) id"
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return "ip must be an IPv4 or IPv6 address"
    return None


def email_problem(value: str) -> str | None:
    """Why ``value`` is no plausible e-mail address nor an e-mail pseudonym; None if it is
    one. Surrounding whitespace is allowed (the pseudonym ignores it, and case). The
    message never repeats the value."""
    if EMAIL_TOKEN.match(value):
        return None
    text = value.strip()
    if len(text) > 254 or _WHITESPACE.search(text) or text.count("@") != 1:
        return "email must be one address: local@domain, no whitespace, at most 254 characters"
    local, domain = text.split("@")
    labels = domain.split(".")
    if not local or len(labels) < 2 or not all(labels):
        return "email must be one address: local@domain, the domain with a dot"
    if looks_like_pan(local):
        return "email looks like a raw card number (PAN) before its @"
    return None


# The personal-data fields, each with the check the API and the importer share.
_PERSONAL_CHECKS = {"ip": ip_problem, "email": email_problem}


# Event times outside these years are a client's bug or an attack, never a payment: a
# back-dated one would dodge every velocity window and scatter the history's day
# partitions, and year 1 with a positive offset cannot even be converted to UTC.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC, a naive one read as UTC (a naive timestamp would otherwise shift
    every window by the server's offset); ValueError outside [EARLIEST, LATEST)."""
    try:
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        utc = EARLIEST - (LATEST - EARLIEST)  # refused below, whichever end it fell off
    if not EARLIEST <= utc < LATEST:
        raise ValueError(f"must lie from {EARLIEST:%Y-%m-%d} up to {LATEST:%Y-%m-%d} (UTC)")
    return utc


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
                },
                {
                    "payment_id": "pay_000124",
                    "timestamp": "2026-11-22T10:16:30Z",
                    "card_id": "card_8f2a",
                    "terminal_id": "web_0007",
                    "amount": 129.9,
                    "currency": "EUR",
                    "country": "FR",
                    "channel": "ecom",
                    "merchant_category": "5732",
                    "customer_id": "cust_51c9",
                    "device_id": "dev_a41f0c",
                    "ip": "203.0.113.42",
                    "email": "jane.doe@example.com",
                    "card_bin": "411111",
                    "billing_country": "FR",
                    "shipping_country": "BE",
                    "merchant_id": "merch_0311",
                    "three_ds": "authenticated",
                    "entry_mode": "ecommerce",
                },
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
    merchant_category: str | None = Field(default=None, pattern=r"^[0-9]{4}$")
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

    @field_validator(*PAN_CHECKED)
    @classmethod
    def _no_pan(cls, v: str | None, info: ValidationInfo) -> str | None:
        hint = "; send the card token" if info.field_name == "card_id" else ""
        return refuse_pan(v, str(info.field_name), hint)

    @field_validator("ip", "email")
    @classmethod
    def _personal(cls, v: str | None, info: ValidationInfo) -> str | None:
        problem = None if v is None else _PERSONAL_CHECKS[str(info.field_name)](v)
        if problem:
            raise ValueError(problem)
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
    score: float | None = Field(description=(
        "the fraud probability, calibrated on matured labels when the model was trained; "
        "null in a degraded answer"))
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
    # A missing value (a catalogue feature of an entity the payment lacks) is NaN here and
    # null on the wire: JSON has no NaN.
    features: dict[str, float]
    score: float | None
    decision: Decision
    model_version: str | None
    reasons: list[str] = []
    degraded: bool = False
    scored_at: datetime

    @field_validator("features", mode="before")
    @classmethod
    def _missing_is_nan(cls, v: object) -> object:
        if isinstance(v, dict) and None in v.values():
            return {k: float("nan") if x is None else x for k, x in v.items()}
        return v


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

    @field_validator("payment_id", "analyst", "note")
    @classmethod
    def _no_pan(cls, v: str | None, info: ValidationInfo) -> str | None:
        return refuse_pan(v, str(info.field_name))
