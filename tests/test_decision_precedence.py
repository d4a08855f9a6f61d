"""The decision precedence of ``model.policy``, one row per pair of competing sources.

Strongest first: a block-list hit, an allow-list hit, the confirmed-fraud card option of
the settings and rules raising to review/decline (never lowering), approve rules (which
undo neither a raising rule nor the confirmed-fraud option), the model's decision. Pure:
no Redis, the list hits are given as the store would return them."""

from __future__ import annotations

from typing import Literal

import pytest

from model.policy import Policy, Rule, RuleSet
from model.schemas import Decision

KnownFraud = Literal["none", "review", "decline"]
Hit = tuple[str, str, str]

# A card with a fraud confirmed in the last 30 days, and one without; the amount is what
# the rules below test.
KNOWN = {"card_fraud_known_30d": 1.0, "amount": 20.0}
CLEAN = {"card_fraud_known_30d": 0.0, "amount": 20.0}

SMALL_APPROVE = Rule(id="small", action="approve",
                     when=[{"feature": "amount", "op": "<", "value": 50}])
SMALL_REVIEW = Rule(id="small_review", action="review",
                    when=[{"feature": "amount", "op": "<", "value": 50}])
SMALL_DECLINE = Rule(id="small_decline", action="decline",
                     when=[{"feature": "amount", "op": "<", "value": 50}])
# Holds for no payment above: in the rule set, never matched, never a reason.
LARGE_DECLINE = Rule(id="large", action="decline",
                     when=[{"feature": "amount", "op": ">", "value": 1000}])

BLOCK_CARD: Hit = ("block", "card_id", "c1")
BLOCK_COUNTRY: Hit = ("block", "country", "XX")
ALLOW_CARD: Hit = ("allow", "card_id", "c1")
ALLOW_TERMINAL: Hit = ("allow", "terminal_id", "t1")

# id, model decision, features, list hits, known-fraud action, rules,
# expected decision, expected reason codes (in order)
CASES: list[tuple[str, Decision, dict[str, float] | None, tuple[Hit, ...], KnownFraud,
                  tuple[Rule, ...], Decision, list[str]]] = [
    # the model alone
    ("model alone approve", "approve", CLEAN, (), "none", (), "approve", []),
    ("model alone decline", "decline", CLEAN, (), "none", (LARGE_DECLINE,), "decline", []),
    # block list against every weaker source
    ("block over allow", "approve", CLEAN, (ALLOW_CARD, BLOCK_COUNTRY), "none", (),
     "decline", ["blocklist_country"]),
    ("block over approve rule", "approve", CLEAN, (BLOCK_CARD,), "none", (SMALL_APPROVE,),
     "decline", ["blocklist_card_id"]),
    ("block over model approve", "approve", CLEAN, (BLOCK_CARD,), "none", (), "decline",
     ["blocklist_card_id"]),
    ("every block hit is a reason", "approve", CLEAN, (BLOCK_CARD, BLOCK_COUNTRY), "none",
     (), "decline", ["blocklist_card_id", "blocklist_country"]),
    ("block without features", "approve", None, (BLOCK_CARD,), "none", (), "decline",
     ["blocklist_card_id"]),
    # allow list against what comes after it
    ("allow over confirmed fraud", "approve", KNOWN, (ALLOW_CARD,), "decline", (),
     "approve", ["allowlist_card_id"]),
    ("allow over decline rule", "approve", CLEAN, (ALLOW_TERMINAL,), "none",
     (SMALL_DECLINE,), "approve", ["allowlist_terminal_id"]),
    ("allow over model decline", "decline", CLEAN, (ALLOW_CARD,), "none", (), "approve",
     ["allowlist_card_id"]),
    ("allow without features", "review", None, (ALLOW_CARD,), "none", (), "approve",
     ["allowlist_card_id"]),
    # without features (degraded) no rule applies: the model's (degraded) decision stands
    ("no features, no rules", "review", None, (), "decline", (SMALL_DECLINE,), "review", []),
    # the confirmed-fraud card option
    ("confirmed fraud off by default", "approve", KNOWN, (), "none", (), "approve", []),
    ("confirmed fraud review over model approve", "approve", KNOWN, (), "review", (),
     "review", ["card_fraud_known"]),
    ("confirmed fraud decline over model approve", "approve", KNOWN, (), "decline", (),
     "decline", ["card_fraud_known"]),
    ("confirmed fraud never lowers the model", "decline", KNOWN, (), "review", (),
     "decline", ["card_fraud_known"]),
    ("confirmed fraud option on a clean card", "approve", CLEAN, (), "decline", (),
     "approve", []),
    ("approve rule does not undo confirmed fraud", "approve", KNOWN, (), "review",
     (SMALL_APPROVE,), "review", ["card_fraud_known", "rule_small"]),
    ("approve rule does not undo the model under confirmed fraud", "decline", KNOWN, (),
     "review", (SMALL_APPROVE,), "decline", ["card_fraud_known", "rule_small"]),
    ("approve rule applies when the option is off", "decline", KNOWN, (), "none",
     (SMALL_APPROVE,), "approve", ["rule_small"]),
    ("decline rule over confirmed fraud review", "approve", KNOWN, (), "review",
     (SMALL_DECLINE,), "decline", ["card_fraud_known", "rule_small_decline"]),
    ("review rule under confirmed fraud decline", "approve", KNOWN, (), "decline",
     (SMALL_REVIEW,), "decline", ["card_fraud_known", "rule_small_review"]),
    # raising rules against the model and against each other
    ("review rule over model approve", "approve", CLEAN, (), "none", (SMALL_REVIEW,),
     "review", ["rule_small_review"]),
    ("review rule never lowers model decline", "decline", CLEAN, (), "none",
     (SMALL_REVIEW,), "decline", ["rule_small_review"]),
    ("decline rule over review rule", "approve", CLEAN, (), "none",
     (SMALL_REVIEW, SMALL_DECLINE), "decline", ["rule_small_review", "rule_small_decline"]),
    # approve rules against raising rules and the model
    ("raising rule over approve rule", "approve", CLEAN, (), "none",
     (SMALL_APPROVE, SMALL_REVIEW), "review", ["rule_small", "rule_small_review"]),
    ("approve rule over model review", "review", CLEAN, (), "none", (SMALL_APPROVE,),
     "approve", ["rule_small"]),
    ("approve rule over model decline", "decline", CLEAN, (), "none", (SMALL_APPROVE,),
     "approve", ["rule_small"]),
    ("an unmatched rule changes nothing", "review", CLEAN, (), "none", (LARGE_DECLINE,),
     "review", []),
]


@pytest.mark.parametrize(
    ("model", "features", "hits", "known_fraud", "rules", "decision", "codes"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_decision_precedence(model: Decision, features: dict[str, float] | None,
                             hits: tuple[Hit, ...], known_fraud: KnownFraud,
                             rules: tuple[Rule, ...], decision: Decision,
                             codes: list[str]) -> None:
    policy = Policy(RuleSet(rules=list(rules)), version=1)
    got, reasons = policy.apply(model, features, hits, known_fraud)
    assert (got, [r["code"] for r in reasons]) == (decision, codes)
    assert all(isinstance(r["detail"], str) and r["detail"] for r in reasons)


def test_a_card_with_confirmed_fraud_is_reviewed_or_declined_when_configured() -> None:
    p = Policy(RuleSet(rules=[]), version=1)
    assert p.apply("approve", KNOWN, ())[0] == "approve"  # off by default
    decision, reasons = p.apply("approve", KNOWN, (), "review")
    assert decision == "review" and reasons[0]["code"] == "card_fraud_known"
    assert p.apply("approve", KNOWN, (), "decline")[0] == "decline"
    assert p.apply("decline", KNOWN, (), "review")[0] == "decline"  # never lowers
    assert p.apply("approve", CLEAN, (), "decline") == ("approve", [])


def test_lists_come_before_the_confirmed_fraud_option_and_approve_rules_do_not_undo_it(
) -> None:
    p = Policy(RuleSet(rules=[SMALL_APPROVE]), version=1)
    assert p.apply("approve", KNOWN, (("allow", "card_id", "c1"),), "decline")[0] == "approve"
    decision, reasons = p.apply("approve", KNOWN, (), "review")
    assert decision == "review" and [r["code"] for r in reasons] == ["card_fraud_known",
                                                                     "rule_small"]
    assert p.apply("review", CLEAN, ())[0] == "approve"  # the approve rule alone still works
