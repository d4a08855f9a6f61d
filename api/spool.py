"""The API's write-ahead spool of scored payments: nothing scored is lost, whatever restarts.

Every scored payment is appended here (one ``write``, no fsync on the request's path)
before it is handed to the Kafka producer, and acknowledged when Kafka confirms it. A
segment file whose events are all acknowledged is deleted. What is left, because Kafka
failed or the process died with events still in the producer's buffer, is sent again:
by the drain loop once Kafka answers, and at the next start. Sending again can repeat an
event Kafka did get; the stream records each payment_id once, so a repeat changes nothing,
while a loss would.

A spool has a size cap (``FRAUDSTREAM_SPOOL_MAX_BYTES``), and a disk may fill before it:
either way ``append`` raises ``SpoolFull`` and writes nothing (a write cut short is taken
back), and ``refusing`` says why until a write succeeds again; the publisher then answers
without the disk copy (``api.publisher``).

Lines are ``key<TAB>value``. Appended data survives the process dying at once (it is in
the kernel); a background ``fsync`` every 50 ms makes it survive the machine (one fsync for
all the events of those 50 ms: a thread hop and a disk flush per event would cost more CPU
than scoring).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

# A segment is closed after this many events, so that acknowledged ones can be deleted.
SEGMENT_EVENTS = 2000
DEFAULT_MAX_BYTES = 1 << 30


class SpoolFull(OSError):
    """Nothing was written: the spool is at its cap, or the disk refused the write."""


@dataclass(eq=False)
class Segment:
    path: Path
    fd: int | None
    appended: int = 0
    acked: int = 0
    failed: bool = False  # an event of it was not delivered: keep it for the drain
    size: int = 0  # bytes written
    dirty: bool = field(default=False, repr=False)

    @property
    def done(self) -> bool:
        return self.fd is None and not self.failed and self.acked >= self.appended


class Spool:
    def __init__(self, directory: Path, segment_events: int = SEGMENT_EVENTS,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_events = segment_events
        self.max_bytes = max_bytes
        self._current: Segment | None = None
        self._open: dict[Path, Segment] = {}
        # what segments on disk hold, this process's and those left by earlier ones
        self.bytes = sum(p.stat().st_size for p in self.directory.glob("segment-*.spool"))
        self.refusing: str | None = None  # why the last append wrote nothing

    def append(self, key: bytes, value: bytes) -> Segment:
        """The event written to the current segment; ``SpoolFull`` if it was not."""
        if b"\t" in key or b"\n" in key or b"\n" in value:
            raise ValueError("spool entries are single lines with a tab-free key")
        line = key + b"\t" + value + b"\n"
        seg = self._current
        if seg is not None and seg.appended >= self.segment_events:
            self._seal_full(seg)  # first: a sealed segment Kafka has taken frees its bytes
            seg = None
        if self.bytes + len(line) > self.max_bytes:
            self._refuse(f"the spool holds {self.bytes} bytes, its cap is {self.max_bytes}")
        try:
            if seg is None:
                path = self.directory / f"segment-{time.time_ns():020d}.spool"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                seg = self._current = self._open[path] = Segment(path, fd)
            assert seg.fd is not None
            written = os.write(seg.fd, line)
        except OSError as exc:
            self._take_back(seg)
            self._refuse(f"the disk refused the write ({exc.strerror or exc})")
        if written != len(line):  # a disk filling up mid-line
            self._take_back(seg)
            self._refuse("the disk took only part of the write")
        seg.appended += 1
        seg.size += written
        self.bytes += written
        seg.dirty = True
        self.refusing = None
        return seg

    def _take_back(self, seg: Segment | None) -> None:
        """Cut a torn line off the segment: a reader must never see half an event."""
        if seg is None or seg.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(seg.fd, seg.size)
        self._seal_full(seg)

    def _seal_full(self, seg: Segment) -> None:
        """Seal, even when the disk fails the fsync (then the file is closed as it is)."""
        try:
            self.seal()
        except OSError:
            fd, seg.fd = seg.fd, None
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._forget_if_done(seg)

    def _refuse(self, why: str) -> NoReturn:
        self.refusing = why
        raise SpoolFull(why)

    def ack(self, seg: Segment) -> None:
        seg.acked += 1
        self._forget_if_done(seg)

    def fail(self, seg: Segment) -> None:
        seg.failed = True

    def seal(self) -> None:
        """Close the segment being written; it is deleted once all its events are acked."""
        seg, self._current = self._current, None
        if seg is not None and seg.fd is not None:
            os.fsync(seg.fd)
            os.close(seg.fd)
            seg.fd = None
            seg.dirty = False
            self._forget_if_done(seg)

    @property
    def holds_failed(self) -> bool:
        """The segment being written has an event Kafka did not take: seal it so that the
        drain sends it (else it would wait until the segment fills up)."""
        return self._current is not None and self._current.failed

    @property
    def needs_sync(self) -> bool:
        return self._current is not None and self._current.dirty

    def sync(self) -> None:
        seg = self._current
        if seg is not None and seg.fd is not None and seg.dirty:
            seg.dirty = False
            os.fsync(seg.fd)

    def undelivered(self) -> list[Path]:
        """Closed segments holding events Kafka may not have: failed ones, and any left by
        an earlier process. Oldest first."""
        out = []
        for path in sorted(self.directory.glob("segment-*.spool")):
            seg = self._open.get(path)
            if seg is None or (seg.fd is None and seg.failed):
                out.append(path)
        return out

    def delete(self, path: Path) -> None:
        self._open.pop(path, None)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        path.unlink(missing_ok=True)
        self.bytes = max(0, self.bytes - size)

    def pending_events(self) -> int:
        """Events not (yet) acknowledged by Kafka."""
        return sum(s.appended - s.acked for s in self._open.values()) + sum(
            1 for p in self.undelivered() if p not in self._open for _ in self.read(p))

    def _forget_if_done(self, seg: Segment) -> None:
        if seg.done:
            self.delete(seg.path)

    @staticmethod
    def read(segment: Path) -> Iterator[tuple[bytes, bytes]]:
        for line in segment.read_bytes().splitlines():
            if line:  # a torn last line after a crash has no tab: skipped, never sent half
                key, sep, value = line.partition(b"\t")
                if sep:
                    yield key, value
