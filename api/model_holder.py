"""Hot reload: keeps the promoted model loaded and swaps it in when the registry changes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from api.metrics import MODEL_INFO, MODEL_RELOADS
from model.periodic import every
from model.registry import Registry
from model.scorer import Scorer

log = logging.getLogger(__name__)


class ModelHolder:
    """Holds the current Scorer. A request reads ``holder.scorer`` once and keeps that
    object, so a swap never changes the model under a request in flight."""

    def __init__(self, registry: Registry, served: frozenset[str] | None = None) -> None:
        """``served``: the features this API computes; a model needing others is not
        loaded (scoring it would fail on every payment), the one in use is kept."""
        self.registry = registry
        self.served = served
        self._refused: str | None = None
        self.scorer: Scorer | None = None
        # The training window's distributions, for drift (``model.drift``).
        self.reference: dict[str, Any] | None = None

    async def refresh(self) -> bool:
        """Load the promoted version if it differs from the one in use. True if swapped."""
        version = self.registry.current_version()
        if version is None or version == self._refused or (
                self.scorer is not None and self.scorer.version == version):
            return False
        needs = self.registry.get(version).metadata.get("features", [])
        missing = sorted(set(needs) - self.served) if self.served is not None else []
        if missing:
            self._refused = version
            MODEL_RELOADS.labels("failed").inc()
            log.error("model %s needs features this API does not serve (%s): not loaded, "
                      "keeping %s; is its features.toml this API's?", version,
                      ", ".join(missing[:5]), self.scorer.version if self.scorer else None)
            return False
        try:
            # Loading unpickles the model: off the event loop, so scoring goes on meanwhile.
            mv = self.registry.get(version)
            scorer = await asyncio.to_thread(Scorer.from_version, mv)
        except Exception:
            MODEL_RELOADS.labels("failed").inc()
            log.exception("could not load model %s; keeping %s", version,
                          self.scorer.version if self.scorer else None)
            return False
        old, self.scorer = self.scorer, scorer
        self.reference = mv.metadata.get("reference")
        if old is not None:
            MODEL_INFO.labels(old.version).set(0)
        MODEL_INFO.labels(scorer.version).set(1)
        MODEL_RELOADS.labels("loaded").inc()
        log.info("model %s in use (was %s)", scorer.version, old.version if old else None)
        return True

    async def watch(self, period: float) -> None:
        await every(period, self.refresh, failed="model not refreshed", log=log)
