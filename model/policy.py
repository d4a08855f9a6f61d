"""Allow/block lists and rules: the fraud team's overrides of the model's decision.

Precedence, strongest first:

1. a block-list hit on any entity of the payment -> decline
2. an allow-list hit -> approve
3. rules whose conditions all hold: ``decline`` or ``review`` raise the decision to at least
   that; ``approve`` forces approve when no raising rule matched
4. the model's decision

Lists live in Redis sets (``list_key``) and are looked up in the scoring
round trip itself, so a list change applies to the very next payment on every worker.
Rules are a small JSON document in Redis with a version number; each API worker reloads
them when the version changes. Every change is appended to an audit stream.
"""

from __future__ import annotations

import operator
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.asyncio import Redis

from model.features import FEATURE_NAMES
from model.redis_mux import Mux
from model.schemas import Decision

ListKind = Literal["allow", "block"]
KNOWN_FRAUD_FEATURE = "card_fraud_known_30d"
LIST_ENTITIES = ("card_id", "terminal_id", "country", "merchant_category", "currency",
                 "channel")
# The payment's values of LIST_ENTITIES travel in one argument, joined by this.
LIST_SEP = "\x1f"
KINDS = ("block", "allow")
# Every key of the policy shares the hash tag {policy}: on a Redis Cluster the rules, the
# lists and their audit live in one slot, so the lookup below is one script.


def list_key(kind: str, entity: str) -> str:
    """Redis set of the values of ``entity`` (card_id, country...) on the allow/block list."""
    return f"fs:{{policy}}:list:{kind}:{entity}"


LIST_KEYS = [list_key(kind, entity) for entity in LIST_ENTITIES for kind in KINDS]

# KEYS: LIST_KEYS; ARGV[1]: the payment's values of LIST_ENTITIES (``list_values``). The
# hits come back as 'kind|entity' strings.
LIST_LOOKUP_LUA = (
    "local hits = {}\n"
    "local entities = {" + ", ".join(f"'{e}'" for e in LIST_ENTITIES) + "}\n"
    "local kinds = {" + ", ".join(f"'{k}'" for k in KINDS) + "}\n"
    "local i = 0\n"
    "for value in string.gmatch(ARGV[1] .. '" + LIST_SEP + "', '([^" + LIST_SEP
    + "]*)" + LIST_SEP + "') do\n"
    "  i = i + 1\n"
    "  if value ~= '' then\n"
    "    for k, kind in ipairs(kinds) do\n"
    "      if redis.call('SISMEMBER', KEYS[(i - 1) * #kinds + k], value) == 1 then\n"
    "        hits[#hits + 1] = kind .. '|' .. entities[i]\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return hits\n"
)


def list_values(payment: Any) -> str:
    return LIST_SEP.join("" if (v := getattr(payment, e)) is None else str(v)
                         for e in LIST_ENTITIES)


RULES_KEY = "fs:{policy}:rules"
AUDIT_KEY = "fs:{policy}:audit"
SEVERITY = {"approve": 0, "review": 1, "decline": 2}
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
       "==": operator.eq, "!=": operator.ne}


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    feature: str = Field(description=f"one of the model features: {', '.join(FEATURE_NAMES)}")
    op: Literal[">", ">=", "<", "<=", "==", "!="]
    value: float

    @field_validator("feature")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in FEATURE_NAMES:
            raise ValueError(f"unknown feature {v!r}; known: {', '.join(FEATURE_NAMES)}")
        return v

    def holds(self, features: dict[str, float]) -> bool:
        return bool(OPS[self.op](features[self.feature], self.value))


class Rule(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{
            "id": "card_burst", "when": [{"feature": "card_count_1h", "op": ">=", "value": 8}],
            "action": "review", "description": "many payments on one card within an hour"}]},
    )
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    when: list[Condition] = Field(min_length=1)
    action: Decision
    description: str = ""


class RuleSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: list[Rule] = []

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[Rule]) -> list[Rule]:
        ids = [r.id for r in rules]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"duplicate rule ids: {sorted(dup)}")
        return rules


class Policy:
    """A versioned rule set, applied after the model."""

    def __init__(self, rules: RuleSet, version: int) -> None:
        self.rules = rules
        self.version = version

    def apply(
        self,
        decision: Decision,
        features: dict[str, float] | None,
        list_hits: tuple[tuple[str, str, str], ...],
        known_fraud_card_action: Literal["none", "review", "decline"] = "none",
    ) -> tuple[Decision, list[dict[str, Any]]]:
        blocked = [h for h in list_hits if h[0] == "block"]
        if blocked:
            return "decline", [_list_reason(h) for h in blocked]
        allowed = [h for h in list_hits if h[0] == "allow"]
        if allowed:
            return "approve", [_list_reason(h) for h in allowed]
        if not features:
            return decision, []
        reasons: list[dict[str, Any]] = []
        if known_fraud_card_action != "none" and features.get(KNOWN_FRAUD_FEATURE, 0.0) > 0:
            reasons.append({"code": "card_fraud_known",
                            "detail": f"a fraud on this card was confirmed in the last 30 days "
                                      f"({known_fraud_card_action} by configuration)"})
            if SEVERITY[known_fraud_card_action] > SEVERITY[decision]:
                decision = known_fraud_card_action
        matched = [r for r in self.rules.rules if all(c.holds(features) for c in r.when)]
        reasons += [{"code": f"rule_{r.id}", "detail": f"rule {r.id} ({r.action}): "
                     f"{r.description or _describe(r)}"} for r in matched]
        raising = [r for r in matched if r.action != "approve"]
        if raising:
            worst = max((r.action for r in raising), key=SEVERITY.__getitem__)
            if SEVERITY[worst] > SEVERITY[decision]:
                decision = worst
        elif matched and not (reasons and reasons[0]["code"] == "card_fraud_known"):
            decision = "approve"
        return decision, reasons


def _describe(rule: Rule) -> str:
    return " and ".join(f"{c.feature} {c.op} {c.value:g}" for c in rule.when)


def _list_reason(hit: tuple[str, str, str]) -> dict[str, Any]:
    kind, entity, _ = hit
    return {"code": f"{kind}list_{entity}", "detail": f"{entity} is on the {kind} list"}


class PolicyStore:
    """Rules and lists in Redis, with an audit trail of every change."""

    def __init__(self, redis: Redis, mux: Mux | None = None) -> None:
        self.redis = redis
        # The API polls the version through its own pipelined connection (see
        # ``model.redis_mux``): a call there ends cleanly when its task is cancelled, which
        # redis-py's cluster client, polled twice a second, once failed to do at shutdown.
        self.mux = mux

    async def load(self) -> Policy:
        raw = await self.redis.hgetall(RULES_KEY)
        if not raw:
            return Policy(RuleSet(), 0)
        return Policy(RuleSet.model_validate_json(raw[b"rules"]), int(raw[b"version"]))

    async def version(self) -> int:
        if self.mux is not None:
            v = await self.mux.execute("HGET", RULES_KEY, "version")
        else:
            v = await self.redis.hget(RULES_KEY, "version")
        return int(v) if v else 0

    async def save(self, rules: RuleSet, actor: str) -> int:
        """Replace the rule set; returns its new version."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(RULES_KEY, "version", 1)
            pipe.hset(RULES_KEY, "rules", rules.model_dump_json())
            version = (await pipe.execute())[0]
        await self._audit("rules", actor, {"version": version, "rules": len(rules.rules)})
        return int(version)

    async def set_listed(self, kind: ListKind, entity: str, value: str, listed: bool,
                         actor: str, reason: str = "") -> bool:
        key = list_key(kind, entity)
        changed = await (self.redis.sadd(key, value) if listed else self.redis.srem(key, value))
        await self._audit("list", actor, {"kind": kind, "entity": entity,
                                          "action": "add" if listed else "remove",
                                          "reason": reason, "changed": bool(changed)})
        return bool(changed)

    async def members(self, kind: ListKind, entity: str) -> list[str]:
        return sorted(v.decode() for v in await self.redis.smembers(list_key(kind, entity)))

    async def audit(self, count: int = 100) -> list[dict[str, Any]]:
        entries = await self.redis.xrevrange(AUDIT_KEY, count=count)
        return [{"id": i.decode(), **orjson.loads(f[b"entry"])} for i, f in entries]

    async def _audit(self, what: str, actor: str, detail: dict[str, Any]) -> None:
        # List values are left out of the audit: a card token is enough to find it again,
        # and the trail should not become a second copy of the lists.
        entry = {"what": what, "actor": actor, "at": datetime.now(UTC).isoformat(), **detail}
        await self.redis.xadd(AUDIT_KEY, {"entry": orjson.dumps(entry)}, maxlen=10_000)
