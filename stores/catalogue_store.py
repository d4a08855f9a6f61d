"""The catalogue's entries served from Redis, derived from their declarations.

``model.catalogue`` declares each feature once; this store turns a catalogue into one call
per entity key of a payment to a single generic script (``lua/catalogue_entity.lua``):
the entity's payments (for counts and the time since its previous payment) and one kept
set per other entity it is linked to (for distinct counts and novelty), every key tagged
with the entity's key so that each entity's work runs in its own slot. A payment's calls
go out together, in one write per node. The script's reply is a list of values in the
order this module's plan names them, so nothing here unpacks a reply by hand.

Today's 25 features stay with ``stores.online_features``; payment-level entries (a
mismatch between two of the payment's fields) need no state and are computed here.

Exact as the backfill (``Catalogue.compute``) for payments arriving at most
``LATE_MARGIN`` after later-stamped ones: state older than the retention plus that margin
is dropped, which no window of such a payment can see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from model.catalogue import (
    ENTITIES,
    Catalogue,
    Count,
    Distinct,
    Mismatch,
    Novelty,
    SinceLast,
)
from model.features import DAY
from stores.redis_client import RedisClient
from stores.redis_mux import Arg, Step

ENTITY_SCRIPT = files("stores").joinpath("lua/catalogue_entity.lua").read_bytes()
# How late a payment may arrive (after payments stamped later) and still see exactly what
# the backfill sees.
LATE_MARGIN = DAY


def _exact(x: float) -> str:
    return format(float(x), ".17g")


@dataclass(frozen=True, slots=True)
class _Linked:
    """One kept set of an entity: the other entity, its cap, what reads it."""

    of: str
    cap: int
    distinct: tuple[Distinct, ...]
    novel: tuple[Novelty, ...]


@dataclass(frozen=True, slots=True)
class EntityPlan:
    """What one entity's script call computes, and the names of its reply, in order."""

    entity: str
    counts: tuple[Count, ...]
    since: SinceLast | None
    linked: tuple[_Linked, ...]

    @property
    def names(self) -> tuple[str, ...]:
        linked: list[str] = []
        for k in self.linked:  # the script's order: each set's distinct counts, novelty
            linked += [f.name for f in k.distinct] + [f.name for f in k.novel]
        return (*((self.since.name,) if self.since else ()), *(c.name for c in self.counts),
                *linked)

    def keys(self, key: str, prefix: str = "fs:cat") -> list[Arg]:
        tag = f"{prefix}:{{{self.entity}:{key}}}"
        return [f"{tag}:pay", *(f"{tag}:{k.of}" for k in self.linked)]

    def args(self, payment: Mapping[str, Any], retention: float, ttl_ms: int) -> list[Arg]:
        t = float(payment["ts"])
        args: list[Arg] = [str(payment["payment_id"]), _exact(t),
                           _exact(t - retention - LATE_MARGIN), ttl_ms, len(self.counts),
                           *(_exact(c.window) for c in self.counts),
                           1 if self.since else 0, _exact(retention)]
        for k in self.linked:
            member = ENTITIES[k.of].key_of(payment)
            args += [member or "", k.cap, len(k.distinct),
                     *(_exact(f.window) for f in k.distinct), len(k.novel),
                     *(_exact(f.window) for f in k.novel)]
        return args


def plans(catalogue: Catalogue) -> tuple[EntityPlan, ...]:
    """One plan per entity the catalogue keys a stateful feature by."""
    by_entity: dict[str, list[Count | SinceLast | Distinct | Novelty]] = {}
    for f in catalogue.features:
        if isinstance(f, Count | SinceLast | Distinct | Novelty):
            by_entity.setdefault(f.entity, []).append(f)
    out = []
    for entity, fs in by_entity.items():
        sets: dict[tuple[str, int], list[Distinct | Novelty]] = {}
        for f in fs:
            if isinstance(f, Distinct | Novelty):
                sets.setdefault((f.of, f.cap), []).append(f)
        since = [f for f in fs if isinstance(f, SinceLast)]
        out.append(EntityPlan(
            entity, tuple(f for f in fs if isinstance(f, Count)), since[0] if since else None,
            tuple(_Linked(of, cap, tuple(f for f in g if isinstance(f, Distinct)),
                          tuple(f for f in g if isinstance(f, Novelty)))
                  for (of, cap), g in sets.items())))
    return tuple(out)


def _value(raw: bytes | str) -> float:
    text = raw.decode() if isinstance(raw, bytes) else raw
    return float(text) if text else float("nan")


@dataclass(frozen=True, slots=True)
class Observed:
    """One payment's calls, and how their replies become its features."""

    calls: list[Step]
    plans: tuple[EntityPlan, ...]
    fixed: dict[str, float]  # the features no call reads: missing keys, mismatches
    store: CatalogueStore

    def features(self, replies: Sequence[Any]) -> dict[str, float]:
        """``replies``: those of ``calls``, in order."""
        return self.store.decode(self.plans, replies, self.fixed)


class CatalogueStore:
    """A catalogue's stateful entries in Redis: each payment observed once, in arrival
    order, reads its features and records itself in one step per entity."""

    def __init__(self, redis: RedisClient, catalogue: Catalogue, prefix: str = "fs:cat",
                 ttl: float | None = None) -> None:
        """``prefix`` and ``ttl`` (seconds; by default the retention plus the margin): a
        check's own keys, apart from the served ones and soon gone."""
        self.redis = redis
        self.catalogue = catalogue
        self.prefix = prefix
        self.ttl_ms = int((catalogue.retention + LATE_MARGIN if ttl is None else ttl) * 1000)
        self.plans = plans(catalogue)
        self.mismatches = tuple(f for f in catalogue.features if isinstance(f, Mismatch))
        self._include_self = {f.name: f.include_self for f in catalogue.features
                              if isinstance(f, Count)}
        # The payment fields the calls read: entity keys and the mismatches' two sides.
        self.columns = frozenset(
            {ENTITIES[e].column for p in self.plans
             for e in (p.entity, *(k.of for k in p.linked))}
            | {c for f in self.mismatches for c in (f.left, f.right)})

    async def observe(self, payment: Mapping[str, Any]) -> dict[str, float]:
        """The catalogue's features (today's 25 aside) for one payment: a history row or
        a payment's fields with ``ts`` in epoch seconds."""
        return (await self.observe_many([payment]))[0]

    def steps(self, payment: Mapping[str, Any]) -> Observed:
        """One payment's script calls, for a write of its own or to join the steps of
        another store's (the hook's one write per payment)."""
        calls: list[Step] = []
        plans: list[EntityPlan] = []
        missing: list[str] = []
        for plan in self.plans:
            key = ENTITIES[plan.entity].key_of(payment)
            if key is None:
                missing += plan.names
                continue
            calls.append((ENTITY_SCRIPT, plan.keys(key, self.prefix),
                          plan.args(payment, self.catalogue.retention, self.ttl_ms)))
            plans.append(plan)
        fixed = dict.fromkeys(missing, float("nan"))
        for f in self.mismatches:
            fixed[f.name] = f.value(payment)
        return Observed(calls, tuple(plans), fixed, self)

    async def observe_many(self, payments: Sequence[Mapping[str, Any]]
                           ) -> list[dict[str, float]]:
        """Several payments in one write per node, observed in the order given (each
        entity key's calls run in order on its node)."""
        observed = [self.steps(p) for p in payments]
        replies = await self.redis.run([c for o in observed for c in o.calls])
        out, at = [], 0
        for o in observed:
            out.append(o.features(replies[at:at + len(o.calls)]))
            at += len(o.calls)
        return out

    def decode(self, plans: Sequence[EntityPlan], replies: Sequence[Any],
               fixed: Mapping[str, float]) -> dict[str, float]:
        row = dict(fixed)
        for plan, reply in zip(plans, replies, strict=True):
            for name, raw in zip(plan.names, reply, strict=True):
                value = _value(raw)
                if not self._include_self.get(name, True):
                    value -= 1.0
                row[name] = value
        return {n: row[n] for n in self.names}

    @property
    def names(self) -> tuple[str, ...]:
        """The features this store serves, in the catalogue's order."""
        return tuple(f.name for f in self.catalogue.features
                     if isinstance(f, Count | SinceLast | Distinct | Novelty | Mismatch))
