"""``keys``: the API keys of the callers."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from model.config import get_settings
from ops.cli.output import console, fail

app = typer.Typer(help="API keys of the callers.", no_args_is_help=True)


@app.command("create")
def keys_create(
    name: str,
    # typer reads the default, never mutates it
    scope: Annotated[list[str], typer.Option(
        help="score, labels, review, admin or metrics; repeat for more")] = ["score"],  # noqa: B006
    signing: bool = typer.Option(False, help="also require an HMAC signature of each request"),
    label_source: Annotated[list[str], typer.Option(
        help="with the labels scope: chargeback, customer_report or analyst, repeat for "
             "more (default: chargeback and customer_report; analyst verdicts belong to "
             "the review queue)")] = [],  # noqa: B006
) -> None:
    """Create an API key; it is shown once, only its sha256 is kept."""
    from model.api_keys import create_key, parse_label_sources, parse_scopes

    try:
        scopes = parse_scopes(scope)
        sources = parse_label_sources(label_source) if label_source else None
    except ValueError as exc:
        raise fail(str(exc)) from exc
    s = get_settings()
    assert s.api_keys_file is not None
    try:
        key, secret = create_key(s.api_keys_file, name, scopes, signing, sources)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    console.print(f"key {name!r} ({', '.join(sorted(scope))}) created; keep it now, it is "
                  "not shown again:")
    console.print(f"  X-API-Key: {key}")
    if secret:
        console.print(f"  signing secret: {secret}")
    console.print("restart the API to load it")


@app.command("list")
def keys_list() -> None:
    """Key names and scopes (never the keys)."""
    from model.api_keys import load_keys

    s = get_settings()
    assert s.api_keys_file is not None
    table = Table("name", "scopes", "label sources", "signed", "sha256 (first 12)")
    for digest, key in load_keys(s.api_keys_file).items():
        table.add_row(key.name, ", ".join(sorted(key.scopes)),
                      ", ".join(sorted(key.label_sources)) if "labels" in key.scopes else "",
                      "yes" if key.signing_secret else "", digest[:12])
    console.print(table)
