"""``fraudstream up`` (from the development tools) runs the same use cases as the commands
it once called, with their config objects: a fresh home gets a simulated history imported,
a first model trained with ``TrainConfig``'s own defaults, the online store warmed, the
processes started in order and the demo traffic sent with the demo client's key. The
processes and the heavy steps are stand-ins here; the real stack is in the other tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from stores.history import HistoryStore
from training.traffic import TrafficReport
from training.train import TrainConfig, TrainResult


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from model.config import get_settings

    for name in ("FRAUDSTREAM_DATA_DIR", "FRAUDSTREAM_REGISTRY_DIR", "FRAUDSTREAM_API_KEYS_FILE",
                 "FRAUDSTREAM_AUTH_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FRAUDSTREAM_HOME", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_up_runs_the_use_cases_with_their_config_objects(home: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    from fraudstream_dev import launcher
    from model.config import get_settings
    from ops.cli import app

    started: list[str] = []
    for name in ("ensure_kafka_libs", "start_redis", "start_kafka", "start_stream",
                 "start_api", "start_retrain"):
        monkeypatch.setattr(launcher, name,
                            lambda *args, name=name, **kw: started.append(name))
    trained: list[TrainConfig] = []

    def train(store: Any, registry: Any, cfg: TrainConfig, progress: Any = None,
              catalogue: Any = None) -> TrainResult:
        trained.append(cfg)
        day = "2026-11-01T00:00:00+00:00"
        window = {"maturity_days": 5.0, "train_payments": 1, "train_fraud": 0,
                  "test_payments": 1, "test_fraud": 0, "refit_payments": 1,
                  **{f"{part}_{edge}": day for part in ("train", "test", "refit")
                     for edge in ("start", "end")}}
        return TrainResult("v1", True, "first model", {}, {}, window=window)

    warmed: list[bool] = []

    async def warm_online(settings: Any, if_empty: bool = False) -> None:
        warmed.append(if_empty)

    sent: list[tuple[str, pd.DataFrame, float, dict[str, str] | None]] = []

    async def send_traffic(api_url: str, traffic: pd.DataFrame, rate: float,
                           headers: dict[str, str] | None = None, **kw: Any) -> TrafficReport:
        sent.append((api_url, traffic, rate, headers))
        return TrafficReport(sent=len(traffic))

    monkeypatch.setattr("training.train.train", train)
    monkeypatch.setattr("training.backfill.warm_online", warm_online)
    monkeypatch.setattr("training.traffic.send_traffic", send_traffic)

    done = CliRunner().invoke(app, ["up", "--history-days", "2", "--demo-payments", "25",
                                    "--demo-rate", "12.5"], terminal_width=200)

    assert done.exit_code == 0, done.output
    assert started == ["ensure_kafka_libs", "start_redis", "start_kafka", "start_stream",
                       "start_api", "start_retrain"]
    assert trained == [TrainConfig(force=True)]
    assert warmed == [True]
    s = get_settings()
    imported = HistoryStore(s.history_dir).query("SELECT count(*) AS n FROM payments")["n"][0]
    simulated = pd.read_parquet(home / "bootstrap" / "history.parquet")
    assert imported == len(simulated) > 0
    [(url, traffic, rate, headers)] = sent
    assert (url, rate, len(traffic)) == (s.api_url, 12.5, 25)
    assert s.api_keys_file is not None
    stash = s.api_keys_file.with_name("demo-client.key")
    assert headers == {"X-API-Key": stash.read_text().strip()}
    # The demo week follows the history, with ids of its own.
    assert traffic["timestamp"].min() > simulated["timestamp"].max()
    assert not set(traffic["payment_id"]) & set(simulated["payment_id"])
    assert "retrain worker" in done.output and "component" in done.output
