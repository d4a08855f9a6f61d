"""``fraudstream`` takes the commands of other distributions from the entry-point group
``fraudstream.commands``: the development tools add ``up``, ``down`` and ``status``; without
them those commands are absent, and the product never imports them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import typer.main

LAUNCHER_COMMANDS = {"up", "down", "status"}

# ``fraudstream`` as it is where the development tools are not installed: the entry-point
# group answers nothing.
WITHOUT_DEVTOOLS = """
import importlib.metadata as md
import json
import sys

everything = md.entry_points
md.entry_points = lambda **select: (md.EntryPoints(()) if select.get("group") ==
                                    "fraudstream.commands" else everything(**select))
import typer.main
from typer.testing import CliRunner

from ops.cli import app

runner = CliRunner()
print(json.dumps({
    "commands": sorted(typer.main.get_command(app).commands),
    "help": runner.invoke(app, ["--help"], terminal_width=200).output,
    "up_exit": runner.invoke(app, ["up"]).exit_code,
    "devtools_imported": sorted(m for m in sys.modules if m.split(".")[0] == "fraudstream_dev"),
}))
"""


def test_the_development_tools_add_their_commands():
    from ops.cli import app

    commands = typer.main.get_command(app).commands
    assert set(commands) >= LAUNCHER_COMMANDS
    assert commands["up"].callback.__module__ == "fraudstream_dev.commands"


def test_without_the_development_tools_their_commands_are_absent():
    done = subprocess.run([sys.executable, "-c", WITHOUT_DEVTOOLS], capture_output=True,
                          text=True, env=os.environ, timeout=120, check=True)
    seen = json.loads(done.stdout)
    assert not LAUNCHER_COMMANDS & set(seen["commands"])
    assert {"api", "stream", "train", "replay", "history", "model"} <= set(seen["commands"])
    shown = {line.split()[1] for line in seen["help"].splitlines()
             if line.startswith("│ ") and len(line.split()) > 2}
    assert "api" in shown and not LAUNCHER_COMMANDS & shown
    assert seen["up_exit"] == 2  # "No such command"
    assert seen["devtools_imported"] == []


BROKEN_PLUGIN = """
import importlib.metadata as md

everything = md.entry_points
broken = md.EntryPoints([md.EntryPoint(name="broken", value="no_such_module:register",
                                       group="fraudstream.commands")])
md.entry_points = lambda **select: (broken if select.get("group") == "fraudstream.commands"
                                    else everything(**select))
from ops.cli import main

main()
"""


def test_a_plugin_that_fails_to_load_leaves_the_service_commands():
    done = subprocess.run([sys.executable, "-c", BROKEN_PLUGIN, "--help"], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "200"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no_such_module:register not loaded: ModuleNotFoundError" in done.stderr
    assert "retrain-worker" in done.stdout and " up " not in done.stdout
