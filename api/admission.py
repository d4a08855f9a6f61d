"""Admission control: under overload, shed scoring to the degraded answer inside the deadline.

A saturated process queues requests; served in turn, each would wait for everyone ahead of
it, and past some rate every answer would come after its deadline (the issue measured p99
1.6 s at twice the rate one process sustains). So each request's wait is measured from its
first byte (``api.arrival``) and, as in CoDel, a queue is *standing* when even the least
waiting request of an interval waited more than ``share`` of its deadline. While one
stands, a request that waited past that share is answered degraded at once, without the
Redis round trip, which costs a fraction of a full answer: the queue drains and the
requests behind it are served in time. A burst that drains within an interval sheds nothing,
and a lone request delayed by a busy machine neither (``min_requests``).

Waits are compared as shares of each request's own deadline: a caller that gives a long
deadline (a replay, a batch) is shed only when it too has waited a share of it.

What the first byte does not see: a process busy with one round of its event loop reads
no socket until the round ends, and the requests that came meanwhile wait in the kernel,
unseen (measured at 900/s on an API held to half a core: p50 183 ms at the caller while
the waits seen in the process rarely passed 50 ms, so nothing was shed). ``LoopLag``
measures how late the loop runs a timer, which is how long a ready socket waits to be read
(the signal Node's toobusy sheds on), and each request's wait counts it.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

# How long a queue must stand before shedding starts (CoDel's interval) and the fewest
# requests an interval needs for its least wait to mean a queue rather than one slow moment.
INTERVAL_S = 0.1
MIN_REQUESTS = 16


@dataclass
class LoopLag:
    """How late this process's event loop runs a timer due every ``period_s``: the wait a
    request's bytes had in the kernel before the loop read them. ``lag`` is the latest
    measure; ``run`` keeps it (a few µs of CPU per period)."""

    period_s: float = 0.005
    lag: float = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.period_s
            await asyncio.sleep(self.period_s)
            self.lag = max(loop.time() - due, 0.0)


@dataclass
class Admission:
    """``share``: of each request's deadline, the wait that sheds it while a queue stands
    (0: never shed on the queue; a request is still answered degraded once it waited past
    its features' share of the deadline, see ``api.scoring``)."""

    share: float
    interval_s: float = INTERVAL_S
    min_requests: int = MIN_REQUESTS
    loop: LoopLag = field(default_factory=LoopLag)
    _window_start: float = field(default=-math.inf, init=False)
    _least: float = field(default=math.inf, init=False)
    _count: int = field(default=0, init=False)
    standing: bool = field(default=False, init=False)

    def admit(self, waited: float, budget: float, now: float) -> bool:
        """False if a request that waited ``waited`` seconds of its ``budget`` is to be shed
        (``now``: the monotonic clock of the waits)."""
        if self.share <= 0:
            return True
        if now - self._window_start >= self.interval_s:
            self.standing = self._count >= self.min_requests and self._least > self.share
            self._window_start, self._least, self._count = now, math.inf, 0
        ratio = waited / budget
        self._count += 1
        self._least = min(self._least, ratio)
        return not (self.standing and ratio > self.share)
