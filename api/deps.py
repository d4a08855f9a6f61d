"""Dependencies injected into the routes: settings and the clients built at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fastapi import Request

from api.admission import Admission
from api.decisions import DecisionRecorder
from api.key_ring import KeyRing
from api.model_holder import ModelHolder
from api.monitor import Monitor
from api.publisher import Publisher
from api.throttle import Throttle
from model.config import Settings
from model.periodic import every
from model.policy import Policy, RuleSet
from stores.label_intake import LabelIntake
from stores.online_features import OnlineStore
from stores.policy_store import PolicyStore
from stores.reviews import ReviewQueue

log = logging.getLogger(__name__)


@dataclass
class PolicyHolder:
    """The rules in force in this worker, reloaded when their version in Redis changes."""

    store: PolicyStore
    policy: Policy = field(default_factory=lambda: Policy(RuleSet(), 0))

    async def refresh(self) -> None:
        if await self.store.version() != self.policy.version:
            self.policy = await self.store.load()
            log.info("rules version %d in force (%d rules)", self.policy.version,
                     len(self.policy.rules.rules))

    async def watch(self, period: float) -> None:
        # Redis away: the rules we have stay in force.
        await every(period, self.refresh, failed="rules not refreshed", log=log)


@dataclass
class Services:
    settings: Settings
    store: OnlineStore
    models: ModelHolder
    publisher: Publisher
    policy: PolicyHolder
    api_keys: KeyRing
    decisions: DecisionRecorder
    reviews: ReviewQueue
    monitor: Monitor
    throttle: Throttle
    label_intake: LabelIntake
    admission: Admission
    # The pseudonyms' key (``stores.pii_key``): the e-mail and IP of every payment are
    # replaced by their tokens before anything stores or sends it.
    pii_key: bytes = field(repr=False)


async def get_services(request: Request) -> Services:
    # async on purpose: FastAPI runs a plain ``def`` dependency in a thread pool, a hop
    # that costs more than the whole Redis round trip.
    services: Services = request.app.state.services
    return services
