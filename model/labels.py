"""What the labels say about a payment, at any moment: one rule, written once.

A payment may get several labels (a chargeback, then the analyst's "not fraud" after the
dispute is won, then fraud again). **The latest reported label decides**; two labels
reported at the same instant resolve to fraud. A payment is fraud from the first fraud
label after a "not fraud" one (or after none) -- its *known since* time -- until the next
"not fraud" label: a *fraud spell*. Repeated fraud labels extend a spell, they do not
restart it, so a redelivered chargeback does not make old fraud look fresh.

The rule lives in the SQL below. The history's DuckDB views (``label_state``,
``fraud_spells``), training, backtests, the online back-fill, ``history stats`` and the
notebooks all read it from here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Labels of one payment in the order they take effect: the later one wins, and at equal
# times fraud (true sorts after false) is applied last.
LABEL_ORDER = "reported_at, is_fraud"


def latest_label_sql(source: str) -> str:
    """Each labelled payment's deciding label: payment_id, is_fraud, reported_at."""
    return (
        f"SELECT payment_id, is_fraud, reported_at FROM {source} QUALIFY row_number() OVER "
        f"(PARTITION BY payment_id ORDER BY {LABEL_ORDER.replace(',', ' DESC,')} DESC) = 1"
    )


def fraud_spells_sql(source: str) -> str:
    """The fraud spells in ``source`` (payment_id, is_fraud, reported_at):
    payment_id, known_since, until (NULL while the spell lasts)."""
    return f"""
        WITH ordered AS (
            SELECT payment_id, is_fraud, reported_at,
                   lag(is_fraud) OVER w AS before,
                   min(CASE WHEN NOT is_fraud THEN reported_at END) OVER (
                       w ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS next_cleared
            FROM {source}
            WINDOW w AS (PARTITION BY payment_id ORDER BY {LABEL_ORDER})
        )
        SELECT payment_id, reported_at AS known_since, next_cleared AS until
        FROM ordered
        WHERE is_fraud AND (before IS NULL OR NOT before)
    """


def fraud_spells(labels: pd.DataFrame) -> pd.DataFrame:
    """Fraud spells of a label frame (``payment_id, is_fraud, reported_at`` in epoch
    seconds): ``payment_id, known_since, until`` in epoch seconds, ``until`` NaN while the
    spell lasts. The same rule as ``fraud_spells_sql``, on a frame (a test holds the two
    equal): the core computes it without a database."""
    missing = {"payment_id", "is_fraud", "reported_at"} - set(labels.columns)
    if missing:
        raise ValueError(f"fraud_spells: missing label columns {sorted(missing)}")
    frame = labels[["payment_id", "is_fraud", "reported_at"]].astype(
        {"is_fraud": bool, "reported_at": float})
    # LABEL_ORDER within each payment; a stable sort keeps equal labels in a fixed order.
    frame = frame.sort_values(["payment_id", "reported_at", "is_fraud"], kind="mergesort",
                              ignore_index=True)
    group = frame.groupby("payment_id", sort=False)
    before = group["is_fraud"].shift(1)
    # The first "not fraud" label after each one: the running minimum from the end of its
    # payment's labels, of the cleared labels' times, excluding the label itself.
    cleared_at = frame["reported_at"].where(~frame["is_fraud"], np.inf)
    next_cleared = (cleared_at.iloc[::-1].groupby(frame["payment_id"].iloc[::-1], sort=False)
                    .cummin().iloc[::-1])
    next_cleared = next_cleared.groupby(frame["payment_id"], sort=False).shift(-1)
    starts = frame["is_fraud"] & ~before.astype("boolean").fillna(False).to_numpy(dtype=bool)
    spells = pd.DataFrame({"payment_id": frame["payment_id"][starts].to_numpy(dtype=object),
                           "known_since": frame["reported_at"][starts].to_numpy(dtype=float),
                           "until": next_cleared[starts].replace(np.inf, np.nan)
                           .to_numpy(dtype=float)})
    return spells


def fraud_known_since(payment_ids: pd.Series, spells: pd.DataFrame, at: float) -> pd.Series:
    """When each payment became known as fraud, for those that are fraud at ``at``
    (NaN for the others): the spell in force at that moment."""
    live = spells[(spells["known_since"] <= at) & ~(spells["until"] <= at)]
    return payment_ids.map(live.set_index("payment_id")["known_since"])
