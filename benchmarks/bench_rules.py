"""The rules step of one payment: an analyst's rule set of 200 rules, as the hook runs it.

    python benchmarks/bench_rules.py [--rules 200] [--payments 5000] [--repeat 3]

``Policy.apply`` is what the API runs after the model, on every payment, in the same pass
(no Redis, no I/O). Rule sets compared, each of ``--rules`` rules:

- *none*: the empty rule set (the floor: the lists and the known-fraud check alone);
- *one feature each*: the older form, one comparison of one feature per rule;
- *analysts' mix*: rules of every form (payment fields, the score, ``in`` sets,
  ``between``, two fields compared, ``any`` / ``not`` groups), 4 to 6 conditions each,
  about one in twenty of them matching.

Per payment, p50 and p99 over ``--payments`` simulated payments with their features,
median of ``--repeat`` passes. Writes docs/benchmarks-rules.md and a plot.
"""

from __future__ import annotations

import random
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import typer
from rich.table import Table

from common import ROOT, console, machine

COUNTRIES = ["FR", "DE", "BE", "NL", "ES", "IT", "GB", "US"]


def _mixed_rule(i: int, rng: random.Random) -> dict[str, Any]:
    from model.features import FEATURE_NAMES

    feature = FEATURE_NAMES[i % len(FEATURE_NAMES)]
    forms: list[dict[str, Any]] = [
        {"field": "payment.channel", "op": "in", "values": rng.sample(["pos", "ecom", "moto"],
                                                                      2)},
        {"field": "payment.amount", "op": "between",
         "values": sorted([rng.uniform(0, 400), rng.uniform(400, 3000)])},
        {"field": "payment.shipping_country", "op": "!=", "other": "payment.billing_country"},
        {"any": [{"field": "score", "op": ">", "value": rng.uniform(0.05, 0.6)},
                 {"field": feature, "op": ">", "value": rng.uniform(0, 5)}]},
        {"not": {"field": "payment.country", "op": "in", "values": rng.sample(COUNTRIES, 3)}},
        {"field": "payment.merchant_category", "op": "not_in",
         "values": [f"{rng.randrange(10_000):04d}" for _ in range(20)]},
    ]
    return {"id": f"mix_{i}", "action": rng.choice(["review", "decline", "approve"]),
            "priority": rng.randrange(3), "when": rng.sample(forms, rng.randint(4, 6))}


def _feature_rule(i: int, rng: random.Random) -> dict[str, Any]:
    from model.features import FEATURE_NAMES

    return {"id": f"one_{i}", "action": "review",
            "when": [{"feature": FEATURE_NAMES[i % len(FEATURE_NAMES)], "op": ">",
                      "value": rng.uniform(0, 50)}]}


def _timed_us(policy: Any, payments: list[tuple[SimpleNamespace, dict[str, float], float]]
              ) -> tuple[list[float], int]:
    out, matched = [], 0
    for payment, features, score in payments:
        t = time.perf_counter()
        _, reasons = policy.apply("approve", features, (), "none", payment, score)
        out.append((time.perf_counter() - t) * 1e6)
        matched += len(reasons)
    return out, matched


def main(rules: int = typer.Option(200, min=1), payments: int = typer.Option(5000, min=100),
         repeat: int = typer.Option(3, min=1),
         out_doc: Path = typer.Option(ROOT / "docs" / "benchmarks-rules.md")) -> None:
    from model.features import FEATURE_NAMES
    from model.policy import Policy, RuleSet

    rng = random.Random(7)
    sets = {
        "none": RuleSet(),
        "one feature each": RuleSet.model_validate(
            {"rules": [_feature_rule(i, rng) for i in range(rules)]}),
        "analysts' mix": RuleSet.model_validate(
            {"rules": [_mixed_rule(i, rng) for i in range(rules)]}),
    }
    rows = []
    for _ in range(payments):
        billing = rng.choice(COUNTRIES)
        payment = SimpleNamespace(
            amount=rng.lognormvariate(3.5, 1.2), currency="EUR", country=rng.choice(COUNTRIES),
            channel=rng.choice(["pos", "ecom", "moto"]),
            merchant_category=f"{rng.randrange(10_000):04d}", card_bin=None,
            billing_country=billing,
            shipping_country=billing if rng.random() < 0.8 else rng.choice(COUNTRIES),
            merchant_id=None, three_ds=None, entry_mode=None)
        features = {n: rng.expovariate(0.5) for n in FEATURE_NAMES}
        rows.append((payment, features, rng.betavariate(1, 12)))
    results: dict[str, dict[str, float]] = {}
    for name, rule_set in sets.items():
        policy = Policy(rule_set, 1)
        passes = [_timed_us(policy, rows) for _ in range(repeat)]
        results[name] = {
            "p50": statistics.median(float(np.percentile(t, 50)) for t, _ in passes),
            "p99": statistics.median(float(np.percentile(t, 99)) for t, _ in passes),
            "matched": passes[0][1] / payments,
            "conditions": sum(len(r.conditions()) for r in rule_set.rules)}
    table = Table("rule set", "rules", "conditions", "matched per payment", "p50 µs", "p99 µs",
                  title=f"the rules step, one payment ({payments:,} payments, median of "
                        f"{repeat})")
    for name, r in results.items():
        table.add_row(name, str(len(sets[name].rules)), f"{r['conditions']:.0f}",
                      f"{r['matched']:.2f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}")
    console.print(table)
    _write(out_doc, results, sets, rules, payments, repeat)


def _write(out: Path, results: dict[str, dict[str, float]], sets: dict[str, Any], rules: int,
           payments: int, repeat: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        "# The rules step", "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with "
        f"`python benchmarks/bench_rules.py --rules {rules} --payments {payments} "
        f"--repeat {repeat}`.", "",
        f"Machine: {machine().split(';')[0]}; nothing else of the stack running.", "",
        "`Policy.apply` (`model/policy.py`) per payment, as the API runs it after the model "
        "in the same pass: *none* is the empty rule set; *one feature each* the older form "
        "(one comparison per rule); *analysts' mix* rules of every form (payment fields, the "
        "score, `in` sets, `between`, two fields compared, `any` and `not` groups, 4 to 6 "
        "conditions each, priorities). p50 and p99 over the payments, median of the passes. "
        "The rest of the hook's time is in [benchmarks.md](benchmarks.md) and "
        "[benchmarks-model-step.md](benchmarks-model-step.md).", "",
        "| rule set | rules | conditions | rules matched per payment | p50 µs | p99 µs |",
        "|---|---|---|---|---|---|",
        *(f"| {n} | {len(sets[n].rules)} | {r['conditions']:.0f} | {r['matched']:.2f} | "
          f"{r['p50']:.1f} | {r['p99']:.1f} |" for n, r in results.items()), "",
        "![rules step](benchmarks-rules.png)", "",
    ]
    out.write_text("\n".join(lines))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = list(results)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [results[n]["p50"] for n in names], 0.4, label="p50")
    ax.bar(x + 0.2, [results[n]["p99"] for n in names], 0.4, label="p99")
    ax.set_xticks(x, names)
    ax.set_ylabel("µs per payment")
    ax.set_title(f"{rules} rules, one payment")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    console.print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
