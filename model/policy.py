"""Allow/block lists and rules: the fraud team's overrides of the model's decision.

Precedence, strongest first:

1. a block-list hit on any entity of the payment -> decline
2. an allow-list hit -> approve
3. rules whose conditions all hold: ``decline`` or ``review`` raise the decision to at least
   that; ``approve`` forces approve when no raising rule matched
4. the model's decision

This module is the semantics only: what a rule set is and how it decides. Where lists and
rules are kept (Redis), how a list is looked up inside the scoring round trip, and the
audit trail of every change are ``stores.policy_store``.
"""

from __future__ import annotations

import operator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.features import FEATURE_NAMES
from model.schemas import Decision, refuse_pan

ListKind = Literal["allow", "block"]
KNOWN_FRAUD_FEATURE = "card_fraud_known_30d"
LIST_ENTITIES = ("card_id", "terminal_id", "country", "merchant_category", "currency",
                 "channel")
# The payment's values of LIST_ENTITIES travel in one argument, joined by this.
LIST_SEP = "\x1f"
KINDS = ("block", "allow")
def list_values(payment: Any) -> str:
    return LIST_SEP.join("" if (v := getattr(payment, e)) is None else str(v)
                         for e in LIST_ENTITIES)


SEVERITY = {"approve": 0, "review": 1, "decline": 2}
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
       "==": operator.eq, "!=": operator.ne}


class Condition(BaseModel):
    # A NaN compares false with everything: a rule holding one would never fire, and the
    # rule set could not be written back as JSON.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
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
    description: str = Field(default="", max_length=2000)

    @field_validator("description")
    @classmethod
    def _no_pan(cls, v: str) -> str:
        refuse_pan(v, "description")
        return v


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
