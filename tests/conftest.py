"""Fixtures: a real Kafka broker, a real Redis and the real stream worker, started once per
test session on free ports under a temporary home, and stopped at the end.

The cluster run (``scripts/test.sh`` runs both) sets ``FRAUDSTREAM_REDIS_CLUSTER=true`` and
``FRAUDSTREAM_TEST_KAFKA_BROKERS=3``: the same tests against a Redis Cluster of three
primaries and a Kafka of three brokers, all started by the fixtures."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from model.config import Settings

T = TypeVar("T")
KAFKA_BROKERS = int(os.environ.get("FRAUDSTREAM_TEST_KAFKA_BROKERS", "1"))


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def payment(ts: str = "2026-11-20T10:00:00Z", **kw: Any) -> dict[str, Any]:
    """A valid payment body on a new card and terminal; ``kw`` overrides fields."""
    body = {"payment_id": uid("pay"), "timestamp": ts, "card_id": uid("card"),
            "terminal_id": uid("term"), "amount": 25.0, "currency": "EUR", "channel": "pos"}
    return body | kw


def history_row(settings: Settings, payment_id: str) -> Any:
    """The payment's row in the history (the deduplicated view), or None."""
    from stores.history import HistoryStore

    rows = HistoryStore(settings.history_dir).query(
        "SELECT * FROM payments WHERE payment_id = ?", [payment_id])
    return rows.iloc[0] if len(rows) else None


def eventually(check: Callable[[], T], timeout: float = 30.0, every: float = 0.2) -> T:
    """Poll until ``check`` returns something other than None, False or 0 (and stops raising
    AssertionError); returns it."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            zero = isinstance(result, int | float) and result == 0
            if result is not None and result is not False and not zero:
                return result
        except AssertionError as exc:
            last = exc
        time.sleep(every)
    if last is not None:
        raise last
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("fraudstream-home")
    from fraudstream_dev.testenv import isolated_env

    env = {
        **isolated_env(home, "fraudstream-test", kafka_brokers=KAFKA_BROKERS),
        "FRAUDSTREAM_MODEL_POLL_SECONDS": "0.5",
        "FRAUDSTREAM_HISTORY_FLUSH_SECONDS": "0.3",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the stream worker subprocess reads the same settings
    yield Settings()
    from model.config import get_settings

    get_settings.cache_clear()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Settings]:
    """Real Kafka (KRaft) and Redis."""
    from fraudstream_dev import launcher as services

    try:
        services.start_redis(settings)
        services.start_kafka(settings)
        yield settings
    finally:
        services.stop_all(settings)


@pytest.fixture(scope="session")
def stream_worker(stack: Settings) -> Iterator[Settings]:
    from fraudstream_dev import launcher as services

    services.start_stream(stack, timeout=120)
    yield stack
    services.stream_proc(stack).stop()


@pytest.fixture()
def redis_db(stack: Settings) -> Iterator[Any]:
    """A synchronous client of the test Redis."""
    from fraudstream_dev.testenv import redis_client

    client = redis_client(stack)
    yield client
    client.close()


@pytest.fixture(scope="session")
def api_keys(settings: Settings) -> dict[str, tuple[str, str | None]]:
    """name -> (key, signing secret) of the keys the test API accepts."""
    from model.api_keys import create_key

    assert settings.api_keys_file is not None
    return {
        "all": create_key(settings.api_keys_file, "all", {"score", "labels", "admin"}),
        "scorer": create_key(settings.api_keys_file, "scorer", {"score"}),
        "signed": create_key(settings.api_keys_file, "signed", {"score"}, signing=True),
    }


@pytest.fixture()
def api_client(stream_worker: Settings, trained: str,
               api_keys: dict[str, tuple[str, str | None]]) -> Iterator[Any]:
    """The real FastAPI app (lifespan and all), talking to the real Kafka and Redis, with a
    key of every scope."""
    from fastapi.testclient import TestClient

    from api.main import serve_app

    with TestClient(serve_app(stream_worker),
                    headers={"X-API-Key": api_keys["all"][0]}) as client:
        yield client


@pytest.fixture(scope="session")
def small_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated history file, in the import format."""
    from training.simulator import SimulationConfig, simulate

    path = tmp_path_factory.mktemp("sim") / "history.parquet"
    simulate(SimulationConfig(days=30, cards=400, terminals=60, seed=3,
                              card_testing_rate=0.004, takeover_rate=0.003)).to_parquet(path)
    return path


@pytest.fixture(scope="session")
def trained(stack: Settings, small_history: Path,
            tmp_path_factory: pytest.TempPathFactory) -> str:
    """The test home's history holds the small simulated history, and a model is current:
    trained as of the small history's newest event, whatever tests wrote to the shared
    history before (payments dated today would otherwise move the split past it)."""
    from model.registry import Registry
    from stores.history import HistoryStore
    from training.dataset import load, newest_event
    from training.importer import import_history
    from training.train import TrainConfig, train

    own = HistoryStore(tmp_path_factory.mktemp("small-history"))
    import_history(own, small_history)
    cutoff = newest_event(*load(own))
    import_history(HistoryStore(stack.history_dir), small_history)
    result = train(HistoryStore(stack.history_dir), Registry(stack.models_dir),
                   TrainConfig(test_days=7, maturity_days=5, max_iter=60,
                               baselines=False, cutoff=cutoff))
    assert result.promoted
    return result.version


def cli(*args: str) -> Any:
    """``fraudstream ARGS`` run in-process, with the settings as the environment says now
    (the CLI caches them)."""
    from typer.testing import CliRunner

    from model.config import get_settings
    from ops.cli import app

    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        get_settings.cache_clear()


@pytest.fixture()
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's console as wide as a terminal: its tables not squeezed into 80 columns."""
    from ops import cli

    monkeypatch.setattr(cli.console, "width", 250)
