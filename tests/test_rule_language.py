"""The rules analysts write (``model.policy``): groups, operators, the payment's fields and
the model's score, comparisons between two fields, priorities, missing values, and errors
that name the rule and the condition. Pure: no Redis."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from model.policy import Policy, RuleSet

FEATURES = {"card_count_1h": 3.0, "amount": 620.0, "card_new_device_30d": 1.0,
            "terminal_risk_7d": float("nan")}


def pay(**kw: Any) -> SimpleNamespace:
    fields = {"amount": 620.0, "currency": "EUR", "country": "FR", "channel": "ecom",
              "merchant_category": "5732", "card_bin": "411111", "billing_country": "FR",
              "shipping_country": "BE", "merchant_id": None, "three_ds": "none",
              "entry_mode": "ecommerce"}
    return SimpleNamespace(**(fields | kw))


def decide(rules: list[dict[str, Any]], payment: SimpleNamespace | None = None,
           score: float | None = 0.2, features: dict[str, float] | None = None,
           model: str = "approve") -> tuple[str, list[str]]:
    policy = Policy(RuleSet.model_validate({"rules": rules}), 1)
    decision, reasons = policy.apply(model, FEATURES if features is None else features,  # type: ignore[arg-type]
                                     (), "none", payment or pay(), score)
    return decision, [r["code"] for r in reasons]


def rule(when: list[dict[str, Any]], action: str = "review", id: str = "r",
         **kw: Any) -> dict[str, Any]:
    return {"id": id, "action": action, "when": when, **kw}


ECOM_ELSEWHERE = rule([
    {"field": "payment.channel", "op": "==", "value": "ecom"},
    {"field": "payment.amount", "op": ">", "value": 500},
    {"field": "payment.shipping_country", "op": "!=", "other": "payment.billing_country"},
    {"any": [{"field": "score", "op": ">", "value": 0.3},
             {"field": "card_new_device_30d", "op": "==", "value": 1}]}], id="ecom_elsewhere")


def test_an_analysts_rule_over_payment_fields_features_and_the_score():
    assert decide([ECOM_ELSEWHERE]) == ("review", ["rule_ecom_elsewhere"])
    # each part of it, changed alone, stops it
    assert decide([ECOM_ELSEWHERE], pay(channel="pos"))[0] == "approve"
    assert decide([ECOM_ELSEWHERE], pay(amount=400.0))[0] == "approve"
    assert decide([ECOM_ELSEWHERE], pay(shipping_country="FR"))[0] == "approve"
    assert decide([ECOM_ELSEWHERE], features={**FEATURES, "card_new_device_30d": 0.0}
                  )[0] == "approve"
    # ... unless the other branch of the `any` holds: the model's score
    assert decide([ECOM_ELSEWHERE], score=0.5,
                  features={**FEATURES, "card_new_device_30d": 0.0})[0] == "review"


@pytest.mark.parametrize(("condition", "holds"), [
    ({"field": "payment.country", "op": "in", "values": ["FR", "DE"]}, True),
    ({"field": "payment.country", "op": "not_in", "values": ["FR", "DE"]}, False),
    ({"field": "payment.merchant_category", "op": "in", "values": ["5732", "5411"]}, True),
    ({"field": "amount", "op": "between", "values": [600, 620]}, True),  # both ends in
    ({"field": "amount", "op": "between", "values": [620.5, 700]}, False),
    ({"field": "card_count_1h", "op": "<", "other": "amount"}, True),
    ({"field": "card_count_1h", "op": ">=", "other": "amount"}, False),
    ({"not": {"field": "payment.three_ds", "op": "==", "value": "authenticated"}}, True),
    ({"all": [{"field": "amount", "op": ">", "value": 1}, {"field": "score", "op": "<",
                                                           "value": 0.1}]}, False),
    # missing values: a NaN feature, an absent payment field, no score: false...
    ({"field": "terminal_risk_7d", "op": "<", "value": 1}, False),
    ({"field": "payment.merchant_id", "op": "==", "value": "m1"}, False),
    # ... and so true under `not`
    ({"not": {"field": "terminal_risk_7d", "op": ">=", "value": 1}}, True),
])
def test_each_operator_and_group(condition: dict[str, Any], holds: bool):
    assert decide([rule([condition])])[0] == ("review" if holds else "approve")


def test_the_highest_priority_among_matching_rules_decides():
    allow_small_shops = rule([{"field": "payment.merchant_category", "op": "==",
                               "value": "5732"}], action="approve", id="trusted_mcc",
                             priority=10)
    decline_big = rule([{"field": "amount", "op": ">", "value": 500}], action="decline",
                       id="big")
    # without priorities a raising rule wins over an approve rule
    assert decide([{**allow_small_shops, "priority": 0}, decline_big])[0] == "decline"
    decision, reasons = decide([allow_small_shops, decline_big], model="review")
    assert decision == "approve"
    assert reasons == ["rule_trusted_mcc", "rule_big"]  # both shown; the higher decided
    # a lower-priority raising rule does not count; one of the same priority does
    assert decide([allow_small_shops, {**decline_big, "priority": 10}])[0] == "decline"


def test_a_rule_set_round_trips_as_written_and_describes_itself():
    rules = RuleSet.model_validate({"rules": [ECOM_ELSEWHERE, rule(
        [{"not": {"feature": "amount", "op": "in", "values": [1, 2]}}], id="legacy_name")]})
    document = rules.document()
    assert RuleSet.model_validate(document) == rules
    assert document["rules"][1]["when"] == [{"not": {"feature": "amount", "op": "in",
                                                     "values": [1.0, 2.0]}}]
    policy = Policy(rules, 1)
    _, reasons = policy.apply("approve", FEATURES, (), "none", pay(), 0.2)
    assert reasons[0]["detail"] == (
        "rule ecom_elsewhere (review): payment.channel == 'ecom' and payment.amount > 500 "
        "and payment.shipping_country != payment.billing_country and (score > 0.3 or "
        "card_new_device_30d == 1)")


@pytest.mark.parametrize(("condition", "said"), [
    ({"field": "nope", "op": "==", "value": 1}, "when[0]: unknown field 'nope'"),
    ({"field": "payment.pan", "op": "==", "value": "x"}, "unknown field 'payment.pan'"),
    ({"any": [{"field": "amount", "op": ">", "value": 1},
              {"field": "payment.channel", "op": ">", "value": "ecom"}]},
     "when[0].any[1]: op '>' orders numbers; payment.channel is a text"),
    ({"field": "payment.channel", "op": "==", "value": 3}, "payment.channel is a text: 3.0"),
    ({"field": "amount", "op": "==", "value": "big"}, "amount is a number: 'big'"),
    ({"field": "amount", "op": "in", "value": 3}, "op 'in' takes `values` (a list)"),
    ({"field": "amount", "op": "between", "values": [5, 1]}, "low <= high"),
    ({"field": "amount", "op": "==", "other": "payment.channel"}, "not of one kind"),
    ({"field": "amount", "op": ">", "value": 1, "other": "score"}, "one of `value` or `other`"),
    ({"feature": "amount", "field": "amount", "op": "==", "value": 1}, "give the condition's"),
    ({"not": {"all": [{"field": "amount", "op": "=", "value": 1}]}}, "when[0].not.all[0].op"),
    ({"field": "payment.card_bin", "op": "in", "values": ["4111111111111111"]},
     "raw card number"),
    ({"field": "amount", "op": ">", "value": float("nan")}, "when[0].value: Input should be "
                                                            "a finite number"),
])
def test_errors_name_the_rule_and_the_condition(condition: dict[str, Any], said: str):
    with pytest.raises(ValidationError) as caught:
        RuleSet.model_validate({"rules": [rule([condition], id="mine")]})
    (error,) = caught.value.errors()
    assert error["loc"] == ("rules", 0)
    assert error["msg"].startswith("Value error, rule 'mine': ") and said in error["msg"], \
        error["msg"]


def test_a_rule_is_bounded_in_conditions_and_depth():
    deep: dict[str, Any] = {"field": "amount", "op": ">", "value": 1}
    for _ in range(6):
        deep = {"not": deep}
    with pytest.raises(ValidationError, match="nested 6 deep; at most 50, 5 deep"):
        RuleSet.model_validate({"rules": [rule([deep])]})
    many = [{"field": "amount", "op": ">", "value": i} for i in range(51)]
    with pytest.raises(ValidationError, match="51 conditions"):
        RuleSet.model_validate({"rules": [rule(many)]})
    assert RuleSet.model_validate({"rules": [rule(many[:50])]})
