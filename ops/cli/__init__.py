"""The ``fraudstream`` command: each module a group of commands that parse their options,
call a use case of the layer that owns it, and print what it returned.

Commands of other distributions join through the entry-point group ``fraudstream.commands``:
each entry point names a ``register(app)`` function. The development tools add ``up``,
``down`` and ``status`` that way; without them installed those commands do not exist.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import typer

from ops.cli import features, history, keys, models, monitoring, rules, serve, training
from ops.cli.output import console, err, fail

__all__ = ["PLUGIN_GROUP", "app", "console", "err", "fail", "main"]

PLUGIN_GROUP = "fraudstream.commands"

app = typer.Typer(help="fraudstream: real-time payment fraud detection.", no_args_is_help=True,
                  add_completion=False)


def _add_plugin_commands(app: typer.Typer) -> None:
    for entry in entry_points(group=PLUGIN_GROUP):
        # A broken plugin (a development tool half installed) must not take the service's
        # own commands down with it: said, and left out.
        try:
            entry.load()(app)
        except Exception as exc:
            err.print(f"[yellow]warning:[/] commands of {entry.value} not loaded: "
                      f"{type(exc).__name__}: {exc}")


# In this order, the order of ``fraudstream --help``: the running service first.
serve.register(app)
_add_plugin_commands(app)
monitoring.register(app)
training.register(app)
app.add_typer(keys.app, name="keys")
app.add_typer(history.app, name="history")
app.add_typer(models.app, name="model")
app.add_typer(features.app, name="features")
app.add_typer(rules.app, name="rules")


def main() -> None:
    app()
