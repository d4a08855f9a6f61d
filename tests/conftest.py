"""Fixtures: a real Kafka broker and a real Redis, started once per test session on free
ports under a temporary home, and stopped at the end; per test module, a home of its own
(history, registry, spool), Kafka topics and a consumer group of its own, an emptied Redis
and its own stream worker, so that no module sees what another wrote or broke.

The cluster run (``scripts/test.sh`` runs both) sets ``FRAUDSTREAM_REDIS_CLUSTER=true`` and
``FRAUDSTREAM_TEST_KAFKA_BROKERS=3``: the same tests against a Redis Cluster of three
primaries and a Kafka of three brokers, all started by the fixtures."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from model.config import Settings
from model.registry import Registry

T = TypeVar("T")
KAFKA_BROKERS = int(os.environ.get("FRAUDSTREAM_TEST_KAFKA_BROKERS", "1"))


# The pseudonyms' key of imports into histories of a test's own (the API and the shared
# trained history use the one generated in the session's secrets: ``stores.pii_key``).
PII_KEY = b"the-tests-own-pseudonym-key-0001"


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


def dummy_model(registry: Registry, name: str) -> str:
    """A registered version (not promoted) of a stand-in model: for what the registry and
    the worker do with versions, not for scoring."""
    return registry.register({"model": name}, {"features": ["amount"],
                                               "thresholds": {"review": 0.5, "decline": 0.9}}
                             ).version


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


# What a module changes the settings to: its own home (history, registry, spool, logs) and
# its own Kafka topics and consumer group; the servers' directories are the session's.
MODULE_ENV = ("FRAUDSTREAM_HOME", "FRAUDSTREAM_STREAM_ID", "FRAUDSTREAM_TOPIC_SCORED",
              "FRAUDSTREAM_TOPIC_LABELS", "FRAUDSTREAM_TOPIC_DEAD_LETTERS", "FAUST_DATADIR")
# Shared by every module's home: the pid files (one ``fraudstream down`` for the session),
# the brokers' and Redis's data and configuration, the API keys.
SHARED_DIRS = ("run", "kafka", "redis", "secrets")


def _set_env(env: dict[str, str]) -> dict[str, str | None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the processes the tests start read the same settings
    return saved


def _restore_env(saved: dict[str, str | None]) -> None:
    from model.config import get_settings

    get_settings.cache_clear()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def servers_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The session's settings: the servers' ports and the home their data lives under."""
    home = tmp_path_factory.mktemp("fraudstream-home")
    from fraudstream_dev.testenv import isolated_env

    env = {
        **isolated_env(home, "fraudstream-test", kafka_brokers=KAFKA_BROKERS),
        "FRAUDSTREAM_MODEL_POLL_SECONDS": "0.5",
        "FRAUDSTREAM_HISTORY_FLUSH_SECONDS": "0.3",
    }
    saved = _set_env(env)
    for name in SHARED_DIRS:
        (home / name).mkdir(parents=True, exist_ok=True)
    yield Settings()
    _restore_env(saved)


@pytest.fixture(scope="session")
def servers(servers_settings: Settings) -> Iterator[Settings]:
    """Real Kafka (KRaft) and Redis, for the whole session (a broker takes seconds to
    start); every module gets topics of its own and an empty Redis (``stack``)."""
    from fraudstream_dev import launcher as services

    try:
        services.start_redis(servers_settings)
        services.start_kafka(servers_settings)
        yield servers_settings
    finally:
        services.stop_all(servers_settings)


@pytest.fixture(scope="module")
def settings(servers_settings: Settings, request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The module's settings: a home of its own (history, registry, spool, logs) and Kafka
    topics and a stream id of its own, on the session's servers. Nothing a module writes
    is seen by another."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    home = tmp_path_factory.mktemp(f"home-{name}")
    for shared in SHARED_DIRS:
        (home / shared).symlink_to(servers_settings.home / shared, target_is_directory=True)
    saved = _set_env({
        "FRAUDSTREAM_HOME": str(home),
        "FRAUDSTREAM_STREAM_ID": f"fraudstream-test-{name}",
        "FRAUDSTREAM_TOPIC_SCORED": f"fraudstream.{name}.payments.scored",
        "FRAUDSTREAM_TOPIC_LABELS": f"fraudstream.{name}.labels",
        "FRAUDSTREAM_TOPIC_DEAD_LETTERS": f"fraudstream.{name}.dead-letters",
        # faust's own directory, else ``<stream id>-data`` in the current directory: one
        # per module left in the checkout
        "FAUST_DATADIR": str(home / "faust"),
    })
    assert set(saved) == set(MODULE_ENV)
    from model.config import get_settings

    get_settings.cache_clear()
    yield Settings()
    _restore_env(saved)


@pytest.fixture(scope="module")
def stack(settings: Settings, servers: Settings) -> Settings:
    """Real Kafka and Redis, as this module finds them: running (a server an earlier
    module's test left down is started again), the module's topics created, Redis empty,
    and none of the project's own processes left over from an earlier module."""
    from fraudstream_dev import launcher as services

    for proc in (services.retrain_proc(settings), services.api_proc(settings),
                 services.stream_proc(settings)):
        proc.stop()
    services.start_redis(settings)
    services.start_kafka(settings)  # creates the module's topics
    for node in services.redis_nodes(settings):
        try:
            node.flushall()
        finally:
            node.close()
    return settings


@pytest.fixture(scope="module")
def stream_worker(stack: Settings) -> Iterator[Settings]:
    """The module's stream worker, on the module's topics and history."""
    from fraudstream_dev import launcher as services

    services.start_stream(stack, timeout=120)
    try:
        yield stack
    finally:
        services.stream_proc(stack).stop()


@pytest.fixture()
def redis_db(stack: Settings) -> Iterator[Any]:
    """A synchronous client of the test Redis."""
    from fraudstream_dev.testenv import redis_client

    client = redis_client(stack)
    yield client
    client.close()


@pytest.fixture(scope="session")
def api_keys(servers_settings: Settings) -> dict[str, tuple[str, str | None]]:
    """name -> (key, signing secret) of the keys the test API accepts (in the session's
    secrets, which every module's home shares)."""
    from model.api_keys import API_LABEL_SOURCES, create_key

    assert servers_settings.api_keys_file is not None
    keys = servers_settings.api_keys_file
    return {
        "all": create_key(keys, "all", {"score", "labels", "admin", "metrics"},
                          label_sources=set(API_LABEL_SOURCES)),
        "feed": create_key(keys, "feed", {"labels"}),  # the default sources
        "casetool": create_key(keys, "casetool", {"labels"}, label_sources={"analyst"}),
        "scorer": create_key(keys, "scorer", {"score"}),
        "signed": create_key(keys, "signed", {"score"}, signing=True),
        "signed_admin": create_key(keys, "signed_admin", {"score", "admin"}, signing=True),
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
def trained_home(small_history: Path, tmp_path_factory: pytest.TempPathFactory,
                 servers_settings: Settings) -> tuple[Path, Path, str]:
    """(history dir, registry dir, version): the small history imported and a model
    trained on it and promoted, once per session, in directories no test writes to. Its
    e-mails and IPs, if any, under the key the test API uses."""
    from model.registry import Registry
    from stores import pii_key
    from stores.history import HistoryStore
    from training.importer import import_history
    from training.train import TrainConfig, train

    root = tmp_path_factory.mktemp("trained")
    history, registry = root / "history", root / "registry"
    import_history(HistoryStore(history), small_history, pii_key=pii_key.load(servers_settings))
    result = train(HistoryStore(history), Registry(registry),
                   TrainConfig(test_days=7, maturity_days=5, max_iter=60, baselines=False))
    assert result.promoted
    return history, registry, result.version


@pytest.fixture(scope="module")
def trained(stack: Settings, trained_home: tuple[Path, Path, str]) -> str:
    """The module's history holds the small simulated history, and the model trained on it
    alone is current (a copy of the session's: trained once)."""
    from model.registry import Registry

    history, registry, version = trained_home
    shutil.copytree(history, stack.history_dir, dirs_exist_ok=True)
    own = Registry(stack.models_dir)
    if own.current_version() is None and not own.versions():
        shutil.copytree(registry, stack.models_dir, dirs_exist_ok=True)
    else:  # the module's tests registered models already: this one joins and leads them
        shutil.copytree(registry / "models" / version, own.models / version,
                        dirs_exist_ok=True)
        own.promote(version, by="tests", why="the tests' trained model")
    assert own.current_version() == version
    return version


def import_ecom_history(settings: Settings, days: int, cards: int, terminals: int,
                        seed: int) -> None:
    """A simulated card-not-present book (the ``ecom`` preset, from 2026-10-01) imported
    into the settings' history, its e-mails and IPs under the installation's key."""
    from datetime import UTC, datetime

    from stores import pii_key
    from stores.history import HistoryStore
    from training.importer import import_history
    from training.simulator import SimulationConfig, simulate

    sim = simulate(SimulationConfig.for_preset(
        "ecom", days=days, cards=cards, terminals=terminals, seed=seed,
        start=datetime(2026, 10, 1, tzinfo=UTC)))
    path = settings.home / f"ecom-{seed}.parquet"
    sim.to_parquet(path)
    import_history(HistoryStore(settings.history_dir), path, pii_key=pii_key.load(settings))


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
