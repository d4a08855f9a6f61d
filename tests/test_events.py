"""The scored topic's wire format: what the API publishes reads back the same."""

import math
from datetime import UTC, datetime

from model.schemas import Payment, ScoredPayment
from stores.events import decode_scored, encode, encode_batch


def test_a_missing_feature_travels_as_null_and_reads_back_as_nan():
    """A catalogue feature of an entity the payment lacks is NaN; JSON has no NaN. Before,
    the stream dead-lettered such a payment and the history never got it."""
    p = Payment(payment_id="p1", timestamp=datetime(2026, 11, 20, tzinfo=UTC), card_id="c1",
                terminal_id="t1", amount=1.0, currency="EUR")
    event = ScoredPayment(payment=p, features={"amount": 1.0, "device_cards_1h": math.nan},
                          score=0.1, decision="approve", model_version="v1",
                          scored_at=datetime(2026, 11, 20, tzinfo=UTC))
    raw = encode(event)
    assert b'"device_cards_1h":null' in raw
    for decoded in (decode_scored(raw)[0], decode_scored(encode_batch([raw]))[0]):
        assert decoded.features["amount"] == 1.0
        assert math.isnan(decoded.features["device_cards_1h"])
