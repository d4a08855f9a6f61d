"""The one definition of every model feature.

The API computes these online from Redis, the training job offline from the history
(``model.point_in_time``); both call the functions below with the same inputs, so the
values are the same by construction, and a test checks it on a replayed sequence.

All windows run on event time: "the last hour" is the hour before the payment's own
timestamp, so a replay of history faster than real time yields the same features.
Counts and sums include the payment being scored: a burst on one card sees itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np

HOUR = 3600.0
DAY = 86400.0

CARD_WINDOWS: dict[str, float] = {"1h": HOUR, "1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
TERMINAL_WINDOWS: dict[str, float] = {"1d": DAY, "7d": 7 * DAY, "28d": 28 * DAY}
RISK_WINDOW = 28 * DAY
CARD_HORIZON = max(CARD_WINDOWS.values())
TERMINAL_HORIZON = max(max(TERMINAL_WINDOWS.values()), RISK_WINDOW)
# With no earlier payment on the card, "time since previous" is this cap, not infinity.
NO_PREVIOUS_SECS = CARD_HORIZON

FEATURE_NAMES: tuple[str, ...] = (
    "amount",
    "log_amount",
    "hour_of_day",
    "is_night",
    "is_weekend",
    *(f"card_count_{w}" for w in CARD_WINDOWS),
    *(f"card_sum_{w}" for w in CARD_WINDOWS),
    "card_amount_ratio_30d",
    "card_secs_since_prev",
    "card_terminals_1d",
    *(f"terminal_count_{w}" for w in TERMINAL_WINDOWS),
    "terminal_fraud_28d",
    "terminal_risk_28d",
)

FEATURE_DESCRIPTIONS: dict[str, str] = {
    "amount": "payment amount",
    "log_amount": "log(1 + amount)",
    "hour_of_day": "UTC hour of the payment",
    "is_night": "1 if the payment is between 00:00 and 05:59 UTC",
    "is_weekend": "1 on Saturday and Sunday (UTC)",
    **{f"card_count_{w}": f"payments on the card in the last {w}" for w in CARD_WINDOWS},
    **{f"card_sum_{w}": f"amount spent on the card in the last {w}" for w in CARD_WINDOWS},
    "card_amount_ratio_30d": "amount / the card's mean amount over the previous 30d",
    "card_secs_since_prev": "seconds since the card's previous payment (capped at 30d)",
    "card_terminals_1d": "distinct terminals the card was used at in the last 1d",
    **{f"terminal_count_{w}": f"payments at the terminal in the last {w}"
       for w in TERMINAL_WINDOWS},
    "terminal_fraud_28d": "fraud labels reported in the last 28d on the terminal's payments",
    "terminal_risk_28d": "terminal_fraud_28d / terminal_count_28d",
}


def time_features(ts: float) -> dict[str, float]:
    moment = datetime.fromtimestamp(ts, tz=UTC)
    return {
        "hour_of_day": float(moment.hour),
        "is_night": 1.0 if moment.hour < 6 else 0.0,
        "is_weekend": 1.0 if moment.weekday() >= 5 else 0.0,
    }


def card_features(
    ts: float,
    amount: float,
    terminal_id: str,
    prior_ts: np.ndarray,
    prior_amount: np.ndarray,
    prior_terminal: Sequence[str],
) -> dict[str, float]:
    """Features of one card at ``ts``.

    ``prior_*`` are the card's earlier payments with timestamps in (ts - 30d, ts],
    sorted by timestamp, not including this payment.
    """
    n = len(prior_ts)
    out: dict[str, float] = {}
    starts = {w: int(np.searchsorted(prior_ts, ts - span, side="right")) for w, span in
              CARD_WINDOWS.items()}
    for w, start in starts.items():
        out[f"card_count_{w}"] = float(n - start + 1)
    for w, start in starts.items():
        out[f"card_sum_{w}"] = float(prior_amount[start:].sum()) + amount
    start_30d = starts["30d"]
    prior_30d = n - start_30d
    mean_30d = float(prior_amount[start_30d:].sum()) / prior_30d if prior_30d else 0.0
    out["card_amount_ratio_30d"] = amount / mean_30d if mean_30d > 0 else 1.0
    out["card_secs_since_prev"] = (
        min(ts - float(prior_ts[-1]), NO_PREVIOUS_SECS) if n else NO_PREVIOUS_SECS
    )
    out["card_terminals_1d"] = float(len({*prior_terminal[starts["1d"]:], terminal_id}))
    return out


def terminal_features(
    ts: float, prior_counts: dict[str, int], fraud_in_risk_window: int
) -> dict[str, float]:
    """Features of one terminal at ``ts``.

    ``prior_counts[w]`` counts the terminal's earlier payments in (ts - w, ts], without
    this one; ``fraud_in_risk_window`` counts its payments whose fraud label was reported
    in (ts - 28d, ts] -- labels reported after the payment cannot be known when scoring it.
    """
    out = {f"terminal_count_{w}": float(prior_counts[w] + 1) for w in TERMINAL_WINDOWS}
    out["terminal_fraud_28d"] = float(fraud_in_risk_window)
    out["terminal_risk_28d"] = fraud_in_risk_window / out["terminal_count_28d"]
    return out


def feature_vector(
    ts: float, amount: float, card: dict[str, float], terminal: dict[str, float]
) -> dict[str, float]:
    values = {"amount": amount, "log_amount": math.log1p(amount), **time_features(ts)}
    values.update(card)
    values.update(terminal)
    return {name: values[name] for name in FEATURE_NAMES}
