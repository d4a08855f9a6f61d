"""The policy applied after the model: lists, rules, and the confirmed-fraud card option."""

from model.policy import Policy, Rule, RuleSet

KNOWN = {"card_fraud_known_30d": 1.0, "amount": 20.0}
CLEAN = {"card_fraud_known_30d": 0.0, "amount": 20.0}


def policy(*rules: Rule) -> Policy:
    return Policy(RuleSet(rules=list(rules)), version=1)


def test_a_card_with_confirmed_fraud_is_reviewed_or_declined_when_configured():
    p = policy()
    assert p.apply("approve", KNOWN, ())[0] == "approve"  # off by default
    decision, reasons = p.apply("approve", KNOWN, (), "review")
    assert decision == "review" and reasons[0]["code"] == "card_fraud_known"
    assert p.apply("approve", KNOWN, (), "decline")[0] == "decline"
    assert p.apply("decline", KNOWN, (), "review")[0] == "decline"  # never lowers
    assert p.apply("approve", CLEAN, (), "decline") == ("approve", [])


def test_lists_come_before_the_confirmed_fraud_option_and_approve_rules_do_not_undo_it():
    p = policy(Rule(id="small", action="approve",
                    when=[{"feature": "amount", "op": "<", "value": 50}]))
    assert p.apply("approve", KNOWN, (("allow", "card_id", "c1"),), "decline")[0] == "approve"
    decision, reasons = p.apply("approve", KNOWN, (), "review")
    assert decision == "review" and [r["code"] for r in reasons] == ["card_fraud_known",
                                                                     "rule_small"]
    assert p.apply("review", CLEAN, ())[0] == "approve"  # the approve rule alone still works
