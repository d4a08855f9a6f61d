"""``fraudstream features check``: the installation's catalogue on its own history.

The newest payments of the history (a sample, in arrival order) go through the offline
derivation (``Catalogue.compute``) and through the live Redis store (``stores.catalogue_store``)
under keys of the check's own that expire within minutes, so nothing served is touched.
Both start from no state, so they must agree to the bit: any difference is a defect of
the derivation, named per feature. Also reported per feature: how often it has a value,
its distinct values and mean on the sample; for the catalogue, the Redis commands a
payment costs and the time the sample took per payment.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd

from model.catalogue import Catalogue, Today
from model.catalogue_file import commands_per_payment
from model.config import Settings
from stores.catalogue_store import CatalogueStore
from stores.history import HistoryStore
from stores.redis_client import connect
from training.dataset import load

BATCH = 200
CHECK_TTL = 600.0  # seconds the check's keys live


@dataclass(frozen=True)
class FeatureRow:
    feature: str
    group: str
    present: float  # share of the sample's payments with a value
    distinct: int
    mean: float
    online_differs: int | None  # payments whose online value differs; None: not online


@dataclass(frozen=True)
class FeatureReport:
    payments: int
    rows: list[FeatureRow]
    commands_per_payment: int
    online_us_per_payment: float

    @property
    def parity_ok(self) -> bool:
        return all(not r.online_differs for r in self.rows)


def check(settings: Settings, catalogue: Catalogue, sample: int = 5000,
          progress: Callable[[int], None] | None = None) -> FeatureReport:
    payments, labels = load(HistoryStore(settings.history_dir), details=True)
    if payments.empty:
        raise ValueError(f"the history at {settings.history_dir} holds no payments; import "
                         "or record some first")
    payments = payments.tail(sample).reset_index(drop=True)
    offline = catalogue.compute(payments, labels)
    stateful = Catalogue((f for f in catalogue.features if not isinstance(f, Today)),
                         catalogue.retention)
    started = time.perf_counter()
    online = asyncio.run(_online(settings, stateful, payments, progress))
    per_payment = (time.perf_counter() - started) / len(payments) * 1e6
    rows = []
    for f in catalogue.features:
        values = offline[f.name].to_numpy(dtype=float)
        differs = None
        if f.name in online:
            got = online[f.name].to_numpy(dtype=float)
            differs = int((~((got == values) | (np.isnan(got) & np.isnan(values)))).sum())
        present = ~np.isnan(values)
        rows.append(FeatureRow(f.name, f.group, float(present.mean()),
                               int(pd.Series(values).nunique()),
                               float(values[present].mean()) if present.any() else float("nan"),
                               differs))
    return FeatureReport(len(payments), rows, commands_per_payment(catalogue), per_payment)


async def _online(settings: Settings, catalogue: Catalogue, payments: pd.DataFrame,
                  progress: Callable[[int], None] | None) -> pd.DataFrame:
    redis = connect(settings)
    try:
        await redis.ready()
        store = CatalogueStore(redis, catalogue, prefix=f"fs:check:{uuid.uuid4().hex[:12]}",
                               ttl=CHECK_TTL)
        records = cast(list[dict[str, Any]], payments.to_dict("records"))
        got: list[dict[str, float]] = []
        for start in range(0, len(records), BATCH):
            chunk = records[start:start + BATCH]
            got += await store.observe_many(chunk)
            if progress:
                progress(len(chunk))
        return pd.DataFrame(got, index=payments.index)
    finally:
        await redis.aclose()
