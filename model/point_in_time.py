"""Offline, point-in-time features from raw history, with the online definitions.

Each payment gets exactly what the online store would have served had the history been
replayed through it in timestamp order: the card's and terminal's earlier payments, and
only the fraud labels reported before the payment's own timestamp.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from model.features import (
    CARD_HORIZON,
    FEATURE_NAMES,
    RISK_WINDOW,
    TERMINAL_WINDOWS,
    card_features,
    feature_vector,
    terminal_features,
)

PAYMENT_COLUMNS = ("payment_id", "ts", "card_id", "terminal_id", "amount")
LABEL_COLUMNS = ("payment_id", "is_fraud", "reported_at")


def compute_features(
    payments: pd.DataFrame,
    labels: pd.DataFrame,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Feature matrix for ``payments`` (one row each, same index), point in time.

    ``payments`` needs ``PAYMENT_COLUMNS`` (``ts`` in epoch seconds); ``labels`` needs
    ``LABEL_COLUMNS`` (``reported_at`` in epoch seconds). Payments are taken in timestamp
    order, ties in their given order, as the online store would have seen them.
    """
    missing = [c for c in PAYMENT_COLUMNS if c not in payments.columns]
    missing += [c for c in LABEL_COLUMNS if c not in labels.columns]
    if missing:
        raise ValueError(f"compute_features: missing columns {missing}")

    order = np.argsort(payments["ts"].to_numpy(dtype=float), kind="stable")
    pays = payments.iloc[order]
    ts_all = pays["ts"].to_numpy(dtype=float)
    amount_all = pays["amount"].to_numpy(dtype=float)
    card_all = pays["card_id"].to_numpy()
    term_all = pays["terminal_id"].to_numpy()
    pid_all = pays["payment_id"].to_numpy()

    card_rows = _positions_by(card_all)
    term_rows = _positions_by(term_all)
    card_part = [dict[str, float]()] * len(pays)
    term_part = [dict[str, float]()] * len(pays)

    for rows in card_rows.values():
        ts = ts_all[rows]
        amounts = amount_all[rows]
        terms = term_all[rows]
        for i, row in enumerate(rows):
            lo = int(np.searchsorted(ts[:i], ts[i] - CARD_HORIZON, side="right"))
            card_part[row] = card_features(
                ts[i], amounts[i], terms[i], ts[lo:i], amounts[lo:i], terms[lo:i]
            )

    label_events = _fraud_label_events(labels, pid_all, term_all)
    for terminal, rows in term_rows.items():
        ts = ts_all[rows]
        events = label_events.get(terminal, [])
        fraud_reported: dict[str, float] = {}
        cursor = 0
        for i, row in enumerate(rows):
            t = ts[i]
            while cursor < len(events) and events[cursor][0] <= t:
                reported, pid, is_fraud = events[cursor]
                if is_fraud:
                    fraud_reported[pid] = reported
                else:
                    fraud_reported.pop(pid, None)
                cursor += 1
            counts = {
                w: i - int(np.searchsorted(ts[:i], t - span, side="right"))
                for w, span in TERMINAL_WINDOWS.items()
            }
            fraud = sum(1 for r in fraud_reported.values() if t - RISK_WINDOW < r <= t)
            term_part[row] = terminal_features(t, counts, fraud)
        if progress is not None:
            progress(len(rows))

    matrix = np.empty((len(pays), len(FEATURE_NAMES)), dtype=float)
    for row in range(len(pays)):
        vec = feature_vector(ts_all[row], amount_all[row], card_part[row], term_part[row])
        matrix[row] = list(vec.values())
    out = pd.DataFrame(matrix, columns=list(FEATURE_NAMES), index=pays.index)
    return out.loc[payments.index]


def _positions_by(keys: np.ndarray) -> dict[object, np.ndarray]:
    """Row positions of each key, in their (timestamp-sorted) order."""
    codes, uniques = pd.factorize(keys)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return dict(zip(uniques, np.split(order, bounds), strict=True))


def _fraud_label_events(
    labels: pd.DataFrame, pid_all: np.ndarray, term_all: np.ndarray
) -> dict[object, list[tuple[float, str, bool]]]:
    """Label events per terminal, in reported order; labels of unknown payments dropped."""
    terminal_of = dict(zip(pid_all, term_all, strict=True))
    ordered = labels.sort_values("reported_at", kind="stable")
    events: dict[object, list[tuple[float, str, bool]]] = {}
    for pid, is_fraud, reported in zip(
        ordered["payment_id"], ordered["is_fraud"], ordered["reported_at"], strict=True
    ):
        terminal = terminal_of.get(pid)
        if terminal is not None:
            events.setdefault(terminal, []).append((float(reported), pid, bool(is_fraud)))
    return events
