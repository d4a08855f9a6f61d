"""The FastAPI application: ``uvicorn api.main:app`` or ``fraudstream api``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from redis.asyncio import Redis

from api.deps import Services
from api.model_holder import ModelHolder
from api.publisher import Publisher
from api.routes import router
from model.config import Settings, get_settings
from model.online_store import OnlineStore
from model.registry import Registry

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        password = settings.redis_password.get_secret_value() if settings.redis_password else None
        redis = Redis.from_url(settings.redis_url, password=password,
                               socket_timeout=0.25, socket_connect_timeout=0.25)
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=15000,
        )
        await producer.start()
        holder = ModelHolder(Registry(settings.models_dir))
        await holder.refresh()
        watcher = asyncio.create_task(holder.watch(settings.model_poll_seconds))
        app.state.services = Services(
            settings=settings,
            store=OnlineStore(redis),
            models=holder,
            publisher=Publisher(producer, settings.topic_scored, settings.topic_labels),
        )
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            # stop() flushes what is buffered, so a clean shutdown loses no scored payment.
            await producer.stop()
            await redis.aclose()

    app = FastAPI(
        title="fraudstream",
        version="0.1.0",
        summary="Real-time payment fraud scoring",
        lifespan=lifespan,
    )
    app.include_router(router)
    return app


def app_factory() -> FastAPI:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return create_app()
