"""What each feature group earns, on the simulator's card-not-present book (``ecom``).

For each seed: simulate the ``ecom`` preset (today's families plus fraud rings, account
hijacks, BIN enumeration, synthetic identities and friendly fraud), import it into a
scratch history (e-mails and IPs pseudonymised as the edge does), split exactly as
``fraudstream train`` does (a matured test window, training labels as known at its start)
and fit the candidate (HGB) on the same rows with:

- today's 25 features (``model.catalogue.TODAY``),
- the whole default catalogue (``DEFAULT``),
- the default catalogue without one group, for each group beyond today's.

Reported: AP, AUC and card precision@100 per day on the whole test window (known-compromised
cards left out), and AP per fraud family (the family's frauds against every legitimate
payment), each with a card-bootstrap 95% interval. Writes ``docs/feature-ablation.md`` and
``docs/feature-ablation.png``.

    python benchmarks/feature_ablation.py             # 2 seeds
    python benchmarks/feature_ablation.py --seeds 1 --quick
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model.catalogue import DEFAULT, TODAY, Catalogue, Today
from model.labels import fraud_known_since, fraud_spells
from stores.history import HistoryStore
from training.dataset import load, newest_event
from training.evaluate import EvalConfig, EvalSet, card_replicates, evaluate
from training.importer import import_history
from training.simulator import ECOM_PATTERNS, SimulationConfig, simulate
from training.train import (
    TrainConfig,
    candidate_model,
    observed_maturity_days,
    sample_rows,
    time_split,
)

DOCS = Path(__file__).resolve().parent.parent / "docs"
FAMILIES = ("all fraud", "account_takeover", *ECOM_PATTERNS)
# The pseudonyms' key of the scratch histories (a benchmark's, never an installation's).
BENCH_PII_KEY = b"feature-ablation-benchmark-key-0"


def variants() -> dict[str, Catalogue]:
    groups = sorted({f.group for f in DEFAULT.features if not isinstance(f, Today)})
    return {"today's 25": TODAY, "default": DEFAULT,
            **{f"default - {g}": DEFAULT.without(g) for g in groups}}


def book(seed: int, quick: bool) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Payments (arrival order, with details), labels and each payment's family."""
    scale = {"days": 75, "cards": 2000, "terminals": 2000} if quick else \
        {"days": 120, "cards": 4000, "terminals": 4000}
    cfg = SimulationConfig.for_preset("ecom", seed=seed,
                                      start=datetime(2025, 3, 1, tzinfo=UTC), **scale)
    with tempfile.TemporaryDirectory(prefix="fraudstream-ablation-") as scratch:
        home = Path(scratch)
        sim = simulate(cfg)
        sim.to_parquet(home / "sim.parquet")
        store = HistoryStore(home / "history")
        import_history(store, home / "sim.parquet", pii_key=BENCH_PII_KEY)
        payments, labels = load(store, details=True)
    family = sim.set_index("payment_id")["fraud_pattern"].reindex(payments["payment_id"])
    return payments, labels, pd.Series(family.to_numpy(), index=payments.index)


def run(seed: int, quick: bool, bootstrap: int,
        say: Callable[[str], None]) -> list[dict[str, object]]:
    payments, labels, family = book(seed, quick)
    say(f"{len(payments):,} payments; computing {len(DEFAULT.names)} features")
    started = time.perf_counter()
    features = DEFAULT.compute(payments, labels)
    say(f"features in {time.perf_counter() - started:.0f}s")
    cutoff = newest_event(payments, labels)
    train_cfg = TrainConfig(bootstrap=bootstrap)
    split = time_split(payments, cutoff, observed_maturity_days(payments, labels), train_cfg)
    spells = fraud_spells(labels)
    y_then = fraud_known_since(payments["payment_id"], spells,
                               split.train_known_at).notna().to_numpy(dtype=int)
    known = fraud_known_since(payments["payment_id"], spells, cutoff)
    y = known.notna().to_numpy(dtype=int)
    test_pay = payments[split.test].assign(
        day=lambda d: pd.to_datetime(d["ts"], unit="s", utc=True).dt.floor("D"))
    ecfg = EvalConfig(bootstrap=bootstrap, seed=seed)
    test_family = family[split.test].to_numpy(dtype=object)
    test_y = y[split.test]
    sets: dict[str, tuple[np.ndarray, EvalSet, np.ndarray]] = {}
    for fam in FAMILIES:
        keep = (test_y == 0) | ((test_y == 1) & (True if fam == "all fraud"
                                                 else test_family == fam))
        es = EvalSet(test_pay[keep], test_y[keep],
                     known[split.test].to_numpy(dtype=float)[keep])
        sets[fam] = (keep, es, card_replicates(es, ecfg))
    rows, weight = sample_rows(split.train, y_then, train_cfg)
    out: list[dict[str, object]] = []
    for name, catalogue in variants().items():
        t = time.perf_counter()
        X = features[list(catalogue.names)].to_numpy(dtype=float)
        model = candidate_model(train_cfg).fit(X[rows], y_then[rows], sample_weight=weight)
        scores = model.predict_proba(X[split.test])[:, 1]
        for fam, (keep, es, reps) in sets.items():
            if es.y.sum() == 0:
                continue
            m = evaluate(es, scores[keep], ecfg, reps)
            out.append({"seed": seed, "variant": name, "family": fam,
                        "features": len(catalogue.names), "frauds": int(es.y.sum()), **m})
        whole = next(r for r in out if r["variant"] == name and r["family"] == "all fraud")
        say(f"{name:28s} {len(catalogue.names):3d} features  AP {whole['average_precision']:.3f}"
            f"  AUC {whole['auc_roc']:.3f}  card P@100 {whole['card_precision_at_k']:.3f}"
            f"  ({time.perf_counter() - t:.0f}s)")
    return out


def write(results: pd.DataFrame, args: argparse.Namespace, elapsed: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(variants())
    by = results.groupby(["variant", "family"])
    median: dict[Any, dict[Any, float]] = by.median(numeric_only=True).to_dict("index")
    low: dict[Any, float] = by["average_precision_low"].min().to_dict()
    high: dict[Any, float] = by["average_precision_high"].max().to_dict()
    families = [f for f in FAMILIES if f in set(results["family"])]

    def cell(variant: str, fam: str, key: str = "average_precision") -> str:
        if (variant, fam) not in median:
            return "-"
        value = median[(variant, fam)][key]
        if key != "average_precision":
            return f"{value:.3f}"
        return f"{value:.3f} [{low[(variant, fam)]:.3f}, {high[(variant, fam)]:.3f}]"

    lines = [
        "# Feature ablation (ecom)", "",
        "`python benchmarks/feature_ablation.py " + ("--quick " if args.quick else "")
        + f"--seeds {args.seeds}`; {datetime.now(UTC):%Y-%m-%d}, {platform.machine()} with "
        f"{os.cpu_count()} cores, {elapsed / 60:.0f} min in all.", "",
        "The simulator's `ecom` preset, split as `fraudstream train` splits; the candidate "
        "(HGB) fitted on the same rows with each feature set. Medians over seeds; in "
        "brackets, the lowest low and highest high of the per-run 95% card-bootstrap "
        "intervals. A family's AP ranks its frauds against every legitimate test payment.",
        "", "## The whole test window", "",
        "| features | n | AP | AUC | card P@100/day |", "|---|---|---|---|---|",
    ]
    for v in names:
        if (v, "all fraud") in median:
            n = int(median[(v, "all fraud")]["features"])
            lines.append(f"| {v} | {n} | {cell(v, 'all fraud')} | "
                         f"{cell(v, 'all fraud', 'auc_roc')} | "
                         f"{cell(v, 'all fraud', 'card_precision_at_k')} |")
    lines += ["", "## AP per family", "",
              "| features | " + " | ".join(families[1:]) + " |",
              "|---|" + "---|" * (len(families) - 1)]
    for v in names:
        lines.append(f"| {v} | " + " | ".join(cell(v, f) for f in families[1:]) + " |")
    frauds = results[results["variant"] == "default"].groupby("family")["frauds"].median()
    lines += ["", "Test frauds per run (median): "
              + ", ".join(f"{f} {int(frauds[f])}" for f in families if f in frauds) + ".", "",
              "![AP per family and feature set](feature-ablation.png)", ""]
    (DOCS / "feature-ablation.md").write_text("\n".join(lines))

    fig, ax = plt.subplots(figsize=(13, 4.5))
    width = 0.8 / len(names)
    for i, v in enumerate(names):
        vals = [median[(v, f)]["average_precision"] if (v, f) in median else np.nan
                for f in families]
        ax.bar(np.arange(len(families)) + (i - len(names) / 2) * width, vals, width, label=v)
    ax.set_xticks(range(len(families)), families, rotation=15)
    ax.set_ylabel("average precision (median over seeds)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(DOCS / "feature-ablation.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--bootstrap", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="a smaller book")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {text}", flush=True)

    records: list[dict[str, object]] = []
    for seed in range(1, args.seeds + 1):
        say(f"seed {seed}")
        records += run(seed, args.quick, args.bootstrap, say)
    results = pd.DataFrame(records)
    if not args.no_write:
        write(results, args, time.perf_counter() - started)
        say(f"wrote {DOCS / 'feature-ablation.md'}")


if __name__ == "__main__":
    main()
