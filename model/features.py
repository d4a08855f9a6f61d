"""The one definition of every model feature.

A feature is a formula over *window aggregates*: counts and sums of a card's or a
terminal's earlier payments, and of the fraud labels known about them. The API reads the
aggregates from Redis (``stores.online_features``), training and backtests compute them from
the history (``model.point_in_time``); both hand them to :func:`compute`, so the formulas
exist once. Which payments fall in which window is defined here in words and constants;
Redis and numpy select them independently, and a test replays the same events through both
and requires equal features.

All windows run on event time: "the last day" is the day before the payment's own
timestamp, so a replay faster than real time yields the same features. A window
``(t - w, t]`` excludes its lower bound. Card windows hold the card's *earlier* payments;
the card means include the payment being scored (a burst on one card sees itself).

Label-aware features follow the field's practice (Le Borgne et al., *Reproducible machine
learning for credit card fraud detection*): the share of fraud among a terminal's payments
over windows that end ``MATURITY`` before the payment, because the labels of more recent
payments are mostly not known yet. Counting a fresh window would dilute a compromised
terminal under payments whose fraud has not been reported. A label counts only once it is
reported (``reported_at <= t``), and a payment's latest label decides (see
``model.labels``).

Amounts are summed in integer thousandths (``to_milli``): sums are then exact, so the
online and offline means agree to the last bit, whatever order the terms came in. The
z-score's sums of squares are kept in integer tenths (``to_tenths``) for the same reason:
exact while a card's 30-day sum of squared tenths stays under 2**53 (900 payments of a
million each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

HOUR = 3600.0
DAY = 86400.0
MILLI = 1000.0

CARD_WINDOWS: dict[str, float] = {"1h": HOUR, "1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
CARD_MEAN_WINDOWS: tuple[str, ...] = ("1d", "7d", "30d")
# Labels of payments younger than this are mostly unknown when scoring: the terminal's
# label-aware windows end this long before the payment.
MATURITY = 7 * DAY
RISK_WINDOWS: dict[str, float] = {"1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
# Fraud reported lately on a terminal, whenever its payments were: catches what analysts
# and fast chargebacks reveal before the matured windows can.
FRESH_FRAUD_WINDOW = 7 * DAY
CARD_FRAUD_WINDOW = 30 * DAY

# What is new for a card: the attribute of the payment -> the feature saying so.
NOVELTY: dict[str, str] = {"terminal": "card_new_terminal", "country": "card_new_country",
                           "mcc": "card_new_mcc"}

CARD_HORIZON = max(CARD_WINDOWS.values())
TERMINAL_HORIZON = MATURITY + max(RISK_WINDOWS.values())
# With no earlier payment on the card in 30 days, "time since previous" is this cap.
NO_PREVIOUS_SECS = CARD_HORIZON

FEATURE_NAMES: tuple[str, ...] = (
    "amount",
    "hour_of_day",
    "is_night",
    "is_weekend",
    *(f"card_count_{w}" for w in CARD_WINDOWS),
    *(f"card_mean_amount_{w}" for w in CARD_MEAN_WINDOWS),
    "card_amount_ratio_30d",
    "card_amount_z_30d",
    "card_secs_since_prev",
    "card_new_terminal",
    "card_new_country",
    "card_new_mcc",
    "card_fraud_known_30d",
    *(f"terminal_count_{w}" for w in RISK_WINDOWS),
    *(f"terminal_risk_{w}" for w in RISK_WINDOWS),
    "terminal_fraud_fresh_7d",
)

_M = f"{MATURITY / DAY:g}d"
FEATURE_DESCRIPTIONS: dict[str, str] = {
    "amount": "payment amount",
    "hour_of_day": "UTC hour of the payment",
    "is_night": "1 if the payment is between 00:00 and 05:59 UTC",
    "is_weekend": "1 on Saturday and Sunday (UTC)",
    **{f"card_count_{w}": f"payments on the card in the last {w}, this one included"
       for w in CARD_WINDOWS},
    **{f"card_mean_amount_{w}": f"mean amount on the card over the last {w}, this one included"
       for w in CARD_MEAN_WINDOWS},
    "card_amount_ratio_30d": "amount / the card's mean amount over the previous 30d (1 if none)",
    "card_amount_z_30d": "(amount - the card's mean over the previous 30d) / their standard "
                         "deviation (0 with fewer than two distinct amounts)",
    "card_secs_since_prev": "seconds since the card's previous payment (capped at 30d)",
    "card_new_terminal": "1 if the card has not paid at this terminal in the previous 30d",
    "card_new_country": "1 if the card has not paid in this country in the previous 30d "
                        "(0 when the payment gives no country)",
    "card_new_mcc": "1 if the card has not paid in this merchant category in the previous "
                    "30d (0 when the payment gives none)",
    "card_fraud_known_30d": "the card's payments whose fraud became known in the last 30d",
    **{f"terminal_count_{w}": f"payments at the terminal in the {w} ending {_M} ago"
       for w in RISK_WINDOWS},
    **{f"terminal_risk_{w}": f"share of those {w} payments known as fraud now"
       for w in RISK_WINDOWS},
    "terminal_fraud_fresh_7d": "the terminal's payments whose fraud became known in the last 7d",
}


def to_milli(amount: Any) -> Any:
    """Amounts as integer thousandths, the unit every amount sum is kept in: an array of
    int64 offline, a plain int online (both round half to even)."""
    if isinstance(amount, np.ndarray):
        return np.rint(amount.astype(float) * MILLI).astype(np.int64)
    return round(float(amount) * MILLI)


def to_tenths(milli: Any) -> Any:
    """Thousandths to integer tenths, rounding half up (the unit of the z-score's sums)."""
    return (milli + 50) // 100


# The formulas below run on numpy arrays offline and on plain Python numbers online (one
# payment: numpy's per-call overhead would cost ten times the arithmetic). Both follow
# IEEE double arithmetic, so the same inputs give the same bits; these four are the only
# operations that need telling apart.
def _where(cond: Any, a: Any, b: Any) -> Any:
    if isinstance(cond, np.ndarray):
        return np.where(cond, a, b)
    return a if cond else b


def _safe(denominator: Any) -> Any:
    """A denominator that is never 0 (its results are discarded by ``_where`` anyway)."""
    if isinstance(denominator, np.ndarray):
        return np.where(denominator == 0, 1, denominator)
    return denominator or 1


def _minimum(a: Any, b: float) -> Any:
    return np.minimum(a, b) if isinstance(a, np.ndarray) else min(a, b)


def _isnan(a: Any) -> Any:
    return np.isnan(a) if isinstance(a, np.ndarray) else a != a


def _sqrt(a: Any) -> Any:
    return np.sqrt(a) if isinstance(a, np.ndarray) else math.sqrt(a)


Number = Any  # an array (offline) or a plain number (online)


@dataclass(frozen=True, slots=True)
class Aggregates:
    """Window aggregates of payments: arrays (offline, one element per payment) or plain
    numbers (online, one payment).

    Card side, over the card's earlier payments with timestamps in ``(ts - w, ts]``:
    ``card_count[w]`` of them, ``card_milli[w]`` the sum of their amounts (``to_milli``);
    ``card_tenths`` and ``card_tenths_sq`` the sums of their amounts in 30d and of their
    squares, in ``to_tenths``; ``card_prev_ts`` the latest of them in 30d (NaN if none);
    ``card_seen[attr]`` 1 if one of them in 30d had this payment's terminal, country or MCC
    (``NOVELTY``; 1 as well when the payment does not give it); ``card_fraud`` the card's
    payments whose fraud was known since a time in ``(ts - 30d, ts]``.

    Terminal side, over the terminal's payments with timestamps in
    ``(ts - MATURITY - w, ts - MATURITY]``: ``terminal_count[w]`` of them,
    ``terminal_fraud[w]`` of those known as fraud at ``ts``; ``terminal_fresh`` the
    terminal's payments whose fraud was known since a time in ``(ts - 7d, ts]``.
    """

    ts: Number
    amount: Number
    card_count: dict[str, Number]
    card_milli: dict[str, Number]
    card_tenths: Number
    card_tenths_sq: Number
    card_prev_ts: Number
    card_seen: dict[str, Number]
    card_fraud: Number
    terminal_count: dict[str, Number]
    terminal_fraud: dict[str, Number]
    terminal_fresh: Number


def compute(agg: Aggregates) -> dict[str, Number]:
    """Every feature of ``FEATURE_NAMES`` from the aggregates."""
    ts, amount = agg.ts, agg.amount
    own = to_milli(amount)
    hour = (ts % DAY) // HOUR
    weekday = (ts // DAY + 3) % 7  # 1970-01-01 was a Thursday (3)
    out: dict[str, Number] = {
        "amount": amount * 1.0,
        "hour_of_day": hour,
        "is_night": (hour < 6) * 1.0,
        "is_weekend": (weekday >= 5) * 1.0,
    }
    for w in CARD_WINDOWS:
        out[f"card_count_{w}"] = agg.card_count[w] + 1.0
    for w in CARD_MEAN_WINDOWS:
        out[f"card_mean_amount_{w}"] = (agg.card_milli[w] + own) / (agg.card_count[w] + 1) / MILLI
    prior_n, prior_milli = agg.card_count["30d"], agg.card_milli["30d"]
    out["card_amount_ratio_30d"] = _where(prior_milli > 0,
                                          own * prior_n / _safe(prior_milli), 1.0)
    # (x - mean) / std over n earlier amounts, as (n x - S1) / sqrt(n S2 - S1^2): exact
    # integers under the root, so "all amounts equal" is exactly 0 on both sides.
    spread = prior_n * 1.0 * agg.card_tenths_sq - agg.card_tenths * 1.0 * agg.card_tenths
    deviation = prior_n * 1.0 * to_tenths(own) - agg.card_tenths
    out["card_amount_z_30d"] = _where(
        spread > 0, deviation / _sqrt(_where(spread > 0, spread, 1.0)), 0.0)
    since = _minimum(ts - agg.card_prev_ts, NO_PREVIOUS_SECS)
    out["card_secs_since_prev"] = _where(_isnan(since), NO_PREVIOUS_SECS, since)
    for attr, name in NOVELTY.items():
        out[name] = 1.0 - agg.card_seen[attr]
    out["card_fraud_known_30d"] = agg.card_fraud * 1.0
    for w in RISK_WINDOWS:
        count = agg.terminal_count[w] * 1.0
        out[f"terminal_count_{w}"] = count
        out[f"terminal_risk_{w}"] = _where(count > 0, agg.terminal_fraud[w] / _safe(count), 0.0)
    out["terminal_fraud_fresh_7d"] = agg.terminal_fresh * 1.0
    return out


def matrix(agg: Aggregates) -> np.ndarray:
    """The features as an ``(n, len(FEATURE_NAMES))`` matrix, in ``FEATURE_NAMES`` order."""
    values = compute(agg)
    return np.column_stack([np.broadcast_to(np.asarray(values[name], dtype=float),
                                            np.shape(agg.ts)) for name in FEATURE_NAMES])
