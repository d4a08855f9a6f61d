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

import duckdb
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
    spell lasts."""
    missing = {"payment_id", "is_fraud", "reported_at"} - set(labels.columns)
    if missing:
        raise ValueError(f"fraud_spells: missing label columns {sorted(missing)}")
    frame = labels[["payment_id", "is_fraud", "reported_at"]].astype(
        {"is_fraud": bool, "reported_at": float})
    con = duckdb.connect()
    try:
        con.register("label_frame", frame)
        spells = con.execute(fraud_spells_sql("label_frame")).df()
    finally:
        con.close()
    return spells.astype({"known_since": float, "until": float})


def fraud_known_since(payment_ids: pd.Series, spells: pd.DataFrame, at: float) -> pd.Series:
    """When each payment became known as fraud, for those that are fraud at ``at``
    (NaN for the others): the spell in force at that moment."""
    live = spells[(spells["known_since"] <= at) & ~(spells["until"] <= at)]
    return payment_ids.map(live.set_index("payment_id")["known_since"])
