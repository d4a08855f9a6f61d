"""Every stateful catalogue entry, served from the live Redis (one server or the cluster,
as the run is configured), equals the backfill to the bit: ties, payments arriving after
later-stamped ones, missing keys, capped sets, state trimmed by the retention. A new entry
of DEFAULT is covered here without a test of its own."""

import asyncio

import numpy as np
import pandas as pd
import pytest

from model.catalogue import DEFAULT, Catalogue, Count, Distinct, Novelty, SinceLast, Today
from model.config import Settings
from model.features import DAY
from stores.catalogue_store import CatalogueStore
from stores.redis_client import connect
from tests.conftest import uid
from tests.test_catalogue import cnp_history

pytestmark = pytest.mark.integration

KEYED = ("card_id", "terminal_id", "customer_id", "device_id", "ip", "email")


def fresh_keys(payments: pd.DataFrame) -> pd.DataFrame:
    """The history's keys under a prefix of their own: the tests share one Redis."""
    run = uid("cat")
    return payments.assign(**{c: payments[c].map(lambda v: None if pd.isna(v)
                                                 else f"{run}_{v}")
                              for c in KEYED},
                           payment_id=payments["payment_id"].map(lambda v: f"{run}_{v}"))


def online(settings: Settings, catalogue: Catalogue, payments: pd.DataFrame,
           batch: int) -> pd.DataFrame:
    async def go() -> list[dict[str, float]]:
        redis = connect(settings)
        await redis.ready()
        store = CatalogueStore(redis, catalogue)
        rows = payments.to_dict("records")
        got: list[dict[str, float]] = []
        try:
            for start in range(0, len(rows), batch):
                got += await store.observe_many(rows[start:start + batch])
        finally:
            await redis.aclose()
        return got

    return pd.DataFrame(asyncio.run(go()), index=payments.index)


def assert_equal(catalogue: Catalogue, payments: pd.DataFrame, got: pd.DataFrame) -> None:
    want = catalogue.compute(payments, payments.iloc[:0][["payment_id"]])
    stateful = [f.name for f in catalogue.features if not isinstance(f, Today)]
    assert list(got.columns) == stateful
    for name in stateful:
        a, b = got[name].to_numpy(dtype=float), want[name].to_numpy(dtype=float)
        bad = np.flatnonzero(~((a == b) | (np.isnan(a) & np.isnan(b))))
        assert len(bad) == 0, (name, bad[:5], a[bad[:5]], b[bad[:5]])


@pytest.mark.parametrize(("seed", "batch"), [(1, 1), (2, 64)])
def test_every_default_entry_online_equals_the_backfill(stack: Settings, seed: int,
                                                        batch: int) -> None:
    payments, _ = cnp_history(seed)
    payments = fresh_keys(payments)
    catalogue = Catalogue(f for f in DEFAULT.features if not isinstance(f, Today))
    got = online(stack, catalogue, payments, batch)
    assert_equal(catalogue, payments, got)
    # not vacuous: links and novelty took several values, some payments had no key
    assert got["device_cards_7d"].max() > 1 and got["device_cards_7d"].isna().any()
    assert set(got["customer_new_device_30d"].dropna()) == {0.0, 1.0}


def test_caps_and_a_short_retention_online_equal_the_backfill(stack: Settings) -> None:
    """Sets capped at two keys, and a retention of 3 days over 60 days of payments: the
    state Redis drops is state no window can see."""
    payments, _ = cnp_history(3)
    payments = fresh_keys(payments)
    catalogue = Catalogue([
        Count("device", 2 * DAY), Count("device", DAY, include_self=False),
        Distinct("device", "card", 3 * DAY, cap=2), Distinct("email", "card", DAY),
        Novelty("device", "card", 3 * DAY, cap=2), Novelty("card", "ip_prefix", 3 * DAY),
        SinceLast("device"), SinceLast("customer"),
    ], retention=3 * DAY)
    got = online(stack, catalogue, payments, 16)
    assert_equal(catalogue, payments, got)
    # gaps beyond the retention are NaN: more than the payments without a device and
    # each device's first
    devices = payments["device_id"]
    assert got["device_seconds_since_last"].isna().sum() > devices.isna().sum() + \
        devices.nunique()
    assert got["device_cards_3d_cap2"].max() == 2
