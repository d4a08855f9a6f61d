"""The stream's consumer rewinds a partition without a committed offset when faust seeks to
the committed offsets (``stream.consumer``): faust drops records fetched during a
rebalance and counts on that seek to fetch them again; aiokafka's own
``seek_to_committed()`` leaves such a partition where the dropped fetch left it, at the
end of the log, and the partition stalls with no lag to show for it."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from stream import consumer


class FakeAIOKafkaConsumer:
    """What a survivor's aiokafka consumer looks like when it gets back a partition the
    killed worker recorded but never committed: the whole backlog fetched (the position
    at the end of the log) and dropped by faust while the flow was stopped."""

    def __init__(self, committed: dict[TopicPartition, int | None], end: int) -> None:
        self.committed = committed
        self.position = dict.fromkeys(committed, end)
        self.sought_to_beginning: list[TopicPartition] = []

    async def seek_to_committed(self) -> dict[TopicPartition, int | None]:
        # aiokafka: a partition is sought only if its committed offset is > 0
        for tp, offset in self.committed.items():
            if offset and offset > 0:
                self.position[tp] = offset
        return dict(self.committed)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    def assignment(self) -> set[TopicPartition]:
        return set(self.committed)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        # the position is set at once (seek_to_beginning would leave it unset for a while,
        # and faust's livelock detector asserts it is set)
        self.sought_to_beginning.append(tp)
        self.position[tp] = offset


SCORED_0, SCORED_1, LABELS_0 = (TopicPartition("scored", 0), TopicPartition("scored", 1),
                                TopicPartition("labels", 0))


def test_a_partition_without_a_committed_offset_is_rewound_to_the_beginning() -> None:
    fake = FakeAIOKafkaConsumer({SCORED_0: None, SCORED_1: 1985, LABELS_0: 0}, end=2015)
    committed = asyncio.run(consumer.seek_to_committed_or_beginning(fake))  # type: ignore[arg-type]
    # what faust's perform_seek gets: the committed offsets, as aiokafka returns them
    assert committed == {SCORED_0: None, SCORED_1: 1985, LABELS_0: 0}
    assert sorted(fake.sought_to_beginning) == [LABELS_0, SCORED_0]
    # the dropped backlog is fetched again; the committed partition resumes at its commit
    assert fake.position == {SCORED_0: 0, SCORED_1: 1985, LABELS_0: 0}


def test_committed_partitions_are_not_sought_again() -> None:
    fake = FakeAIOKafkaConsumer({SCORED_0: 10, SCORED_1: 20}, end=30)
    asyncio.run(consumer.seek_to_committed_or_beginning(fake))  # type: ignore[arg-type]
    assert fake.sought_to_beginning == []
    assert fake.position == {SCORED_0: 10, SCORED_1: 20}


def test_the_faust_app_consumes_through_the_rewinding_consumer() -> None:
    from stream.app import App

    app: Any = App("fraudstream-test-consumer", broker="kafka://127.0.0.1:9")
    assert app.transport.Consumer is consumer.Consumer
