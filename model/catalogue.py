"""The feature catalogue: each feature declared once, as data.

A declaration names the entity a feature is keyed by (card, device, e-mail...), its kind
(a count, a novelty...) and its window; the point-in-time backfill is derived from it here
(``Catalogue.compute``). The online store does not derive from it yet: it still serves
today's 25 features through ``stores.online_features``, and ``TODAY.compute`` delegates
those 25 to ``model.point_in_time`` so that their semantics stay exactly as they are.

Beyond today's 25 it derives per-entity counts over windows, the links (distinct cards
per device, IP, network or e-mail; devices, e-mails and cards per customer), novelty (an
account or card with a device or e-mail it was not seen with), the time since an entity's
previous payment and the payment-level shipping/billing mismatch. Each kind is defined
by what a sorted set or a counter in Redis can hold exactly (a key's latest timestamp, a
capped set trimmed by rank), so that the online side, when it derives from here, can be
equal to the backfill to the bit. Other kinds (sums, fraud shares, taint) are not declared
until their derivation and reference test exist: a declaration the backfill cannot
compute would be a promise nobody keeps.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd

from model.features import DAY, FEATURE_DESCRIPTIONS, FEATURE_NAMES, HOUR
from model.point_in_time import _Events, compute_features
from model.pseudonym import ip_prefix_of

# The longest window a declaration may use: the history the backfill is handed (and the
# online store would keep) covers no more than this.
RETENTION = 90 * DAY
# How many keys a Distinct or Novelty entity keeps by default (the latest): bounds the
# work and memory per entity whatever an IP network or a busy device is shared by.
DISTINCT_CAP = 1000


@dataclass(frozen=True, slots=True)
class Entity:
    """What a feature is keyed by: a payment column, or a value derived from one."""

    name: str
    column: str
    derive: Callable[[str | None], str | None] | None = None

    def keys(self, payments: pd.DataFrame) -> pd.Series:
        """The entity's key per payment; None/NaN where the payment does not give it."""
        if self.column not in payments.columns:
            return pd.Series([None] * len(payments), index=payments.index, dtype=object)
        values = payments[self.column]
        if self.derive is None:
            return values
        derive = self.derive
        return values.map(lambda v: None if pd.isna(v) else derive(str(v)))

    def key_of(self, payment: Mapping[str, Any]) -> str | None:
        """The entity's key in one payment (a history row or a payment's fields)."""
        value = payment.get(self.column)
        if value is None or value != value:  # missing, or NaN from a frame
            return None
        return str(value) if self.derive is None else self.derive(str(value))


ENTITIES: dict[str, Entity] = {e.name: e for e in (
    Entity("card", "card_id"), Entity("terminal", "terminal_id"),
    Entity("merchant", "merchant_id"), Entity("customer", "customer_id"),
    Entity("device", "device_id"), Entity("ip", "ip"),
    Entity("ip_prefix", "ip", ip_prefix_of), Entity("email", "email"),
    Entity("bin", "card_bin"),
)}


@dataclass(frozen=True, slots=True)
class Today:
    """One of today's 25 features (``model.features``), computed as it is today."""

    name: str
    group: str
    description: str


@dataclass(frozen=True, slots=True)
class Count:
    """Payments of the entity with timestamps in ``(ts - window, ts]`` that arrived before
    this one, plus this one if ``include_self``; NaN when the payment has no key."""

    entity: str
    window: float
    include_self: bool = True
    label: str = ""

    @property
    def name(self) -> str:
        return f"{self.entity}_count_{self.label or _span(self.window)}"

    @property
    def group(self) -> str:
        return self.entity

    @property
    def description(self) -> str:
        own = ", this one included" if self.include_self else ""
        return f"payments of the {self.entity} in the last {_span(self.window)}{own}"


@dataclass(frozen=True, slots=True)
class Mismatch:
    """1 if two payment columns differ, NaN when either is missing (payment level)."""

    name: str
    left: str
    right: str

    @property
    def group(self) -> str:
        return "mismatch"

    @property
    def description(self) -> str:
        return f"1 if {self.left} differs from {self.right} (NaN when either is missing)"

    def value(self, payment: Mapping[str, Any]) -> float:
        a, b = payment.get(self.left), payment.get(self.right)
        if a is None or b is None or a != a or b != b:
            return float("nan")
        return float(a != b)


@dataclass(frozen=True, slots=True)
class _KeptKeys:
    """An entity's kept keys of another entity (``of``): what Distinct and Novelty read."""

    entity: str
    of: str
    window: float
    cap: int = DISTINCT_CAP


@dataclass(frozen=True, slots=True)
class Distinct(_KeptKeys):
    """Distinct ``of`` keys (cards, devices...) the entity was seen with, in the window.

    The entity keeps, per ``of`` key, the latest timestamp it came with among the payments
    that arrived before this one and this one; at most ``cap`` keys, the latest (ties by
    key), as a sorted set trimmed by rank does. The feature counts the keys whose latest
    timestamp is in ``(ts - window, ts]``. NaN when the payment has no entity key; a
    payment without an ``of`` key is counted over the others'. Over many stolen cards on
    one device, IP or e-mail, these are the links that show a ring."""

    @property
    def name(self) -> str:
        return f"{self.entity}_{self.of}s_{_span(self.window)}{_cap(self.cap)}"

    @property
    def group(self) -> str:
        return "links"

    @property
    def description(self) -> str:
        return (f"distinct {self.of}s seen with the {self.entity} in the last "
                f"{_span(self.window)}, this payment's included (at most {self.cap})")


@dataclass(frozen=True, slots=True)
class Novelty(_KeptKeys):
    """1 if the entity was not seen with this payment's ``of`` key in the window before
    this payment (from the same kept keys as ``Distinct``, so a key trimmed away by the cap
    is new again), else 0; NaN when either key is missing. A card on a new device, an
    account with a new e-mail: the start of a takeover."""

    @property
    def name(self) -> str:
        return f"{self.entity}_new_{self.of}_{_span(self.window)}{_cap(self.cap)}"

    @property
    def group(self) -> str:
        return "novelty"

    @property
    def description(self) -> str:
        return (f"1 if the {self.entity} was not seen with this {self.of} in the last "
                f"{_span(self.window)}")


@dataclass(frozen=True, slots=True)
class SinceLast:
    """Seconds since the latest timestamp of the entity's earlier arrivals (0 when that
    is later than this payment's); NaN for the entity's first payment, when that was more
    than the retention ago, or without a key."""

    entity: str

    @property
    def name(self) -> str:
        return f"{self.entity}_seconds_since_last"

    @property
    def group(self) -> str:
        return self.entity

    @property
    def description(self) -> str:
        return f"seconds since the {self.entity}'s previous payment"


Feature = Today | Count | Mismatch | Distinct | Novelty | SinceLast
_KEYED = (Count, Distinct, Novelty, SinceLast)
_WINDOWED = (Count, Distinct, Novelty)


def _span(seconds: float) -> str:
    return f"{seconds / DAY:g}d" if seconds >= DAY else f"{seconds / HOUR:g}h"


def _cap(cap: int) -> str:
    return "" if cap == DISTINCT_CAP else f"_cap{cap}"


class CatalogueError(ValueError):
    """A declaration that cannot be computed; the message names the problem."""


class Catalogue:
    """Features in order; validated when built."""

    def __init__(self, features: Iterable[Feature], retention: float = RETENTION) -> None:
        self.features: tuple[Feature, ...] = tuple(features)
        self.retention = retention
        seen: set[str] = set()
        for f in self.features:
            if f.name in seen:
                raise CatalogueError(f"duplicate feature name {f.name!r}")
            seen.add(f.name)
            if isinstance(f, Today) and f.name not in FEATURE_NAMES:
                raise CatalogueError(f"{f.name!r} is not one of today's features")
            if isinstance(f, _KEYED) and f.entity not in ENTITIES:
                raise CatalogueError(f"{f.name}: unknown entity {f.entity!r}")
            if isinstance(f, Distinct | Novelty):
                if f.of not in ENTITIES:
                    raise CatalogueError(f"{f.name}: unknown entity {f.of!r}")
                if f.of == f.entity:
                    raise CatalogueError(f"{f.name}: an entity is always seen with itself")
                if f.cap < 1:
                    raise CatalogueError(f"{f.name}: cap must be >= 1, got {f.cap}")
            if isinstance(f, _WINDOWED):
                if not f.window > 0:
                    raise CatalogueError(f"{f.name}: window must be > 0, got {f.window}")
                if f.window > retention:
                    raise CatalogueError(f"{f.name}: window {_span(f.window)} is longer "
                                         f"than the retention {_span(retention)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def describe(self) -> dict[str, str]:
        return {f.name: f.description for f in self.features}

    def without(self, group: str) -> Catalogue:
        return Catalogue((f for f in self.features if f.group != group), self.retention)

    def compute(self, payments: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
        """Point-in-time features, one row per payment (same index); row order is arrival
        order."""
        out: dict[str, np.ndarray] = {}
        if any(isinstance(f, Today) for f in self.features):
            # Today's 25 keep their exact semantics by being computed by today's code.
            today = compute_features(payments, labels)
            for f in self.features:
                if isinstance(f, Today):
                    out[f.name] = today[f.name].to_numpy(dtype=float)
        ts = payments["ts"].to_numpy(dtype=float)
        for f in self.features:
            if isinstance(f, Count):
                keys = ENTITIES[f.entity].keys(payments)
                out[f.name] = _count(keys, ts, f.window, f.include_self)
            elif isinstance(f, Mismatch):
                out[f.name] = _mismatch(payments, f.left, f.right)
            elif isinstance(f, SinceLast):
                out[f.name] = _since_last(ENTITIES[f.entity].keys(payments), ts,
                                          self.retention)
        # Distinct and Novelty read one kept set per (entity, of, cap): one pass each.
        sets: dict[tuple[str, str, int], list[Distinct | Novelty]] = {}
        for f in self.features:
            if isinstance(f, Distinct | Novelty):
                sets.setdefault((f.entity, f.of, f.cap), []).append(f)
        for (entity, of, cap), fs in sets.items():
            windows = sorted({f.window for f in fs if isinstance(f, Distinct)})
            counts, before = _kept_keys(ENTITIES[entity].keys(payments),
                                        ENTITIES[of].keys(payments), ts, cap, windows)
            for f in fs:
                if isinstance(f, Distinct):
                    out[f.name] = counts[windows.index(f.window)]
                else:
                    out[f.name] = _novel(before, ts, f.window)
        return pd.DataFrame({n: out[n] for n in self.names}, index=payments.index)


def _count(keys: pd.Series, ts: np.ndarray, window: float, include_self: bool) -> np.ndarray:
    """Earlier arrivals of the same key with ts in (t - window, t], vectorised: rows sorted
    by key then arrival, a window's count is a difference of positions found by binary
    search; keys whose timestamps do not rise with arrival are fixed by a loop (rare)."""
    n = len(ts)
    codes, _ = pd.factorize(keys, use_na_sentinel=True)
    result = np.full(n, np.nan)
    has = codes >= 0
    idx = np.flatnonzero(has)
    if len(idx) == 0:
        return result
    c, t = codes[idx].astype(np.int64), ts[idx]
    order = np.lexsort((np.arange(len(idx)), c))
    cs, tsr = c[order], t[order]
    m = len(cs)
    first = np.r_[True, cs[1:] != cs[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(m), 0))
    events = _Events(cs, tsr)
    pos = np.arange(m)
    counts = (pos - (start + events.at_or_before(cs, tsr - window))).astype(float)
    late = np.r_[False, (tsr[1:] < tsr[:-1]) & ~first[1:]]
    for key in np.unique(cs[late]):
        rows = np.flatnonzero(cs == key)
        for k, i in enumerate(rows):
            tb = tsr[rows[:k]]
            counts[i] = float(((tb > tsr[i] - window) & (tb <= tsr[i])).sum())
    if include_self:
        counts += 1.0
    back = np.empty(m)
    back[order] = counts
    result[idx] = back
    return result


def _since_last(keys: pd.Series, ts: np.ndarray, retention: float) -> np.ndarray:
    codes, _ = pd.factorize(keys, use_na_sentinel=True)
    result = np.full(len(ts), np.nan)
    has = codes >= 0
    if not has.any():
        return result
    frame = pd.DataFrame({"k": codes[has], "t": ts[has]})
    latest = frame.groupby("k")["t"].cummax()
    previous = latest.groupby(frame["k"]).shift(1).to_numpy()
    gap = frame["t"].to_numpy() - previous
    result[has] = np.where(gap > retention, np.nan, np.maximum(gap, 0.0))
    return result


def _kept_keys(keys: pd.Series, others: pd.Series, ts: np.ndarray, cap: int,
               windows: list[float]) -> tuple[list[np.ndarray], np.ndarray]:
    """Per payment, in arrival order: the entity's kept ``of`` keys counted per window
    after this payment, and the latest timestamp its own ``of`` key had before it (-inf
    if none, NaN without both keys). Kept as ``Distinct`` says: latest timestamp per key,
    the ``cap`` latest."""
    n = len(ts)
    counts = [np.full(n, np.nan) for _ in windows]
    before = np.full(n, np.nan)
    latest: dict[Any, dict[Any, float]] = {}
    ranked: dict[Any, list[tuple[float, str]]] = {}
    score = itemgetter(0)
    for i, (key, other, t) in enumerate(zip(keys.tolist(), others.tolist(), ts.tolist(),
                                            strict=True)):
        if key is None or key != key:  # missing (None or NaN)
            continue
        seen = latest.setdefault(key, {})
        order = ranked.setdefault(key, [])
        if not (other is None or other != other):
            member = str(other)
            old = seen.get(member)
            before[i] = -np.inf if old is None else old
            if old is None or t > old:
                if old is not None:
                    del order[bisect_left(order, (old, member))]
                insort(order, (t, member))
                seen[member] = t
                while len(order) > cap:
                    del seen[order.pop(0)[1]]
        hi = bisect_right(order, t, key=score)
        for w, out in zip(windows, counts, strict=True):
            out[i] = hi - bisect_right(order, t - w, key=score)
    return counts, before


def _novel(before: np.ndarray, ts: np.ndarray, window: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(before), np.nan, (before <= ts - window).astype(float))


def _mismatch(payments: pd.DataFrame, left: str, right: str) -> np.ndarray:
    n = len(payments)
    if left not in payments.columns or right not in payments.columns:
        return np.full(n, np.nan)
    a, b = payments[left], payments[right]
    missing = (a.isna() | b.isna()).to_numpy()
    differs = (a.astype(object) != b.astype(object)).to_numpy(dtype=float)
    return np.where(missing, np.nan, differs)


def _today_group(name: str) -> str:
    return name.split("_", 1)[0] if name.startswith(("card_", "terminal_")) else "payment"


TODAY = Catalogue(Today(n, _today_group(n), FEATURE_DESCRIPTIONS[n]) for n in FEATURE_NAMES)

CNP_WINDOWS = (HOUR, DAY, 7 * DAY)
DEFAULT = Catalogue((
    *TODAY.features,
    *(Count(e, w) for e in ("device", "ip", "ip_prefix", "email", "customer")
      for w in CNP_WINDOWS),
    Mismatch("shipping_billing_country_differ", "shipping_country", "billing_country"),
    # links: many cards behind one device, address, network or e-mail
    *(Distinct(e, "card", w) for e in ("device", "ip", "ip_prefix", "email")
      for w in CNP_WINDOWS),
    *(Distinct("customer", o, w) for o in ("device", "email", "card")
      for w in (7 * DAY, 30 * DAY)),
    # novelty: what a takeover changes first
    *(Novelty(e, o, 30 * DAY) for e, o in (("customer", "device"), ("customer", "email"),
                                           ("card", "device"), ("card", "ip_prefix"))),
    SinceLast("customer"), SinceLast("device"),
))
