"""Start, check and stop the real components: Kafka (KRaft), Redis, the stream worker, the API.

Each process runs detached with its log under ``<home>/logs`` and its pid under
``<home>/run``, so ``fraudstream down`` can stop what ``fraudstream up`` started.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from model.config import Settings

KAFKA_VERSION = "4.1.1"
POM = Path(__file__).resolve().parent.parent / "scripts" / "kafka" / "pom.xml"


class ServiceError(RuntimeError):
    pass


@dataclass(frozen=True)
class Proc:
    name: str
    home: Path

    @property
    def pidfile(self) -> Path:
        return self.home / "run" / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return self.home / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        # A zombie child still answers kill(0); it is not running. The zombie may be reaped
        # while its stat is read (by another thread's Popen): the kernel then answers ESRCH.
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[-1]
        except (FileNotFoundError, ProcessLookupError):
            return None
        return None if state.startswith("Z") else pid

    def running(self) -> bool:
        return self.pid() is not None

    def spawn(self, argv: list[str], env: dict[str, str] | None = None, nice: int = 0) -> int:
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.logfile, "ab")  # noqa: SIM115 -- handed to the child
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )
        log.close()
        self.pidfile.write_text(str(proc.pid))
        return proc.pid

    def stop(self, timeout: float = 30.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() is not None:
            _reap()
            time.sleep(0.1)
        if self.pid() is not None:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        _reap()
        self.pidfile.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def wait_until(
    check: Callable[[], bool], what: str, timeout: float, proc: Proc | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and not proc.running():
            raise ServiceError(f"{what} exited during start-up; log tail:\n{proc.log_tail()}")
        time.sleep(0.25)
    tail = f"; log tail:\n{proc.log_tail()}" if proc else ""
    raise ServiceError(f"{what} not ready after {timeout:.0f}s{tail}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def isolated_env(home: Path, stream_id: str) -> dict[str, str]:
    """Settings (as FRAUDSTREAM_* variables) for a whole stack of its own: its own home
    and free ports, so it runs beside any other (tests, benchmarks)."""
    api_port = free_port()
    return {
        "FRAUDSTREAM_HOME": str(home),
        "FRAUDSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "FRAUDSTREAM_KAFKA_CONTROLLER_PORT": str(free_port()),
        "FRAUDSTREAM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "FRAUDSTREAM_STREAM_WEB_PORT": str(free_port()),
        "FRAUDSTREAM_STREAM_ID": stream_id,
        "FRAUDSTREAM_API_PORT": str(api_port),
        "FRAUDSTREAM_API_URL": f"http://127.0.0.1:{api_port}",
    }


# ---- Kafka ---------------------------------------------------------------------------
def kafka_libs_dir() -> Path:
    root = os.environ.get("FRAUDSTREAM_KAFKA_LIBS")
    if root:
        return Path(root)
    return Path.home() / ".cache" / "fraudstream" / f"kafka-{KAFKA_VERSION}" / "libs"


def ensure_kafka_libs() -> Path:
    """Assemble the broker's jars with Maven once; later calls reuse them."""
    libs = kafka_libs_dir()
    if any(libs.glob("kafka_2.13-*.jar")):
        return libs
    if shutil.which("mvn") is None:
        raise ServiceError("Maven (mvn) is needed once to fetch the Kafka jars; install it")
    tmp = libs.with_name(libs.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
         f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"],
        check=True,
    )
    tmp.replace(libs)
    return libs


def _host_port(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return host or "127.0.0.1", int(port)


def kafka_proc(settings: Settings) -> Proc:
    return Proc("kafka", settings.home)


def _kafka_properties(settings: Settings, data: Path) -> str:
    host, port = _host_port(settings.kafka_bootstrap)
    cport = settings.kafka_controller_port
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{host}:{cport}",
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
            f"advertised.listeners=PLAINTEXT://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={data}",
            f"num.partitions={settings.kafka_partitions}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "log.retention.hours=720",
            "",
        ]
    )


_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders><Console name="out" target="SYSTEM_OUT">
    <PatternLayout pattern="[%d] %p %m (%c)%n"/></Console></Appenders>
  <Loggers>
    <Logger name="kafka" level="WARN"/><Logger name="org.apache.kafka" level="WARN"/>
    <Root level="INFO"><AppenderRef ref="out"/></Root>
  </Loggers>
</Configuration>
"""


def start_kafka(settings: Settings, timeout: float = 90.0) -> None:
    proc = kafka_proc(settings)
    if proc.running():
        wait_kafka_ready(settings, timeout, proc)
        return
    libs = ensure_kafka_libs()
    base = settings.home / "kafka"
    data = base / "data"
    base.mkdir(parents=True, exist_ok=True)
    props = base / "server.properties"
    props.write_text(_kafka_properties(settings, data))
    (base / "log4j2.xml").write_text(_LOG4J2)
    java = ["java", "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={base / 'log4j2.xml'}", "-cp", f"{libs}/*"]
    if not (data / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[:22]
        subprocess.run(
            [*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
             "--ignore-formatted"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    # Off the scoring path (the API's producer does not wait for it): when the cores are
    # contended, the API and Redis go first.
    proc.spawn([*java, "kafka.Kafka", str(props)], nice=settings.background_nice)
    wait_kafka_ready(settings, timeout, proc)


def wait_kafka_ready(settings: Settings, timeout: float, proc: Proc | None = None) -> None:
    """Ready means the broker answers requests: it creates (or lists) our topics."""
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # refused connections are expected while it starts
    try:
        wait_until(lambda: kafka_answers(settings), "Kafka", timeout, proc)
    finally:
        quiet.setLevel(level)


def kafka_answers(settings: Settings) -> bool:
    try:
        asyncio.run(asyncio.wait_for(ensure_topics(settings), timeout=10))
        return True
    except Exception:
        return False


async def ensure_topics(settings: Settings) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap,
                                request_timeout_ms=5000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name=t, num_partitions=settings.kafka_partitions, replication_factor=1)
            for t in (settings.topic_scored, settings.topic_labels)
            if t not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(wanted)
        described = await admin.describe_topics([settings.topic_scored, settings.topic_labels])
        for topic in described:
            if topic.get("error_code", 0) != 0 or not topic.get("partitions"):
                raise ServiceError(f"topic {topic.get('topic')} not ready")
            if any(p.get("leader", -1) < 0 for p in topic["partitions"]):
                raise ServiceError(f"topic {topic.get('topic')} has no leader yet")
    finally:
        await admin.close()


# ---- Redis ---------------------------------------------------------------------------
def redis_proc(settings: Settings) -> Proc:
    return Proc("redis", settings.home)


def start_redis(settings: Settings, timeout: float = 30.0) -> None:
    proc = redis_proc(settings)
    if not proc.running():
        if shutil.which("redis-server") is None:
            raise ServiceError("redis-server not found: install the OS package redis-server")
        url = urlparse(settings.redis_url)
        data = settings.home / "redis"
        data.mkdir(parents=True, exist_ok=True)
        conf = data / "redis.conf"
        lines = [
            f"bind {url.hostname or '127.0.0.1'}",
            f"port {url.port or 6379}",
            f"dir {data.resolve()}",
            "appendonly yes",
            "appendfsync everysec",
            "save 60 1000",
            "daemonize no",
        ]
        if settings.redis_password is not None:
            lines.append(f"requirepass {settings.redis_password.get_secret_value()}")
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o600)
        proc.spawn(["redis-server", str(conf)])
    wait_until(lambda: _redis_answers(settings), "Redis", timeout, proc)


def redis_client(settings: Settings):  # type: ignore[no-untyped-def]
    import redis

    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return redis.Redis.from_url(settings.redis_url, password=password)


def _redis_answers(settings: Settings) -> bool:
    try:
        return bool(redis_client(settings).ping())
    except Exception:
        return False


# ---- fraudstream's own processes -----------------------------------------------------
def stream_proc(settings: Settings) -> Proc:
    return Proc("stream", settings.home)


def api_proc(settings: Settings) -> Proc:
    return Proc("api", settings.home)


def retrain_proc(settings: Settings) -> Proc:
    return Proc("retrain", settings.home)


def start_retrain(settings: Settings) -> None:
    """The retrain worker: in the background, at the lowest priority (training uses every
    core it gets, and it can wait)."""
    proc = retrain_proc(settings)
    if not proc.running():
        proc.spawn(_cli("retrain-worker"), nice=19)
    time.sleep(0.5)
    if not proc.running():
        raise RuntimeError(f"retrain worker exited at start:\n{proc.log_tail()}")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ops.cli", *args]


def start_stream(settings: Settings, timeout: float = 90.0) -> None:
    proc = stream_proc(settings)
    if not proc.running():
        # Behind the API for CPU, like Kafka: it catches up on what it lagged once the
        # burst is over.
        proc.spawn(_cli("stream"), nice=settings.background_nice)
    wait_until(lambda: _http_ok(f"http://127.0.0.1:{settings.stream_web_port}/ready/"),
               "stream worker", timeout, proc)


def start_api(settings: Settings, timeout: float = 60.0) -> None:
    proc = api_proc(settings)
    if not proc.running():
        proc.spawn(_cli("api"))
    wait_until(lambda: _http_ok(f"{settings.api_url}/healthz"), "API", timeout, proc)


def _http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stop_all(settings: Settings) -> list[str]:
    stopped = []
    for proc in (retrain_proc(settings), api_proc(settings), stream_proc(settings),
                 kafka_proc(settings), redis_proc(settings)):
        if proc.stop():
            stopped.append(proc.name)
    return stopped


def status(settings: Settings) -> dict[str, int | None]:
    return {
        p.name: p.pid()
        for p in (kafka_proc(settings), redis_proc(settings), stream_proc(settings),
                  api_proc(settings), retrain_proc(settings))
    }
