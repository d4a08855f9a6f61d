"""Where the fraud team's lists and rules live: Redis, with an audit of every change.

Lists are Redis sets (``list_key``), looked up inside the scoring round trip itself
(``LIST_LOOKUP_LUA``), so a list change applies to the very next payment on every worker.
Rules are a small JSON document with a version number; each API worker reloads them when
the version changes. What a rule set means is ``model.policy``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import orjson

from model.policy import KINDS, LIST_ENTITIES, LIST_SEP, ListKind, Policy, RuleSet
from stores.redis_client import RedisClient
from stores.redis_mux import pairs

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


RULES_KEY = "fs:{policy}:rules"
AUDIT_KEY = "fs:{policy}:audit"

# KEYS: the rules, the audit. ARGV: the rule set's document, the audit entry (JSON, given
# its version here). The new version, the rules and their audit entry at once.
_SAVE_RULES = b"""
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'rules', ARGV[1])
local entry = cjson.decode(ARGV[2])
entry['version'] = version
redis.call('XADD', KEYS[2], '*', 'entry', cjson.encode(entry))
return version
"""


class PolicyStore:
    """Rules and lists in Redis, with an audit trail of every change. The API's reads
    (the version, polled twice a second, and the rules when it changes) go through the
    pipelined connection: a call there ends cleanly when its task is cancelled, which
    redis-py's cluster client once failed to do at shutdown. Changes and the audit go
    through redis-py (a transaction, a stream)."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    async def load(self) -> Policy:
        raw = pairs(await self.redis.command("HGETALL", RULES_KEY))
        if not raw:
            return Policy(RuleSet(), 0)
        return Policy(RuleSet.model_validate_json(raw[b"rules"]), int(raw[b"version"]))

    async def version(self) -> int:
        v = await self.redis.command("HGET", RULES_KEY, "version")
        return int(v) if v else 0

    async def save(self, rules: RuleSet, actor: str) -> int:
        """Replace the rule set; returns its new version. The document is read back as
        every API process will load it before anything is written (``ValueError`` if it
        does not load as the same rules), and the rules, their version and the audit
        entry are written by one script: a failed save changes nothing."""
        document = rules.model_dump_json(exclude_none=True)
        try:
            loaded = RuleSet.model_validate_json(document)
        except ValueError as exc:
            raise ValueError(f"the rule set does not load back: {exc}") from exc
        if loaded != rules:
            raise ValueError("the rule set does not load back as the same rules")
        entry = self._entry("rules", actor, {"rules": len(rules.rules)})
        version = await self.redis.script(_SAVE_RULES, [RULES_KEY, AUDIT_KEY],
                                          [document, orjson.dumps(entry)])
        return int(version)

    async def set_listed(self, kind: ListKind, entity: str, value: str, listed: bool,
                         actor: str, reason: str = "") -> bool:
        key = list_key(kind, entity)
        changed = await self.redis.command("SADD" if listed else "SREM", key, value)
        await self._audit("list", actor, {"kind": kind, "entity": entity,
                                          "action": "add" if listed else "remove",
                                          "reason": reason, "changed": bool(changed)})
        return bool(changed)

    async def members(self, kind: ListKind, entity: str) -> list[str]:
        return sorted(v.decode() for v in await self.redis.command(
            "SMEMBERS", list_key(kind, entity)))

    async def audit(self, count: int = 100) -> list[dict[str, Any]]:
        # The admin client answers bytes (made without decode_responses); redis-py's types
        # allow str and None too.
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                       await self.redis.admin.xrevrange(AUDIT_KEY, count=count))
        return [{"id": i.decode(), **orjson.loads(f[b"entry"])} for i, f in entries]

    @staticmethod
    def _entry(what: str, actor: str, detail: dict[str, Any]) -> dict[str, Any]:
        return {"what": what, "actor": actor, "at": datetime.now(UTC).isoformat(), **detail}

    async def _audit(self, what: str, actor: str, detail: dict[str, Any]) -> None:
        # List values are left out of the audit: a card token is enough to find it again,
        # and the trail should not become a second copy of the lists. Nothing trims it:
        # no amount of activity flushes who changed what.
        await self.redis.admin.xadd(AUDIT_KEY, {"entry": orjson.dumps(
            self._entry(what, actor, detail))})
