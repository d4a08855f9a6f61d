"""The local launcher signals only the processes it started: a pidfile names a process by
its pid and its start time, so a pid the kernel has given to another process since is left
alone by ``down``."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fraudstream_dev import launcher
from fraudstream_dev.launcher import Proc, start_time


@pytest.fixture()
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A live process this project did not start through a Proc."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_pidfile_naming_a_reused_pid_is_not_that_process(tmp_path: Path, bystander):
    started = start_time(bystander.pid)
    assert started is not None
    proc = Proc("api", tmp_path)
    proc.pidfile.parent.mkdir(parents=True)
    # The pid as a process of ours held it, started at another moment than the bystander.
    proc.pidfile.write_text(f"{bystander.pid} {started - 1}\n")

    assert proc.pid() is None and not proc.running()
    assert not proc.signal(15)
    assert not proc.stop(timeout=1)
    assert bystander.poll() is None, "an unrelated process was signalled"


def test_down_leaves_a_reused_pid_alone(tmp_path: Path, bystander):
    from model.config import Settings

    settings = Settings(home=tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    started = start_time(bystander.pid)
    assert started is not None
    for name in ("api", "stream", "kafka", "redis", "retrain"):
        (run / f"{name}.pid").write_text(f"{bystander.pid} {started + 7}\n")

    assert launcher.stop_all(settings) == []
    assert all(pid is None for pid in launcher.status(settings).values())
    assert bystander.poll() is None, "down signalled an unrelated process"


def test_a_pidfile_without_a_start_time_names_nothing(tmp_path: Path, bystander):
    proc = Proc("stream", tmp_path)
    proc.pidfile.parent.mkdir(parents=True)
    proc.pidfile.write_text(str(bystander.pid))  # the format before start times were kept

    assert proc.pid() is None
    assert not proc.stop(timeout=1)
    assert bystander.poll() is None


def test_what_was_started_is_stopped(tmp_path: Path):
    proc = Proc("retrain", tmp_path)
    pid = proc.spawn(["sleep", "60"])

    recorded_pid, recorded_start = proc.pidfile.read_text().split()
    assert int(recorded_pid) == pid and int(recorded_start) == start_time(pid)
    assert proc.pid() == pid
    assert proc.stop(timeout=5)
    assert start_time(pid) is None  # gone (and reaped), not merely signalled
    assert not proc.pidfile.exists() and proc.pid() is None


def test_a_child_that_ignores_sigterm_is_killed(tmp_path: Path):
    proc = Proc("stream", tmp_path)
    pid = proc.spawn(["sh", "-c", "trap '' TERM; sleep 60 & wait"])
    assert proc.stop(timeout=0.5)
    assert start_time(pid) is None


def test_start_time_reads_a_command_name_with_spaces_and_parentheses(tmp_path: Path):
    # The kernel shows the name of the executable: a link named like this one.
    odd = tmp_path / "a ) b"
    odd.symlink_to("/bin/sleep")
    proc = subprocess.Popen([str(odd), "60"])
    try:
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        assert "(a ) b)" in stat
        expected = int(stat.rsplit(") ", 1)[1].split()[19])
        assert start_time(proc.pid) == expected
    finally:
        proc.kill()
        proc.wait()
