"""Wire format of the Kafka topics: JSON of the pydantic schemas (pydantic-core's own
serialiser).

Labels are one per message, keyed by payment_id. Scored payments travel in batches: a
message is a JSON array of them, all of one partition, the partition their payment_ids'
keys would pick (``partition_of``), so that a payment sent again alone (the API's spool
drains one event per message, keyed by payment_id) lands where its batch did, and one
stream worker sees both. A message may also be a single payment (an object): what the
spool resends, and what earlier versions wrote. Batching is what makes a payment cheap to
carry: Kafka, the producer and the stream worker's consumer each pay per message.

The stream joins a label to its payment through Redis (``stores.label_join.JoinState``),
so the join does not depend on partitioning.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.partitioner import murmur2
from pydantic import TypeAdapter

from model.schemas import Label, ScoredPayment

_SCORED_BATCH = TypeAdapter(list[ScoredPayment])


def encode(event: ScoredPayment | Label) -> bytes:
    return event.model_dump_json().encode()


def encode_batch(encoded: Sequence[bytes]) -> bytes:
    """Scored payments, each already encoded, as one message."""
    return b"[" + b",".join(encoded) + b"]"


def decode_scored(raw: bytes) -> list[ScoredPayment]:
    """A message of the scored topic: a batch (array) or a single payment (object)."""
    if raw.lstrip()[:1] == b"[":
        return _SCORED_BATCH.validate_json(raw)
    return [ScoredPayment.model_validate_json(raw)]


def decode_label(raw: bytes) -> Label:
    return Label.model_validate_json(raw)


def key_of(event: ScoredPayment | Label) -> bytes:
    pid = event.payment.payment_id if isinstance(event, ScoredPayment) else event.payment_id
    return pid.encode()


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2, as the Java
    client and aiokafka compute it)."""
    return (int(murmur2(key)) & 0x7FFFFFFF) % partitions
