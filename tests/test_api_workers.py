"""Several API processes behind one port: each serves with its own model, rules and lists,
and /metrics adds them up."""

from __future__ import annotations

import re
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fraudstream_dev import launcher as services
from model.registry import Registry
from tests.conftest import cli, eventually, payment

pytestmark = pytest.mark.integration


def samples(text: str, name: str) -> list:
    return [s for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name]


def test_two_api_processes_answer_on_one_port_and_metrics_add_up(stream_worker, trained,
                                                                 api_keys, tmp_path,
                                                                 wide_console):
    proc = services.api_proc(stream_worker)
    proc.stop()
    proc.spawn([sys.executable, "-m", "ops.cli", "api", "--workers", "2"])
    try:
        services.wait_until(lambda: services.http_ok(f"{stream_worker.api_url}/healthz"),
                            "API", 90, proc)
        with httpx.Client(base_url=stream_worker.api_url,
                          headers={"X-API-Key": api_keys["all"][0]}) as client:
            n = 60
            for _ in range(n):
                answer = client.post("/v1/payments/score", json=payment())
                assert answer.status_code == 200 and answer.json()["model_version"] == trained

            # each process loaded the model itself (a gauge per live process); the second
            # may still be starting when the first answers
            scrape = {"X-API-Key": api_keys["all"][0]}  # a key with the metrics scope

            def loaded_by() -> set[str]:
                text = httpx.get(f"{stream_worker.api_url}/metrics", headers=scrape).text
                return {s.labels["pid"] for s in samples(text, "fraudstream_model_loaded")
                        if s.labels["version"] == trained and s.value == 1}

            eventually(lambda: len(loaded_by()) == 2, 60)
            # whichever process answers /metrics (a fresh connection each time: the
            # kernel spreads them), it counts the payments of both
            for _ in range(4):
                text = httpx.get(f"{stream_worker.api_url}/metrics", headers=scrape).text
                decided = sum(s.value for s in samples(text, "fraudstream_decisions_total"))
                assert decided == n

            # a promotion, then the rollback command: every process follows within seconds
            registry = Registry(stream_worker.models_dir)
            mv = registry.get(trained)
            other = registry.register(mv.load_estimator(), {
                k: v for k, v in mv.metadata.items() if k not in ("version", "sha256")}).version
            registry.promote(other, by="test", why="a bad model goes live")

            def serving() -> set[str]:
                text = httpx.get(f"{stream_worker.api_url}/metrics", headers=scrape).text
                return {s.labels["version"] for s in samples(text, "fraudstream_model_loaded")
                        if s.value == 1}

            eventually(lambda: serving() == {other}, 30)
            rolled = cli("model", "rollback", "--why", "test")
            assert rolled.exit_code == 0, rolled.output
            eventually(lambda: serving() == {trained}, 30)
            answers = {client.post("/v1/payments/score", json=payment()).json()["model_version"]
                       for _ in range(20)}
            assert answers == {trained}

            # what an operator types: health, decisions of both processes, a plot
            shown = cli("monitor", "--key", api_keys["all"][0],
                        "--plot", str(tmp_path / "m.png"))
            assert shown.exit_code == 0, shown.output
            assert f"model {trained}" in shown.output
            counts = [re.search(rf"{d}\s+│\s+([\d,]+)", shown.output)
                      for d in ("approve", "review", "decline")]
            assert sum(int(c.group(1).replace(",", "")) for c in counts if c) == n + 20
            assert (tmp_path / "m.png").stat().st_size > 10_000
    finally:
        proc.stop()
