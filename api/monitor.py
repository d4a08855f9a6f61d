"""Drift and freshness, as this API process sees them; exported on ``/metrics``, summed up
by ``/healthz``.

Nothing here costs the scoring path more than a copy of the feature vector the model
already built into a ring buffer, and a histogram observation. The rest runs in a
background loop: once a second the stream's freshness and the review queue are read
from Redis; every ``DRIFT_EVERY`` seconds the buffer is binned against the model's
training-window reference (``model.drift``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from api.metrics import (
    LABEL_DELAY,
    LABEL_LAG,
    PSI,
    REVIEW_QUEUE_AGE,
    REVIEW_QUEUE_SIZE,
    SCORES,
    STREAM_LAG,
    forget,
)
from model.config import Settings
from model.drift import psi
from model.periodic import every
from model.schemas import Freshness
from model.scorer import Scorer
from stores.freshness import DAY, FreshnessBoard, FreshState
from stores.reviews import ReviewQueue

log = logging.getLogger(__name__)
DRIFT_EVERY = 15.0
# PSI is not worth reading on fewer payments than this.
DRIFT_MIN_PAYMENTS = 500


@dataclass
class DriftWindow:
    """The last ``size`` payments' feature vectors and scores, for one model version."""

    size: int
    version: str | None = None
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seen: int = 0

    def add(self, scorer: Scorer, vector: np.ndarray, score: float) -> None:
        if scorer.version != self.version:  # a new model: new reference, new window
            self.version = scorer.version
            self.vectors = np.zeros((self.size, len(vector)))
            self.scores = np.zeros(self.size)
            self.seen = 0
        i = self.seen % self.size
        self.vectors[i] = vector
        self.scores[i] = score
        self.seen += 1

    def filled(self) -> tuple[np.ndarray, np.ndarray]:
        n = min(self.seen, self.size)
        return self.vectors[:n], self.scores[:n]


class Monitor:
    def __init__(self, settings: Settings, board: FreshnessBoard, reviews: ReviewQueue) -> None:
        self.settings = settings
        self.board = board
        self.reviews = reviews
        self.window = DriftWindow(settings.drift_window)
        self.fresh = FreshState()
        self.freshness = Freshness()  # what answers carry; rebuilt once a second
        self.last_published = 0.0
        self.psi: dict[str, float] = {}
        self.queue: tuple[int, float | None] = (0, None)

    # ---- on the scoring path -----------------------------------------------------------
    def observe(self, scorer: Scorer, vector: np.ndarray, score: float) -> None:
        self.window.add(scorer, vector, score)
        SCORES.observe(score)
        self.last_published = time.time()

    # ---- off it ------------------------------------------------------------------------
    async def poll(self) -> None:
        self.fresh = await self.board.read()
        self.queue = await self.reviews.stats()
        stream_lag = None
        if self.fresh.scored_at is not None:
            stream_lag = max(self.last_published - self.fresh.scored_at, 0.0)
        label_lag = self.fresh.label_lag_s
        stale = (stream_lag is not None
                 and stream_lag > self.settings.stale_stream_lag_seconds) or \
            (label_lag is not None and label_lag > self.settings.stale_label_lag_days * DAY)
        self.freshness = Freshness(
            stream_lag_s=None if stream_lag is None else round(stream_lag, 3),
            label_lag_s=None if label_lag is None else round(label_lag, 1), stale=stale)
        STREAM_LAG.set(stream_lag if stream_lag is not None else float("nan"))
        LABEL_LAG.set(label_lag if label_lag is not None else float("nan"))
        cumulative = 0
        for bucket, count in self.fresh.label_delays:
            cumulative += count
            LABEL_DELAY.labels(bucket).set(cumulative)
        REVIEW_QUEUE_SIZE.set(self.queue[0])
        REVIEW_QUEUE_AGE.set(self.queue[1] if self.queue[1] is not None else 0.0)

    def drift(self, scorer: Scorer | None, reference: dict[str, Any] | None) -> None:
        vectors, scores = self.window.filled()
        out: dict[str, float | None] = {}
        # Only against the model answering now, once it has scored enough: a PSI measured
        # against the model before a swap or rollback must not stay on show.
        if (scorer is not None and reference and self.window.version == scorer.version
                and len(scores) >= DRIFT_MIN_PAYMENTS):
            out["score"] = psi(reference["score"], scores)
            for i, name in enumerate(scorer.feature_names):
                if name in reference.get("features", {}):
                    out[name] = psi(reference["features"][name], vectors[:, i])
        gone = set(self.psi) - {k for k, v in out.items() if v is not None}
        self.psi = {k: v for k, v in out.items() if v is not None}
        for name in gone:
            forget(PSI, name)
        for name, value in self.psi.items():
            PSI.labels(name).set(value)

    async def run(self, holder: Any) -> None:
        """Freshness and the review queue once a second (Redis away: the last known state
        stays), drift every ``DRIFT_EVERY`` seconds, the first a second after start."""

        async def drift() -> None:
            self.drift(holder.scorer, holder.reference)

        await asyncio.gather(
            every(1.0, self.poll, failed="freshness not read", log=log, level=logging.DEBUG),
            every(DRIFT_EVERY, drift, failed="drift not computed", log=log, delay=1.0))

    def warnings(self) -> list[str]:
        """Why /healthz is amber (empty: green)."""
        s = self.settings
        out = []
        lag = self.freshness.stream_lag_s
        if lag is not None and lag > s.stale_stream_lag_seconds:
            out.append(f"stream lag {lag:.0f}s > {s.stale_stream_lag_seconds:g}s")
        label_lag = self.freshness.label_lag_s
        if label_lag is not None and label_lag > s.stale_label_lag_days * DAY:
            out.append(f"newest label applied {label_lag / DAY:.1f}d behind the payments "
                       f"> {s.stale_label_lag_days:g}d")
        drifted = {k: v for k, v in self.psi.items() if v > s.drift_psi_amber}
        if drifted:
            top = sorted(drifted.items(), key=lambda kv: -kv[1])[:3]
            out.append("drift: PSI " + ", ".join(f"{k} {v:.2f}" for k, v in top)
                       + f" > {s.drift_psi_amber:g}")
        age = self.queue[1]
        if age is not None and age > s.review_age_amber_hours * 3600:
            out.append(f"oldest review case waiting {age / 3600:.1f}h > "
                       f"{s.review_age_amber_hours:g}h")
        return out
