"""The model step of one payment, for every family training may choose.

    python benchmarks/bench_model_step.py [--days 60] [--rows 3000] [--repeat 3]

Simulates a book, imports it into a scratch history and computes its point-in-time
features, fits every family of ``training.train.FAMILIES`` as ``train`` does (the same
rows, weights and settings) with its calibration, and then, per family:

- the compiled scorer against scikit-learn on the test rows: the largest difference in
  score (the issue's bound: 1e-9);
- one payment at a time, as the hook scores: the compiled walk with its contributions
  (``explain``), and the whole step the API runs (``Scorer.score``: vector, walk,
  calibration, decision, reasons), p50 and p99 over ``--rows`` payments, median of
  ``--repeat`` passes; scikit-learn's own one-row ``predict_proba`` beside them;
- the model's size (nodes to walk).

Writes docs/benchmarks-model-step.md and a plot.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.table import Table

from common import ROOT, console, machine

BOUND_MS = 0.1  # the floor for the model step's p99, one row
TOLERANCE = 1e-9


def _timed_us(fn: Callable[[Any], object], rows: Sequence[Any]) -> list[float]:
    out = []
    for row in rows:
        t = time.perf_counter()
        fn(row)
        out.append((time.perf_counter() - t) * 1e6)
    return out


def _one_row(model: Any) -> Callable[[np.ndarray], object]:
    return lambda row: model.predict_proba(row[None, :])


def main(days: int = typer.Option(60), rows: int = typer.Option(3000),
         repeat: int = typer.Option(3, min=1),
         out_doc: Path = typer.Option(ROOT / "docs" / "benchmarks-model-step.md")) -> None:
    from model.calibration import fit as fit_calibration
    from model.compiled import compile_model
    from model.features import FEATURE_NAMES
    from model.labels import fraud_known_since, fraud_spells
    from model.point_in_time import compute_features
    from model.scorer import Scorer
    from stores.history import HistoryStore
    from training.dataset import load
    from training.importer import import_history
    from training.simulator import SimulationConfig, simulate, write_traffic
    from training.train import FAMILIES, TrainConfig, family_model, fit_weighted, sample_rows

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with console.status(f"simulating {days} days, importing, computing features"), \
            tempfile.TemporaryDirectory(prefix="fraudstream-model-step-") as scratch:
        path = Path(scratch) / "book.parquet"
        write_traffic(simulate(SimulationConfig(days=days, seed=5,
                                                start=today - timedelta(days=days))), path)
        store = HistoryStore(Path(scratch) / "history")
        import_history(store, path)
        payments, labels = load(store)
        X = compute_features(payments, labels)[list(FEATURE_NAMES)].to_numpy()
    y = fraud_known_since(payments["payment_id"], fraud_spells(labels),
                          float(payments["ts"].max())).notna().to_numpy(dtype=int)
    cut = int(len(y) * 0.75)
    train_rows = np.zeros(len(y), dtype=bool)
    train_rows[:cut] = True
    cfg = TrainConfig()
    fit_rows, weight = sample_rows(train_rows, y, cfg)
    test = X[cut:]
    rng = np.random.default_rng(0)
    sample = test[rng.choice(len(test), size=min(rows, len(test)), replace=False)]
    results: dict[str, dict[str, float]] = {}
    for family in FAMILIES:
        with console.status(f"fitting {family}"):
            started = time.perf_counter()
            model = fit_weighted(family_model(family, len(fit_rows), cfg), X[fit_rows],
                                 y[fit_rows], weight)
            fit_s = time.perf_counter() - started
            raw = model.predict_proba(test)[:, 1]
            calibration = fit_calibration(raw, y[cut:])
        compiled = compile_model(model)
        scorer = Scorer(model, {"version": family, "features": list(FEATURE_NAMES),
                                "thresholds": {"review": 0.5, "decline": 0.9},
                                "calibration": calibration.to_dict()})
        diff = float(np.abs(compiled.predict_proba_many(test) - raw).max())
        one = max(abs(compiled.predict_proba(r) - p) for r, p in zip(test[:2000], raw[:2000],
                                                                      strict=True))
        dicts = [dict(zip(FEATURE_NAMES, r, strict=True)) for r in sample]
        explain, step = [], []
        for _ in range(repeat):
            explain.append(_timed_us(compiled.explain, list(sample)))
            step.append(_timed_us(scorer.score, dicts))
        sk = _timed_us(_one_row(model), list(sample[:300]))
        nodes = float(len(getattr(compiled, "feature", ())) or compiled.n_features)
        results[family] = {
            "diff": max(diff, one), "fit_s": fit_s, "nodes": nodes,
            "explain_p50": statistics.median(float(np.percentile(e, 50)) for e in explain),
            "explain_p99": statistics.median(float(np.percentile(e, 99)) for e in explain),
            "step_p50": statistics.median(float(np.percentile(e, 50)) for e in step),
            "step_p99": statistics.median(float(np.percentile(e, 99)) for e in step),
            "sklearn_p50": float(np.percentile(sk, 50)),
        }
        r = results[family]
        console.print(f"{family}: step p50 {r['step_p50']:.1f} us, p99 {r['step_p99']:.1f} us, "
                      f"max |compiled - sklearn| {r['diff']:.1e}")

    table = Table("family", "nodes", "max |compiled - sklearn|", "walk p50 us", "walk p99 us",
                  "step p50 us", "step p99 us", "sklearn 1 row p50 us",
                  title="the model step, one payment")
    for family, r in results.items():
        table.add_row(family, f"{r['nodes']:,.0f}", f"{r['diff']:.1e}",
                      f"{r['explain_p50']:.1f}", f"{r['explain_p99']:.1f}",
                      f"{r['step_p50']:.1f}", f"{r['step_p99']:.1f}", f"{r['sklearn_p50']:.0f}")
    console.print(table)
    # The floor is on the model (the walk with its contributions, as docs/benchmarks.md's
    # "model" step); the scorer's own step adds the decision and the reasons' text.
    met = all(r["explain_p99"] <= BOUND_MS * 1000 and r["diff"] <= TOLERANCE
              for r in results.values())
    over = [f for f, r in results.items() if r["step_p99"] > BOUND_MS * 1000]
    verdict = (f"floor {'met' if met else 'NOT met'}: every family's compiled model p99 <= "
               f"{BOUND_MS * 1000:g} us with its contributions, and its scores within "
               f"{TOLERANCE:g} of scikit-learn's; the whole scorer step (decision and "
               f"reasons too) over {BOUND_MS * 1000:g} us at p99 for "
               + (", ".join(over) if over else "no family"))
    console.print(verdict)
    _write(out_doc, results, len(payments), days, rows, repeat, verdict)


def _write(out: Path, results: dict[str, dict[str, float]], payments: int, days: int,
           rows: int, repeat: int, verdict: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        "# The model step, every family", "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with "
        f"`python benchmarks/bench_model_step.py --days {days} --rows {rows} --repeat {repeat}`"
        f" ({payments:,} simulated payments, today's 25 features; each family fitted as "
        "`fraudstream train` fits it, on three quarters of the book by time).", "",
        f"Machine: {machine().split(';')[0]}; nothing else of the stack running.", "",
        "*walk*: the compiled model with its contributions (`model/compiled.py`); *step*: "
        "what the API runs per payment (`Scorer.score`: the vector, the walk, the "
        "calibration, the decision and its reasons). One payment at a time, p50 and p99 over "
        f"{rows:,} payments, median of {repeat} passes; scikit-learn's one-row "
        "`predict_proba` beside them. The difference is the largest over the test rows, one "
        "at a time and in a batch.", "",
        "| family | nodes | max abs(compiled - scikit-learn) | walk p50 µs | walk p99 µs | "
        "step p50 µs | step p99 µs | scikit-learn, one row, p50 µs | fit s |",
        "|---|---|---|---|---|---|---|---|---|",
        *(f"| {f.replace('_', ' ')} | {r['nodes']:,.0f} | {r['diff']:.1e} | "
          f"{r['explain_p50']:.1f} | {r['explain_p99']:.1f} | {r['step_p50']:.1f} | "
          f"{r['step_p99']:.1f} | {r['sklearn_p50']:.0f} | {r['fit_s']:.1f} |"
          for f, r in results.items()), "",
        f"**{verdict}** (issue: model step p99 <= {BOUND_MS:g} ms for one row). The p99 of "
        "one-payment steps of tens of microseconds on this shared machine moves by 2x from "
        "run to run; the p50s are steadier.", "",
        "A linear model's nodes are its features.", "",
        "![model step](benchmarks-model-step.png)", "",
    ]
    out.write_text("\n".join(lines))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(results)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [results[n]["step_p50"] for n in names], 0.4, label="step p50")
    ax.bar(x + 0.2, [results[n]["step_p99"] for n in names], 0.4, label="step p99")
    ax.axhline(BOUND_MS * 1000, color="red", linestyle="--", label="p99 bound (100 µs)")
    ax.set_xticks(x, [n.replace("_", "\n") for n in names], fontsize=8)
    ax.set_ylabel("µs per payment")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    console.print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
