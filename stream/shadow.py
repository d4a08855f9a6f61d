"""The challenger in shadow: scored on every payment the stream records, beside the champion.

The API answers with the champion only; the stream worker, after the answer, scores the
challenger on the exact feature vector the champion saw and writes both scores in the same
history row (``shadow_score``, ``shadow_version``). Nothing is added to the scoring path,
and a shadow score is recorded exactly when its payment is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from model.registry import Registry
from model.scorer import Scorer
from stores.history import FEATURE_PREFIX

log = logging.getLogger(__name__)


class ShadowScorer:
    def __init__(self, registry: Registry, poll_seconds: float = 2.0) -> None:
        self.registry = registry
        self.poll_seconds = poll_seconds
        self.scorer: Scorer | None = None
        self._checked = 0.0

    async def refresh(self) -> None:
        """Follow the registry's challenger (checked at most every ``poll_seconds``)."""
        now = time.monotonic()
        if now - self._checked < self.poll_seconds:
            return
        self._checked = now
        version = self.registry.challenger_version()
        if version is None:
            if self.scorer is not None:
                log.info("challenger %s left the shadow", self.scorer.version)
            self.scorer = None
        elif self.scorer is None or self.scorer.version != version:
            try:
                self.scorer = await asyncio.to_thread(Scorer.from_version,
                                                      self.registry.get(version))
                log.info("challenger %s in shadow", version)
            except Exception:
                log.exception("challenger %s could not be loaded; no shadow scores", version)
                self.scorer = None

    async def annotate(self, rows: Mapping[str, dict[str, Any]]) -> None:
        """Add the challenger's score to the history rows that have the features it needs."""
        await self.refresh()
        scorer = self.scorer
        if scorer is None:
            return
        needed = [FEATURE_PREFIX + f for f in scorer.feature_names]
        scorable = [row for row in rows.values()
                    if not row.get("degraded") and all(row.get(n) is not None for n in needed)]
        if not scorable:
            return
        X = np.array([[row[n] for n in needed] for row in scorable], dtype=float)
        for row, score in zip(scorable, scorer.probabilities(X), strict=True):
            row["shadow_score"] = float(score)
            row["shadow_version"] = scorer.version
