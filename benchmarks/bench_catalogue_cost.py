"""What the feature catalogue costs on the hook: Redis CPU and client CPU per payment of the
scoring path's Redis step (``OnlineStore.observe``) for card-not-present payments with every
field, with today's 25 features alone, with the whole default catalogue, and with each of
its groups alone.

Starts its own Redis under a temporary home. The payments are the simulator's ``ecom``
book (online payments only), pseudonymised as the edge does, observed one by one as the
hook does; each variant gets payment ids of its own, so each is a first scoring. Repeated
``--repeat`` times; medians quoted, and each variant's ratio to today's in the same round.
Writes a Markdown table (``--out``) and a plot beside it.

    .venv/bin/python benchmarks/bench_catalogue_cost.py --out docs/benchmarks-catalogue-cost.md
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import typer
from bench_card_cost import redis_cpu
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from fraudstream_dev import launcher as services
from fraudstream_dev import testenv
from model.catalogue import DEFAULT, Catalogue, Today
from model.catalogue_file import commands_per_payment
from model.config import Settings
from model.pseudonym import pseudonymise
from model.schemas import Payment
from stores.catalogue_store import CatalogueStore
from stores.online_features import OnlineStore
from stores.redis_client import connect
from training.simulator import SimulationConfig, simulate

from common import short_machine

console = Console()
BENCH_KEY = b"catalogue-cost-benchmark-key-000"


def ecom_payments(n: int) -> list[Payment]:
    sim = simulate(SimulationConfig.for_preset("ecom", days=20, cards=2000, terminals=300,
                                               seed=2, start=datetime(2026, 10, 1, tzinfo=UTC)))
    sim = sim[sim["channel"] == "ecom"].head(n)
    fields = set(Payment.model_fields)
    out = []
    for row in sim.to_dict("records"):
        body = {k: v for k, v in row.items() if k in fields and not (
            isinstance(v, float) and v != v)}
        out.append(pseudonymise(Payment.model_validate(body), BENCH_KEY))
    return out


def variants() -> dict[str, Catalogue | None]:
    stateful = [f for f in DEFAULT.features if not isinstance(f, Today)]
    groups = sorted({f.group for f in stateful})
    return {"today's 25": None, "default catalogue": Catalogue(stateful),
            **{f"only {g}": Catalogue(f for f in stateful if f.group == g) for g in groups}}


async def one(settings: Settings, catalogue: Catalogue | None, payments: list[Payment],
              tag: str) -> tuple[float, float]:
    redis = connect(settings)
    await redis.ready()
    store = OnlineStore(redis, CatalogueStore(redis, catalogue) if catalogue else None)
    cpu0, redis0 = time.process_time(), redis_cpu(settings)
    for p in payments:
        await store.observe(p.model_copy(update={"payment_id": f"{p.payment_id}_{tag}"}), "h")
    cpu1, redis1 = time.process_time(), redis_cpu(settings)
    await redis.aclose()
    return 1000 * (redis1 - redis0) / len(payments), 1000 * (cpu1 - cpu0) / len(payments)


def main(payments: int = 2000, repeat: int = 3, out: Path | None = None) -> None:
    home = Path(tempfile.mkdtemp(prefix="fraudstream-catcost-"))
    os.environ.update(testenv.isolated_env(home, "fraudstream-catcost"))
    settings = Settings()
    services.start_redis(settings)
    book = ecom_payments(payments)
    runs = variants()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    try:
        with Progress(console=console) as bar:
            task = bar.add_task("variants", total=repeat * len(runs))
            for rnd in range(repeat):
                for i, (name, catalogue) in enumerate(runs.items()):
                    results[name].append(asyncio.run(one(settings, catalogue, book,
                                                         f"r{rnd}v{i}")))
                    bar.advance(task)
    finally:
        services.stop_redis(settings)
    machine = f"{short_machine()}; Redis and this process on the same machine"
    table = Table("features", "Redis commands (max)", "Redis CPU ms/payment",
                  "x today's", "client CPU ms/payment", "x today's",
                  title="the hook's Redis step, card-not-present payments with every field")
    rows = []
    base = results["today's 25"]
    for name, catalogue in runs.items():
        own = results[name]
        r = statistics.median(x for x, _ in own)
        c = statistics.median(y for _, y in own)
        rr = statistics.median(a[0] / b[0] for a, b in zip(own, base, strict=True))
        rc = statistics.median(a[1] / b[1] for a, b in zip(own, base, strict=True))
        cmds = commands_per_payment(catalogue) if catalogue else 0
        rows.append((name, cmds, r, rr, c, rc))
        table.add_row(name, f"+{cmds}", f"{r:.3f}", f"{rr:.2f}", f"{c:.3f}", f"{rc:.2f}")
    console.print(table)
    console.print(machine)
    if out is None:
        return
    lines = [
        "# What the feature catalogue costs on the hook",
        "",
        f"`benchmarks/bench_catalogue_cost.py`, {time.strftime('%Y-%m-%d')}: {machine}. "
        f"{payments:,} online payments of the simulator's ecom book with every field, "
        "observed one by one as the hook does, per variant; CPU divided by their number; "
        f"medians of {repeat} rounds, ratios to today's 25 within each round.",
        "",
        "| features | Redis commands beyond today's (max) | Redis CPU ms/payment | x today's "
        "| client CPU ms/payment | x today's |",
        "|---|---|---|---|---|---|",
        *[f"| {n} | {c} | {r:.3f} | {rr:.2f} | {cc:.3f} | {rc:.2f} |"
          for n, c, r, rr, cc, rc in rows],
        "",
        f"![cost per payment]({out.with_suffix('.png').name})",
        "",
    ]
    out.write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    names = [n for n, *_ in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r for _, _, r, *_ in rows], 0.4, label="Redis")
    ax.bar([x + 0.2 for x in xs], [row[4] for row in rows], 0.4, label="client")
    ax.set_xticks(list(xs), names, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("CPU ms per payment")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    typer.run(main)
