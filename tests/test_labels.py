"""The label rule is written once, as SQL for the history's views, and computed on frames
by the core without a database: the two must agree on every label sequence."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from model.labels import fraud_spells, fraud_spells_sql


def _spells_by_sql(labels: pd.DataFrame) -> pd.DataFrame:
    con = duckdb.connect()
    try:
        con.register("label_frame", labels)
        return con.execute(fraud_spells_sql("label_frame")).df()
    finally:
        con.close()


def _canonical(spells: pd.DataFrame) -> pd.DataFrame:
    return (spells.astype({"payment_id": str, "known_since": float, "until": float})
            .sort_values(["payment_id", "known_since"]).reset_index(drop=True))


@pytest.mark.parametrize(("n", "payments", "instants", "seed"),
                         [(40, 4, 3, 0), (5_000, 600, 20, 1), (20_000, 15_000, 10**6, 2)])
def test_frame_spells_equal_the_sql_rule(n: int, payments: int, instants: int,
                                         seed: int) -> None:
    # Few instants make ties (equal report times, repeated labels) common.
    rng = np.random.default_rng(seed)
    labels = pd.DataFrame({"payment_id": rng.integers(0, payments, n).astype(str),
                           "is_fraud": rng.random(n) < 0.6,
                           "reported_at": rng.integers(0, instants, n).astype(float)})
    expected = _canonical(_spells_by_sql(labels))
    assert len(expected) > 0
    pd.testing.assert_frame_equal(_canonical(fraud_spells(labels)), expected)


def test_withdrawn_fraud_ends_its_spell_and_a_new_fraud_starts_another() -> None:
    labels = pd.DataFrame({"payment_id": ["p"] * 4, "is_fraud": [True, True, False, True],
                           "reported_at": [10.0, 20.0, 30.0, 40.0]})
    spells = _canonical(fraud_spells(labels))
    assert spells["known_since"].tolist() == [10.0, 40.0]
    assert spells["until"].iloc[0] == 30.0 and np.isnan(spells["until"].iloc[1])


def test_a_frame_without_label_columns_names_them() -> None:
    with pytest.raises(ValueError, match="reported_at"):
        fraud_spells(pd.DataFrame({"payment_id": ["p"], "is_fraud": [True]}))
