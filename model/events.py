"""Wire format of the Kafka topics: JSON of the pydantic schemas (pydantic-core's own
serialiser), keyed by payment_id.

Both topics are keyed by payment_id. The stream joins a label to its payment through Redis
(``model.label_join.JoinState``), so the join does not depend on partitioning.
"""

from __future__ import annotations

from model.schemas import Label, ScoredPayment


def encode(event: ScoredPayment | Label) -> bytes:
    return event.model_dump_json().encode()


def decode_scored(raw: bytes) -> ScoredPayment:
    return ScoredPayment.model_validate_json(raw)


def decode_label(raw: bytes) -> Label:
    return Label.model_validate_json(raw)


def key_of(event: ScoredPayment | Label) -> bytes:
    pid = event.payment.payment_id if isinstance(event, ScoredPayment) else event.payment_id
    return pid.encode()
