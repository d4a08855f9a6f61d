"""A local durable spool for events Kafka did not take.

Append-only segment files of ``key<TAB>value`` lines, written at once (so a crash of the
process loses nothing) and fsync'd every few milliseconds in the background (so that a
crash of the machine loses at most that); written only while Kafka is failing. Segments
are replayed in order once Kafka answers again and deleted when every event in them is
acknowledged. Replay can
repeat an event that Kafka did get before failing; the stream records each payment_id
once, so a repeat changes nothing, while a loss would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._current: Path | None = None
        self._fh: int | None = None
        self._dirty = False

    def append(self, key: bytes, value: bytes) -> None:
        if b"\t" in key or b"\n" in key or b"\n" in value:
            raise ValueError("spool entries are single lines with a tab-free key")
        if self._fh is None:
            self._current = self.directory / f"segment-{time.time_ns():020d}.spool"
            self._fh = os.open(self._current, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.write(self._fh, key + b"\t" + value + b"\n")
        self._dirty = True

    def sync(self) -> None:
        """fsync what was appended. Written data already survives the process dying; this
        makes it survive the machine, too. Called in the background, not per event."""
        if self._fh is not None and self._dirty:
            self._dirty = False
            os.fsync(self._fh)

    def seal(self) -> None:
        """Close the segment being written, so that it can be replayed."""
        if self._fh is not None:
            os.fsync(self._fh)
            os.close(self._fh)
            self._fh = None
            self._current = None

    def sealed_segments(self) -> list[Path]:
        return sorted(p for p in self.directory.glob("segment-*.spool") if p != self._current)

    def is_empty(self) -> bool:
        return self._fh is None and not self.sealed_segments()

    def pending(self) -> int:
        return sum(1 for p in self.directory.glob("segment-*.spool")
                   for _ in p.read_bytes().splitlines())

    @staticmethod
    def read(segment: Path) -> Iterator[tuple[bytes, bytes]]:
        for line in segment.read_bytes().splitlines():
            if line:  # a torn last line after a crash has no tab: skipped, never sent half
                key, sep, value = line.partition(b"\t")
                if sep:
                    yield key, value
