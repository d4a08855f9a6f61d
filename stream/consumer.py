"""The faust app's Kafka consumer: faust's aiokafka consumer, with "seek to committed"
made to rewind a partition that has no committed offset.

Why. faust drops fetched records in two places and relies on a later
``Consumer.perform_seek()`` (seek every assigned partition to its committed offset) to
fetch them again: records that arrive while the flow is stopped (a rebalance;
``Consumer.getmany``, "getmany called while flow not active. Seek back to committed
offsets."), and the rest of a fetched batch when the generation changes under it. aiokafka
has already moved its position past those records. But aiokafka's
``seek_to_committed()`` only seeks a partition whose committed offset is > 0: one with no
committed offset (or 0) keeps its advanced position, so the dropped records are never
delivered, and aiokafka's position equals the end of the log: no lag, no warning, no
progress, until the next rebalance.

Seen in ``tests/test_stream_workers.py`` (the kill test, 2 in 5 runs with three brokers):
the killed worker had recorded a batch of partition 0 but not yet committed it (it was
stopped between the batch and the commit), so partition 0 had no committed offset when the
survivor got it back. The survivor's aiokafka fetched the whole backlog (offsets 0..2015,
one fetch) while faust's flow was still stopped for the rebalance; faust dropped it, its
seek to committed did nothing for a partition without a commit, and the survivor's state
stayed at aiokafka position 2015 = highwater 2015, faust read offset None, committed None
for two minutes (debug log of the survivor's consumer state, run r3 of the investigation).

The fix: after the seek to committed, a partition without a committed offset (None or 0)
is sought to its earliest offset, which is what ``consumer_auto_offset_reset="earliest"``
means for it. Re-reading is safe: a batch is recorded once however often it is delivered
(``stream.recording``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

log = logging.getLogger(__name__)


async def seek_to_committed_or_beginning(consumer: aiokafka.AIOKafkaConsumer
                                         ) -> Mapping[Any, int | None]:
    """aiokafka's ``seek_to_committed()``, and every assigned partition it left alone (no
    committed offset, or 0) sought to the beginning. Returns the committed offsets, as
    ``seek_to_committed()`` does. Runs on the consumer's own loop (its thread)."""
    committed = await consumer.seek_to_committed()
    uncommitted = sorted(tp for tp, offset in committed.items() if not offset)
    if uncommitted:
        log.info("no committed offset for %s: sought to the beginning",
                 ", ".join(f"{tp.topic}-{tp.partition}" for tp in uncommitted))
        # Explicit offsets, not ``seek_to_beginning()``: that one leaves the position unset
        # until the fetcher has reset it, and faust's livelock detector
        # (``verify_event_path``) reads ``tp_state.position``, which asserts it is set: the
        # worker crashed on it in one run. ``seek()`` sets the position at once.
        earliest = await consumer.beginning_offsets(uncommitted)
        assigned = consumer.assignment()  # (a rebalance may have come meanwhile)
        for tp in uncommitted:
            if tp in assigned:
                consumer.seek(tp, earliest[tp])
    return committed


class Consumer(faust_aiokafka.Consumer):
    async def seek_to_committed(self) -> Mapping[TP, int]:
        thread = self._thread
        committed: Mapping[TP, int] = await thread.call_thread(
            seek_to_committed_or_beginning, thread._ensure_consumer())
        return committed


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
