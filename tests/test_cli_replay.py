"""``fraudstream replay`` checks what it can before it creates anything: without a current
model it fails, and the demo client's key is not created on the way."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner


def test_replay_without_a_model_fails_before_creating_a_demo_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from model.config import get_settings
    from ops.cli import app

    for name in ("FRAUDSTREAM_REGISTRY_DIR", "FRAUDSTREAM_API_KEYS_FILE",
                 "FRAUDSTREAM_AUTH_ENABLED", "FRAUDSTREAM_CLIENT_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FRAUDSTREAM_HOME", str(tmp_path))
    payments = tmp_path / "payments.csv"
    payments.write_text("payment_id,timestamp,card_id,terminal_id,amount\n")
    get_settings.cache_clear()
    try:
        done = CliRunner().invoke(app, ["replay", str(payments)])
    finally:
        get_settings.cache_clear()

    assert done.exit_code == 2
    assert "no current model" in done.output
    assert not (tmp_path / "secrets" / "demo-client.key").exists()
