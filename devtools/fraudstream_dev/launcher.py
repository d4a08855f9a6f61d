"""Start, check and stop the real components on this machine: Kafka (KRaft), Redis, the
stream worker, the API, the retrain worker.

Each process runs detached with its log under ``<home>/logs`` and its pid and start time
under ``<home>/run``, so ``fraudstream down`` can stop what ``fraudstream up`` started, and
nothing else: a pid the kernel has since given to another process is left alone.
"""

from __future__ import annotations

import base64
import json
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
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from model.config import Settings
from stores import topics

if TYPE_CHECKING:  # imported where a client is made: the launcher itself needs no Redis
    import redis

KAFKA_VERSION = "4.1.1"
# In the repository beside this distribution: devtools is installed editable from it.
POM = Path(__file__).resolve().parents[2] / "scripts" / "kafka" / "pom.xml"


class ServiceError(RuntimeError):
    pass


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks after boot, /proc/<pid>/stat field 22), or None
    if there is no such process or it is a zombie (exited, not reaped: not running).

    A pid names a process only while it lives; with its start time it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: reaped while being read
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ")" itself.
    fields = stat.rpartition(") ")[2].split()
    if not fields or fields[0] == "Z":
        return None
    return int(fields[22 - 3])


@dataclass(frozen=True)
class Proc:
    """A process of the local stack, known by its pidfile: "<pid> <start time>"."""

    name: str
    home: Path

    @property
    def pidfile(self) -> Path:
        return self.home / "run" / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return self.home / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid, if the process the pidfile names still runs: a process at that pid
        with another start time (the pid reused) is not it. A pidfile without a start
        time (written before they were kept) names nothing that can be told apart, so
        nothing."""
        try:
            pid_text, started_text = self.pidfile.read_text().split()
            pid, started = int(pid_text), int(started_text)
        except (FileNotFoundError, ValueError):
            return None
        return pid if start_time(pid) == started else None

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
        # Read while the child cannot have been reaped yet (nothing waited for it): an
        # exited child is a zombie, whose start time reads as None, so "0": not running.
        started = start_time(proc.pid) or 0
        partial = self.pidfile.with_suffix(".partial")
        partial.write_text(f"{proc.pid} {started}\n")
        partial.replace(self.pidfile)  # a reader sees the old file or the whole new one
        return proc.pid

    def signal(self, sig: int) -> bool:
        """Send ``sig`` if the process the pidfile names runs; False if it does not.

        Through a pidfd, opened before the identity is checked: it keeps naming the process
        checked even if that exits and its pid is reused before the signal goes."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        except OSError:  # a kernel without pidfds (before 5.3): checked, then signalled
            try:
                os.kill(pid, sig)
                return True
            except ProcessLookupError:
                return False
        try:
            if self.pid() != pid:  # exited (and maybe reused) between the reads
                return False
            signal.pidfd_send_signal(fd, sig)
            return True
        except ProcessLookupError:
            return False
        finally:
            os.close(fd)

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``; True if it was running."""
        return bool(stop_together([self], timeout))

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def stop_together(procs: list[Proc], timeout: float = 30.0) -> list[Proc]:
    """SIGTERM to every one at once, then SIGKILL to those still running after ``timeout``;
    the ones that were running. At once, because Kafka's combined brokers and controllers
    need a quorum to shut down cleanly: stopped one after the other, the last one waits
    for controllers already gone (30 s, then the kill), and all together take 7 s."""
    running = [proc for proc in procs if proc.signal(signal.SIGTERM)]
    for proc in procs:
        if proc not in running:
            proc.pidfile.unlink(missing_ok=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(proc.pid() is not None for proc in running):
        _reap()
        time.sleep(0.1)
    if any([proc.signal(signal.SIGKILL) for proc in running]):
        time.sleep(0.2)
    _reap()
    for proc in running:
        proc.pidfile.unlink(missing_ok=True)
    return running


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


def kafka_addresses(settings: Settings) -> list[tuple[str, int]]:
    """The brokers of ``kafka_bootstrap``: started here, one broker per address."""
    out = []
    for address in settings.kafka_bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        out.append((host or "127.0.0.1", int(port)))
    return out


def kafka_proc(settings: Settings) -> Proc:
    return Proc("kafka", settings.home)


def kafka_node_procs(settings: Settings) -> list[Proc]:
    """The brokers this project starts (the first is ``kafka_proc``, the one a fault
    injector kills)."""
    n = len(kafka_addresses(settings))
    return [kafka_proc(settings)] + [Proc(f"kafka-{i}", settings.home) for i in range(1, n)]


def _kafka_controller_ports(settings: Settings) -> list[int]:
    """A controller port per broker, chosen once and kept (the quorum's addresses)."""
    n = len(kafka_addresses(settings))
    if n == 1:
        return [settings.kafka_controller_port]
    saved = settings.home / "kafka" / "controller-ports.json"
    if saved.exists():
        return [int(p) for p in json.loads(saved.read_text())]
    ports = [settings.kafka_controller_port] + [free_port() for _ in range(1, n)]
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(ports))
    return ports


def _kafka_properties(settings: Settings, index: int, data: Path) -> str:
    addresses = kafka_addresses(settings)
    host, port = addresses[index]
    controllers = _kafka_controller_ports(settings)
    cport = controllers[index]
    voters = ",".join(f"{i + 1}@{h}:{c}"
                      for i, ((h, _), c) in enumerate(zip(addresses, controllers, strict=True)))
    factor, min_isr = settings.kafka_replication
    return "\n".join(
        [
            "process.roles=broker,controller",
            f"node.id={index + 1}",
            f"controller.quorum.voters={voters}",
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
            f"advertised.listeners=PLAINTEXT://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={data}",
            f"num.partitions={settings.kafka_partitions}",
            f"default.replication.factor={factor}",
            f"min.insync.replicas={min_isr}",
            f"offsets.topic.replication.factor={factor}",
            "offsets.topic.num.partitions=4",
            f"transaction.state.log.replication.factor={factor}",
            f"transaction.state.log.min.isr={min_isr}",
            f"share.coordinator.state.topic.replication.factor={factor}",
            f"share.coordinator.state.topic.min.isr={min_isr}",
            # An acknowledged write is on min.insync.replicas brokers; a replica that was
            # not in sync never becomes leader (the default, stated).
            "unclean.leader.election.enable=false",
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
    """The brokers of ``kafka_bootstrap`` (KRaft, each also a controller of the quorum),
    those not running; then wait until they serve our topics."""
    procs = kafka_node_procs(settings)
    if all(p.running() for p in procs):
        wait_kafka_ready(settings, timeout, procs[0], brokers=len(procs))
        return
    libs = ensure_kafka_libs()
    base = settings.home / "kafka"
    base.mkdir(parents=True, exist_ok=True)
    (base / "log4j2.xml").write_text(_LOG4J2)
    java = ["java", "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={base / 'log4j2.xml'}", "-cp", f"{libs}/*"]
    id_file = base / "cluster.id"
    if not id_file.exists():
        id_file.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[:22])
    cluster_id = id_file.read_text().strip()
    for index, proc in enumerate(procs):
        if proc.running():
            continue
        # The first broker keeps the single broker's layout (an existing home reads on).
        home = base if index == 0 else base / f"broker-{index}"
        data = home / "data"
        home.mkdir(parents=True, exist_ok=True)
        props = home / "server.properties"
        props.write_text(_kafka_properties(settings, index, data))
        if not (data / "meta.properties").exists():
            subprocess.run(
                # "=": an id may begin with "-" (base64), not to be read as an option
                [*java, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                 "-c", str(props), "--ignore-formatted"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        # Off the scoring path (the API's producer does not wait for it): when the cores
        # are contended, the API and Redis go first.
        proc.spawn([*java, "kafka.Kafka", str(props)], nice=settings.background_nice)
    wait_kafka_ready(settings, timeout, procs[0], brokers=len(procs))


def stop_kafka(settings: Settings) -> None:
    """Every broker this project started."""
    stop_together(kafka_node_procs(settings))


def wait_kafka_ready(settings: Settings, timeout: float, proc: Proc | None = None,
                     brokers: int = 1) -> None:
    """Ready means the brokers answer requests: they create (or list) our topics, every
    partition's leader listens, and at least ``brokers`` of them have joined."""
    with topics.quiet_kafka_client():
        wait_until(lambda: topics.kafka_answers(settings, brokers), "Kafka", timeout, proc)


# ---- Redis ---------------------------------------------------------------------------
def redis_proc(settings: Settings) -> Proc:
    return Proc("redis", settings.home)


def redis_node_procs(settings: Settings) -> list[Proc]:
    """The Redis processes this project starts: one, or a cluster's primaries (the first
    is ``redis_proc``, the one a fault injector kills)."""
    if not settings.redis_cluster:
        return [redis_proc(settings)]
    return [redis_proc(settings)] + [Proc(f"redis-{i}", settings.home)
                                     for i in range(1, settings.redis_cluster_nodes)]


def redis_ports(settings: Settings) -> list[tuple[int, int]]:
    """(port, cluster bus port) per node, chosen once and kept: a restarted node comes
    back where the others expect it."""
    url = urlparse(settings.redis_url)
    if not settings.redis_cluster:
        return [(url.port or 6379, 0)]
    saved = settings.home / "redis" / "ports.json"
    if saved.exists():
        kept = [(int(port), int(bus)) for port, bus in json.loads(saved.read_text())]
        if kept[0][0] != (url.port or 6379):
            raise ServiceError(f"{saved.parent} holds a cluster whose first node is on port "
                               f"{kept[0][0]}, not the port of FRAUDSTREAM_REDIS_URL")
        return kept
    ports = [(url.port or 6379, free_port())]
    ports += [(free_port(), free_port()) for _ in range(1, settings.redis_cluster_nodes)]
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(ports))
    return ports


def start_redis(settings: Settings, timeout: float = 30.0) -> None:
    """Redis, or with ``redis_cluster`` a Redis Cluster of ``redis_cluster_nodes``
    primaries on this machine (created the first time)."""
    if shutil.which("redis-server") is None:
        raise ServiceError("redis-server not found: install the OS package redis-server")
    host = urlparse(settings.redis_url).hostname or "127.0.0.1"
    nodes = list(zip(redis_node_procs(settings), redis_ports(settings), strict=True))
    for i, (proc, (port, bus)) in enumerate(nodes):
        if proc.running():
            continue
        data = settings.home / "redis" / (f"node-{i}" if settings.redis_cluster else "")
        data.mkdir(parents=True, exist_ok=True)
        conf = data / "redis.conf"
        lines = [
            f"bind {host}",
            f"port {port}",
            f"dir {data.resolve()}",
            "appendonly yes",
            "appendfsync everysec",
            "save 60 1000",
            "daemonize no",
        ]
        if settings.redis_cluster:
            # No replicas here: a primary down leaves its slots unserved until it is back,
            # and the others go on serving theirs.
            lines += ["cluster-enabled yes", f"cluster-port {bus}",
                      "cluster-config-file nodes.conf", "cluster-node-timeout 5000",
                      "cluster-require-full-coverage no"]
        if settings.redis_password is not None:
            secret = settings.redis_password.get_secret_value()
            lines += [f"requirepass {secret}", f"masterauth {secret}"]
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o600)
        proc.spawn(["redis-server", str(conf)])
    for proc, (port, _) in nodes:
        wait_until(partial(_redis_node_answers, settings, host, port),
                   f"Redis on port {port}", timeout, proc)
    if settings.redis_cluster:
        _create_cluster(settings, host, [port for _, (port, _) in nodes], timeout)


def stop_redis(settings: Settings) -> None:
    """Every Redis process this project started (each node of a local cluster)."""
    for proc in redis_node_procs(settings):
        proc.stop()


def redis_nodes(settings: Settings) -> list[redis.Redis]:
    """A synchronous client of each server (each node of a local cluster)."""
    host = urlparse(settings.redis_url).hostname or "127.0.0.1"
    return [redis_node(settings, host, port) for port, _ in redis_ports(settings)]


def redis_node(settings: Settings, host: str, port: int) -> redis.Redis:
    import redis

    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return redis.Redis(host=host, port=port, password=password, socket_timeout=2)


def _redis_node_answers(settings: Settings, host: str, port: int) -> bool:
    try:
        return bool(redis_node(settings, host, port).ping())
    except Exception:
        return False


def _create_cluster(settings: Settings, host: str, ports: list[int], timeout: float) -> None:
    first = redis_node(settings, host, ports[0])
    if int(first.cluster("info")["cluster_slots_assigned"]) == 0:
        env = {**os.environ}
        if settings.redis_password is not None:  # through the environment, not argv
            env["REDISCLI_AUTH"] = settings.redis_password.get_secret_value()
        done = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"{host}:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise ServiceError(f"redis-cli --cluster create failed: {done.stdout[-2000:]}")

    def every_node_ok() -> bool:
        try:
            return all(redis_node(settings, host, p).cluster("info")["cluster_state"] == "ok"
                       for p in ports)
        except Exception:
            return False

    wait_until(every_node_ok, "Redis Cluster", timeout)


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
    wait_until(lambda: http_ok(f"http://127.0.0.1:{settings.stream_web_port}/ready/"),
               "stream worker", timeout, proc)


def start_api(settings: Settings, timeout: float = 60.0) -> None:
    proc = api_proc(settings)
    if not proc.running():
        proc.spawn(_cli("api"))
    wait_until(lambda: http_ok(f"{settings.api_url}/healthz"), "API", timeout, proc)


def http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stop_all(settings: Settings) -> list[str]:
    # The writers first, so that nothing they hold is refused by a store already gone.
    stopped = []
    for group in ([retrain_proc(settings), api_proc(settings), stream_proc(settings)],
                  kafka_node_procs(settings), redis_node_procs(settings)):
        stopped += [proc.name for proc in stop_together(group)]
    return stopped


def status(settings: Settings) -> dict[str, int | None]:
    return {
        p.name: p.pid()
        for p in (*kafka_node_procs(settings), *redis_node_procs(settings), stream_proc(settings),
                  api_proc(settings), retrain_proc(settings))
    }
