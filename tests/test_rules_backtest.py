"""A draft rule set tried on the history (``fraudstream rules backtest``): its counts are the
history's own, point in time, beside the current model; a bad draft is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.policy import RuleSet
from model.registry import Registry
from stores.history import HistoryStore
from tests.conftest import cli
from training.backtest import BacktestConfig, BacktestError
from training.rules_backtest import rules_backtest


@pytest.fixture(scope="module")
def period(trained_home: tuple[Path, Path, str]) -> tuple[HistoryStore, Registry, float, float]:
    history, registry, _ = trained_home
    store = HistoryStore(history)
    newest = float(store.query("SELECT epoch_us(max(ts)) / 1e6 AS t FROM payments")["t"][0])
    end = (pd.Timestamp(newest, unit="s", tz="UTC").floor("D") + pd.Timedelta(days=1))
    start = end - pd.Timedelta(days=7)
    return store, Registry(registry), start.timestamp(), end.timestamp()


def draft(threshold: float) -> RuleSet:
    return RuleSet.model_validate({"rules": [
        {"id": "big", "action": "review",
         "when": [{"field": "payment.amount", "op": ">", "value": threshold}]},
        {"id": "not_big", "action": "approve",
         "when": [{"not": {"field": "payment.amount", "op": ">", "value": threshold}}]},
        {"id": "everything", "action": "review",
         "when": [{"field": "score", "op": ">=", "value": 0}]},
        {"id": "busy_card", "action": "decline",
         "when": [{"field": "card_count_1h", "op": ">=", "value": 2},
                  {"field": "payment.channel", "op": "in", "values": ["pos", "ecom"]}]},
    ]})


def test_each_rules_counts_are_the_historys_over_the_period(period):
    store, registry, start, end = period
    in_period = store.query(
        "SELECT amount FROM payments WHERE epoch_us(ts) / 1e6 >= ? AND epoch_us(ts) / 1e6 < ?",
        [start, end])
    threshold = float(in_period["amount"].median())
    report = rules_backtest(store, registry, draft(threshold),
                            BacktestConfig(start=start, end=end, bootstrap=0))
    rules = report.rules
    assert report.period["payments"] == len(in_period)
    assert rules.loc["big", "hits"] == int((in_period["amount"] > threshold).sum()) > 0
    # a rule and its negation split the period; one that always holds hits everything
    assert rules.loc["big", "hits"] + rules.loc["not_big", "hits"] == len(in_period)
    assert rules.loc["everything", "hits"] == len(in_period)
    assert rules.loc["everything", "fraud_hits"] == report.period["fraud"] > 0
    assert rules.loc["big", "fraud_hits"] + rules.loc["not_big", "fraud_hits"] == \
        report.period["fraud"]
    assert np.isclose(rules.loc["everything", "fraud_amount"], report.period["fraud_amount"])
    big = rules.loc["big"]
    assert big["fraud_hits"] + big["genuine_hits"] == big["hits"]
    assert np.isclose(big["precision"], big["fraud_hits"] / big["hits"])
    # beyond the model: the frauds it hits that the model alone would have approved
    hits = report.hits
    frauds_approved = (hits["y"] == 1) & (hits["model_decision"] == "approve")
    assert rules.loc["everything", "beyond_model"] == int(frauds_approved.sum())
    assert rules.loc["big", "beyond_model"] == int((frauds_approved & hits["big"]).sum())
    # overlaps: a rule with itself is its hits; a rule and its negation never meet
    assert report.overlap.loc["big", "big"] == big["hits"]
    assert report.overlap.loc["big", "not_big"] == 0
    assert report.overlap.loc["big", "everything"] == big["hits"]
    assert report.daily["everything"].sum() == len(in_period)
    assert 1 <= len(report.daily) <= 7
    # a feature condition sees the point-in-time features: a card's second payment in an
    # hour is hit, its first is not
    assert 0 < rules.loc["busy_card", "hits"] < len(in_period)


def test_the_command_reports_writes_and_refuses_a_bad_draft(period, tmp_path, monkeypatch):
    store, registry, start, _ = period
    monkeypatch.setenv("FRAUDSTREAM_DATA_DIR", str(store.root))
    monkeypatch.setenv("FRAUDSTREAM_REGISTRY_DIR", str(registry.root))
    path = tmp_path / "draft.json"
    path.write_text(json.dumps(draft(100.0).document()))
    day = pd.Timestamp(start, unit="s", tz="UTC").strftime("%Y-%m-%d")
    out = tmp_path / "report"
    done = cli("rules", "backtest", str(path), "--from", day, "--out", str(out))
    assert done.exit_code == 0, done.output
    assert "4 draft rules over" in done.output and "the draft, rule by rule" in done.output
    for name in ("rules.csv", "daily.csv", "overlap.csv", "hits.parquet", "hits_per_day.png"):
        assert (out / name).stat().st_size > 0
    assert set(pd.read_csv(out / "rules.csv")["rule"]) == {"big", "not_big", "everything",
                                                           "busy_card"}

    path.write_text(json.dumps({"rules": [{"id": "oops", "action": "review", "when": [
        {"field": "payment.channel", "op": ">", "value": "ecom"}]}]}))
    refused = cli("rules", "backtest", str(path))
    assert refused.exit_code != 0
    assert "rule 'oops': when[0]: op '>' orders numbers" in refused.output
    assert cli("rules", "backtest", str(tmp_path / "missing.json")).exit_code != 0


def test_an_empty_draft_is_refused(period):
    store, registry, start, end = period
    with pytest.raises(BacktestError, match="no rules"):
        rules_backtest(store, registry, RuleSet(), BacktestConfig(start=start, end=end))
