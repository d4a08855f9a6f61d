"""Offline, point-in-time window aggregates from raw history, vectorised.

Each payment gets exactly the aggregates the online store would have served had the
history gone through it in arrival order: the card's payments that arrived before it, the
terminal's matured payments, and only the labels reported by the payment's own timestamp.
The formulas on top are ``model.features.compute``, shared with the API.

Everything is computed with sorts and cumulative sums over the whole history, not a loop
per payment: a window count is "how many of this key's events lie at or before x", answered
for all payments at once by one merge of events and queries (``_count_at_or_before``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import pandas as pd

from model.features import (
    CARD_FRAUD_WINDOW,
    CARD_HORIZON,
    CARD_WINDOWS,
    FEATURE_NAMES,
    FRESH_FRAUD_WINDOW,
    MATURITY,
    RISK_WINDOWS,
    Aggregates,
    matrix,
    to_milli,
    to_tenths,
)
from model.labels import fraud_spells

PAYMENT_COLUMNS = ("payment_id", "ts", "card_id", "terminal_id", "amount")  # + optional
# country and merchant_category
LABEL_COLUMNS = ("payment_id", "is_fraud", "reported_at")


def compute_features(
    payments: pd.DataFrame,
    labels: pd.DataFrame,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Feature matrix for ``payments`` (one row each, same index), point in time.

    ``payments`` needs ``PAYMENT_COLUMNS`` (``ts`` in epoch seconds) and is taken in its
    row order as the order the payments reached the online store (ties in ``ts`` included);
    ``labels`` needs ``LABEL_COLUMNS`` (``reported_at`` in epoch seconds).
    """
    agg = compute_aggregates(payments, labels, progress)
    return pd.DataFrame(matrix(agg), columns=list(FEATURE_NAMES), index=payments.index)


def compute_aggregates(
    payments: pd.DataFrame,
    labels: pd.DataFrame,
    progress: Callable[[int], None] | None = None,
) -> Aggregates:
    missing = [c for c in PAYMENT_COLUMNS if c not in payments.columns]
    missing += [c for c in LABEL_COLUMNS if c not in labels.columns]
    if missing:
        raise ValueError(f"compute_features: missing columns {missing}")
    n = len(payments)
    ts = payments["ts"].to_numpy(dtype=float)
    amount = payments["amount"].to_numpy(dtype=float)
    card, _ = pd.factorize(payments["card_id"], sort=False)
    term, _ = pd.factorize(payments["terminal_id"], sort=False)

    attrs = {"terminal": term, **{name: _codes(payments, column)
                                  for name, column in NOVELTY_COLUMNS.items()}}
    card_count, card_milli, tenths, prev_ts, seen = _card_windows(ts, to_milli(amount), card,
                                                                  attrs)
    if progress is not None:
        progress(n // 2)

    spells = fraud_spells(labels)
    rows = pd.Index(payments["payment_id"].to_numpy(dtype=object)).get_indexer(
        spells["payment_id"].to_numpy(dtype=object))
    spells, rows = spells[rows >= 0], rows[rows >= 0]  # labels of payments not given
    known = spells["known_since"].to_numpy(dtype=float)
    until = spells["until"].fillna(np.inf).to_numpy(dtype=float)

    card_fraud = _active(card[rows], known, np.minimum(until, known + CARD_FRAUD_WINDOW),
                         card, ts)
    fresh = _active(term[rows], known, np.minimum(until, known + FRESH_FRAUD_WINDOW), term, ts)
    terminal_count: dict[str, np.ndarray] = {}
    terminal_fraud: dict[str, np.ndarray] = {}
    matured = ts - MATURITY
    terminal_payments = _Events(term, ts)
    at_matured = terminal_payments.at_or_before(term, matured)
    paid = ts[rows]
    for w, span in RISK_WINDOWS.items():
        terminal_count[w] = at_matured - terminal_payments.at_or_before(term, matured - span)
        # A fraud payment at p counts at t when p lies in (t - M - w, t - M] and the
        # spell is in force at t: t in [max(known, p + M), min(until, p + M + w)).
        terminal_fraud[w] = _active(term[rows], np.maximum(known, paid + MATURITY),
                                    np.minimum(until, paid + MATURITY + span), term, ts)
    if progress is not None:
        progress(n - n // 2)
    return Aggregates(ts=ts, amount=amount, card_count=card_count, card_milli=card_milli,
                      card_tenths=tenths[0], card_tenths_sq=tenths[1], card_prev_ts=prev_ts,
                      card_seen=seen, card_fraud=card_fraud,
                      terminal_count=terminal_count, terminal_fraud=terminal_fraud,
                      terminal_fresh=fresh)


class _Events:
    """Timed events of integer keys, indexed to count, for many queries at once, how many
    events of the query's key happened at or before the query's time."""

    def __init__(self, key: np.ndarray, t: np.ndarray) -> None:
        # Times become ranks among the distinct event times, so that (key, time) packs
        # into one int64 and one sorted array answers every query by binary search.
        self.times: np.ndarray = np.unique(t)
        self.stride = np.int64(len(self.times) + 1)
        self.packed: np.ndarray = np.sort(key.astype(np.int64) * self.stride
                              + np.searchsorted(self.times, t, side="left"))
        n_keys = int(key.max(initial=-1)) + 2
        self.key_start: np.ndarray = np.searchsorted(self.packed, np.arange(n_keys) * self.stride)

    def at_or_before(self, query_key: np.ndarray, query_t: np.ndarray) -> np.ndarray:
        rank = _search(self.times, query_t, "right")  # distinct times <= t
        key = np.minimum(query_key, len(self.key_start) - 1)  # keys with no event
        upto = query_key.astype(np.int64) * self.stride + rank
        counts: np.ndarray = _search(self.packed, upto, "left") - self.key_start[key]
        return counts


def _search(a: np.ndarray, v: np.ndarray, side: Literal["left", "right"]) -> np.ndarray:
    """``np.searchsorted``, with the queries taken in sorted order: much faster on large
    arrays, where random probes would miss the cache."""
    order = np.argsort(v, kind="stable")
    out = np.empty(len(v), dtype=np.int64)
    out[order] = np.searchsorted(a, v[order], side=side)
    return out


# Optional payment fields whose novelty for the card is a feature (see model.features).
NOVELTY_COLUMNS = {"country": "country", "mcc": "merchant_category"}


def _codes(payments: pd.DataFrame, column: str) -> np.ndarray:
    """Integer codes of an optional column; -1 where not given (or no such column)."""
    if column not in payments.columns:
        return np.full(len(payments), -1, dtype=np.int64)
    codes, _ = pd.factorize(payments[column], use_na_sentinel=True)
    return codes.astype(np.int64)


def _count_at_or_before(
    event_key: np.ndarray, event_t: np.ndarray, query_key: np.ndarray, query_t: np.ndarray
) -> np.ndarray:
    """For each query, the number of events with its key at a time <= the query's time."""
    return _Events(event_key, event_t).at_or_before(query_key, query_t)


def _active(key: np.ndarray, start: np.ndarray, end: np.ndarray,
            query_key: np.ndarray, query_t: np.ndarray) -> np.ndarray:
    """For each query, how many intervals ``[start, end)`` of its key contain its time."""
    keep = start < end
    key, start, end = key[keep], start[keep], end[keep]
    active: np.ndarray = (_count_at_or_before(key, start, query_key, query_t)
                          - _count_at_or_before(key, end, query_key, query_t))
    return active


def _card_windows(
    ts: np.ndarray, milli: np.ndarray, card: np.ndarray, attrs: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], tuple[np.ndarray, np.ndarray],
           np.ndarray, dict[str, np.ndarray]]:
    """Counts and amount sums of each card's earlier arrivals per window, the sums of their
    amounts and squared amounts in tenths over 30 days, the latest of them within 30 days,
    and, per attribute (terminal, country...), whether one of those had this
    payment's value (``attrs`` codes; -1, a value not given, counts as seen)."""
    n = len(ts)
    arrival = np.arange(n)
    order = np.lexsort((arrival, card))  # by card, then arrival
    c, t, m = card[order], ts[order], milli[order]
    first = np.r_[True, c[1:] != c[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    u = to_tenths(m)
    # Running sums over every card at once may wrap around int64; a difference of two of
    # them is still exact while the window's own sum fits.
    cum, cum_u, cum_u2 = (np.r_[0, np.cumsum(x)] for x in (m, u, u * u))
    counts, sums, lows = {}, {}, {}
    card_payments = _Events(c, t)
    pos = np.arange(n)
    for w, span in CARD_WINDOWS.items():
        # Earlier arrivals in (t - w, t]: valid where a card's timestamps rise with arrival,
        # fixed below for the cards that received a payment late.
        lo = lows[span] = start + card_payments.at_or_before(c, t - span)
        counts[w] = pos - lo
        sums[w] = cum[pos] - cum[lo]
    lo = lows[CARD_HORIZON]
    tenths = (cum_u[pos] - cum_u[lo], cum_u2[pos] - cum_u2[lo])
    prev = np.where(first, np.nan, np.r_[np.nan, t[:-1]])
    prev = np.where(t - prev < CARD_HORIZON, prev, np.nan)
    values = {name: codes[order] for name, codes in attrs.items()}
    seen = {name: _seen_before(c, t, v) for name, v in values.items()}

    late = np.r_[False, (t[1:] < t[:-1]) & ~first[1:]]
    if late.any():
        _fix_late_cards(np.unique(c[late]), c, t, m, values, counts, sums, tenths, prev, seen)

    def back(a: np.ndarray) -> np.ndarray:
        out = np.empty_like(a)
        out[order] = a
        return out

    return ({w: back(v) for w, v in counts.items()}, {w: back(v) for w, v in sums.items()},
            (back(tenths[0]), back(tenths[1])), back(prev),
            {name: back(v) for name, v in seen.items()})


def _seen_before(c: np.ndarray, t: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Same card and value among the earlier arrivals within 30 days? (Rows in card, then
    arrival order.)"""
    n = len(t)
    pair = c.astype(np.int64) * (int(value.max(initial=0)) + 2) + value + 1
    by_pair = np.lexsort((np.arange(n), pair))
    p_sorted = pair[by_pair]
    same_before = np.r_[False, p_sorted[1:] == p_sorted[:-1]]
    t_pair = t[by_pair]
    last_pair_t = np.where(same_before, np.r_[np.nan, t_pair[:-1]], np.nan)
    seen = np.empty(n, dtype=bool)
    seen[by_pair] = (t_pair - last_pair_t) < CARD_HORIZON
    return seen | (value < 0)


def _fix_late_cards(
    late_cards: np.ndarray, c: np.ndarray, t: np.ndarray, m: np.ndarray,
    values: dict[str, np.ndarray], counts: dict[str, np.ndarray], sums: dict[str, np.ndarray],
    tenths: tuple[np.ndarray, np.ndarray], prev: np.ndarray, seen: dict[str, np.ndarray],
) -> None:
    """Exact aggregates for cards whose payments arrived out of timestamp order: each sees
    only what arrived before it. Rare, so a loop per payment of those cards is fine."""
    for card in late_cards:
        idx = np.flatnonzero(c == card)
        for k, i in enumerate(idx):
            before = idx[:k]
            tb = t[before]
            for w, span in CARD_WINDOWS.items():
                inside = (tb > t[i] - span) & (tb <= t[i])
                counts[w][i] = int(inside.sum())
                sums[w][i] = int(m[before][inside].sum())
            in_30d = (tb > t[i] - CARD_HORIZON) & (tb <= t[i])
            u = to_tenths(m[before][in_30d])
            tenths[0][i], tenths[1][i] = int(u.sum()), int((u * u).sum())
            prev[i] = tb[in_30d].max() if in_30d.any() else np.nan
            for name, v in values.items():
                seen[name][i] = v[i] < 0 or bool((v[before][in_30d] == v[i]).any())
