"""The FastAPI application: ``fraudstream api`` (uvicorn, one or more workers)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import multiprocess

from api.admission import Admission
from api.decisions import DecisionRecorder
from api.deps import PolicyHolder, Services
from api.edge import ScoringEdge, validation_detail
from api.key_ring import KeyRing
from api.model_holder import ModelHolder
from api.monitor import Monitor
from api.publisher import Publisher
from api.reviews import resend_verdicts
from api.reviews import router as reviews_router
from api.routes import admin, router
from api.spool import Spool
from api.throttle import Limit, Throttle
from model.catalogue import CatalogueError
from model.catalogue_file import installation_catalogue
from model.config import Settings, get_settings
from model.registry import Registry
from model.version import VERSION
from stores import pii_key, redis_client
from stores.catalogue_store import CatalogueStore
from stores.freshness import FreshnessBoard
from stores.idempotency import DecisionStore
from stores.key_usage import KeyUsage
from stores.label_intake import LabelIntake
from stores.online_features import OnlineStore
from stores.policy_store import PolicyStore
from stores.rate_limits import TokenBuckets
from stores.reviews import ReviewQueue

log = logging.getLogger(__name__)
# How long start-up waits for Kafka before serving without it (spooling).
KAFKA_START_TIMEOUT = 3.0
SHUTDOWN_TASK_TIMEOUT = 2.0
# Each step of start-up and shutdown that talks to a server gets at most this long: a
# server that accepts and never answers must not keep the process from starting (degraded)
# or from stopping (and sealing its spool).
STEP_TIMEOUT = 5.0


async def _bounded(step: str, call: Awaitable[object]) -> None:
    try:
        await asyncio.wait_for(call, timeout=STEP_TIMEOUT)
    except TimeoutError:
        log.warning("%s did not finish within %gs; going on without it", step, STEP_TIMEOUT)
    except Exception as exc:
        log.warning("%s failed: %s", step, type(exc).__name__)


class ConfigurationError(RuntimeError):
    pass


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    assert settings.api_keys_file is not None and settings.spool_dir is not None
    spool_dir = settings.spool_dir  # narrowed, for the lifespan below
    api_keys = KeyRing(settings.api_keys_file)
    if settings.auth_enabled and not len(api_keys):
        raise ConfigurationError(
            f"no API keys in {settings.api_keys_file}: create one with "
            "`fraudstream keys create NAME --scope score`, or set FRAUDSTREAM_AUTH_ENABLED=false"
        )
    # Read (or, for a local install, generated) before serving: every worker the same key.
    pseudonym_key = pii_key.load(settings)
    try:
        catalogue = installation_catalogue(settings.features_file,
                                           settings.features_cost_budget) \
            if settings.features_online else None
    except CatalogueError as exc:
        raise ConfigurationError(f"{exc}; `fraudstream features check` says more") from exc

    default_limit = Limit(settings.rate_limit_per_second, settings.rate_limit_burst) \
        if settings.rate_limit_per_second > 0 else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Every call of a request shares one pipelined connection per Redis server
        # (``stores.redis_client``); its redis-py pool, for rule changes and audits, is
        # bounded: under a burst, calls queue for a connection instead of opening hundreds.
        redis = redis_client.connect(settings, pool_size=settings.redis_pool_size)
        # Redis down at start: the API starts, degraded
        await _bounded("reading the Redis cluster's slots", redis.ready())
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            acks="all",
            linger_ms=settings.kafka_linger_ms,
            # Room for a whole linger's worth of payments per partition at a few thousand
            # per second: with the default 16 KiB a full batch makes ``send`` wait, which
            # the publisher would take for Kafka failing.
            max_batch_size=512 * 1024,
            request_timeout_ms=5000,
            retry_backoff_ms=200,
        )
        publisher = Publisher(producer, Spool(spool_dir, max_bytes=settings.spool_max_bytes),
                              settings.topic_scored, settings.topic_labels,
                              memory_events=settings.spool_memory_events)
        try:
            # Kafka down, or still starting (it may accept connections and then keep
            # metadata requests waiting): score anyway, into the spool, and let the drain
            # loop connect once Kafka answers.
            await asyncio.wait_for(publisher.start(), timeout=KAFKA_START_TIMEOUT)
        except Exception as exc:
            log.error("Kafka unavailable at start (%s); spooling", type(exc).__name__)
            publisher.kafka_ok = publisher.labels_ok = False
        # Segments left by an earlier run (a crash, a Kafka outage) are sent by the drain
        # loop within a second; the stream records each payment once.
        store = OnlineStore(redis, CatalogueStore(redis, catalogue) if catalogue else None)
        holder = ModelHolder(Registry(settings.models_dir), store.served)
        await holder.refresh()
        policy = PolicyHolder(PolicyStore(redis))
        await _bounded("loading rules and lists", policy.refresh())
        decisions = DecisionRecorder(DecisionStore(redis))
        reviews = ReviewQueue(redis, settings.review_claim_seconds)
        monitor = Monitor(settings, FreshnessBoard(redis), reviews)
        api_keys.usage = KeyUsage(redis)
        admission = Admission(settings.shed_queue_share)
        tasks = [
            asyncio.create_task(admission.loop.run()),
            asyncio.create_task(api_keys.watch(settings.keys_poll_seconds)),
            asyncio.create_task(monitor.run(holder)),
            asyncio.create_task(resend_verdicts(reviews, publisher)),
            asyncio.create_task(decisions.run()),
            asyncio.create_task(holder.watch(settings.model_poll_seconds)),
            asyncio.create_task(policy.watch(settings.rules_poll_seconds)),
            asyncio.create_task(publisher.keep_draining()),
            asyncio.create_task(publisher.keep_synced()),
        ]
        app.state.services = Services(
            settings=settings, store=store, models=holder,
            publisher=publisher, policy=policy, api_keys=api_keys, decisions=decisions,
            reviews=reviews, monitor=monitor, pii_key=pseudonym_key,
            throttle=Throttle(TokenBuckets(redis), default_limit),
            label_intake=LabelIntake(redis),
            admission=admission,
        )
        # What start-up built (FastAPI's routes, pydantic's schemas, the libraries: about
        # 190k objects) lives as long as the process: taken out of the cyclic collector,
        # whose full passes over it would otherwise stall requests for tens of ms.
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            for task in tasks:
                task.cancel()
            # Bounded: a loop stuck in a client library's cancelled call must not keep the
            # process from shutting down (and flushing what it holds).
            _, stuck = await asyncio.wait(tasks, timeout=SHUTDOWN_TASK_TIMEOUT)
            for task in stuck:
                frames = "; ".join(f"{f.f_code.co_filename}:{f.f_lineno}"
                                   for f in task.get_stack(limit=8))
                log.warning("background task did not stop within %gs: %s at %s",
                            SHUTDOWN_TASK_TIMEOUT, task.get_name(), frames)
            await _bounded("keeping the last answers for replays", decisions.flush())
            # Deliver what is buffered; what Kafka will not take now lands in the spool.
            await _bounded("flushing the Kafka producer", publisher.flush())
            await _bounded("stopping the Kafka producer", producer.stop())
            publisher.spool.seal()
            publisher.label_spool.seal()
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                # this process's live gauges leave /metrics with it
                multiprocess.mark_process_dead(os.getpid())
            await _bounded("closing Redis connections", redis.aclose())

    app = FastAPI(
        title="fraudstream",
        version=VERSION,
        summary="Real-time payment fraud scoring",
        description="Send `X-API-Key` on every call but `/healthz` (and `/metrics` when "
                    "`FRAUDSTREAM_METRICS_PUBLIC` is set).",
        lifespan=lifespan,
        # The schema and its pages are for integrators, not for anyone who finds the
        # port: served only when an operator opens them (``app.openapi()`` still builds it).
        docs_url="/docs" if settings.docs_public else None,
        redoc_url="/redoc" if settings.docs_public else None,
        openapi_url="/openapi.json" if settings.docs_public else None,
    )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The offending input is not echoed back: it may be a card number.
        return JSONResponse({"detail": validation_detail(list(exc.errors()))}, status_code=422)

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        # Redis away, restarting or loading (the review queue, lists, rules, audits): a
        # 503 the caller retries, never a 500. Only the error's type: its text may name
        # an address.
        log.warning("%s %s: a store is unavailable (%s)", request.method, request.url.path,
                    type(exc).__name__)
        return JSONResponse({"detail": f"a store is unavailable ({type(exc).__name__}); "
                                       "retry"},
                            status_code=503, headers={"Retry-After": "1"})

    for error in redis_client.UNAVAILABLE:
        app.add_exception_handler(error, unavailable)

    app.include_router(router)
    app.include_router(reviews_router)
    app.include_router(admin)
    return app


def serve_app(settings: Settings | None = None) -> ScoringEdge:
    """What the server runs: the scoring route answered by the lean edge, the rest (and
    the lifespan) by FastAPI."""
    return ScoringEdge(create_app(settings))


def app_factory() -> ScoringEdge:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return serve_app()
