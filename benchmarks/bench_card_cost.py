"""What one payment costs as its card gets busier: Redis CPU and client CPU per payment of
the scoring path's Redis step (``OnlineStore.observe``), for a card that already has 10 to
10,000 payments in its 30-day window.

Starts its own Redis under a temporary home. Per activity level: the card's history is
back-filled, then ``--measure`` more
payments on the same card, a few seconds apart, and the CPU Redis and this process spent
on them is divided by their number. Repeated ``--repeat`` times; medians quoted. Writes a
Markdown table (``--out``) and a plot beside it.

    .venv/bin/python benchmarks/bench_card_cost.py --out docs/benchmarks-card-cost.md
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from fraudstream_dev import launcher as services
from fraudstream_dev import testenv
from model.config import Settings
from model.schemas import Payment
from stores.online_features import OnlineStore
from stores.redis_client import connect

console = Console()
DAY = 86_400.0


def redis_cpu(settings: Settings) -> float:
    info = testenv.redis_client(settings).info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def one_level(settings: Settings, history: int, measure: int) -> tuple[float, float]:
    redis = connect(settings)
    store = OnlineStore(redis)
    card = f"card_{uuid.uuid4().hex[:8]}"
    start = 1_790_000_000.0
    span = 29 * DAY  # the history fills the 30-day window
    step = span / max(history, 1)

    def pay(i: int, ts: float) -> Payment:
        # pydantic takes epoch seconds for a datetime; mypy sees only the field's type
        return Payment(payment_id=f"{card}_{i}", timestamp=ts,  # type: ignore[arg-type]
                       card_id=card,
                       terminal_id=f"t{i % 50}", amount=10 + i % 97, currency="EUR",
                       country="FR", merchant_category="5411")

    # The card's history loaded as a back-fill does (scoring 10,000 payments one by one
    # with the summing script would itself take minutes); the first measured payment
    # then starts the card's aggregates.
    await store.backfill(((p.payment_id, p.ts, card, p.terminal_id, p.amount, p.country,
                           p.merchant_category)
                          for p in (pay(i, start + i * step) for i in range(history))), [])
    t0 = start + span
    cpu0, redis0 = time.process_time(), redis_cpu(settings)
    for j in range(measure):
        await store.observe(pay(history + j, t0 + j * 5.0), payload_hash="h")
    cpu1, redis1 = time.process_time(), redis_cpu(settings)
    await redis.aclose()
    return 1000 * (redis1 - redis0) / measure, 1000 * (cpu1 - cpu0) / measure


def main(levels: str = "10,100,1000,10000", measure: int = 2000, repeat: int = 3,
         out: Path | None = None) -> None:
    home = Path(tempfile.mkdtemp(prefix="fraudstream-cardcost-"))
    os.environ.update(testenv.isolated_env(home, "fraudstream-cardcost"))
    settings = Settings()
    services.start_redis(settings)
    sizes = [int(x) for x in levels.split(",")]
    results: dict[int, list[tuple[float, float]]] = {n: [] for n in sizes}
    try:
        with Progress(console=console) as bar:
            task = bar.add_task("cards of growing activity", total=repeat * len(sizes))
            for _ in range(repeat):
                for n in sizes:
                    results[n].append(asyncio.run(one_level(settings, n, measure)))
                    bar.advance(task)
    finally:
        services.stop_redis(settings)
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Linux "
               f"{platform.release()}, Python {platform.python_version()}; Redis and this "
               "process on the same machine")
    table = Table("payments on the card in 30 days", "Redis CPU ms/payment (median)",
                  "client CPU ms/payment (median)", title="the card's Redis step")
    rows = []
    for n in sizes:
        r = statistics.median(x for x, _ in results[n])
        c = statistics.median(y for _, y in results[n])
        rows.append((n, r, c))
        table.add_row(f"{n:,}", f"{r:.4f}", f"{c:.4f}")
    console.print(table)
    console.print(machine)
    if out is not None:
        lines = [
            "# One payment's cost as its card gets busier",
            "",
            f"`benchmarks/bench_card_cost.py`, {time.strftime('%Y-%m-%d')}: {machine}. "
            f"Per level, {measure:,} payments on a card that already has that many in its "
            f"30-day window, CPU divided by their number; median of {repeat} rounds.",
            "",
            "| payments on the card in 30 days | Redis CPU ms/payment | client CPU ms/payment |",
            "|---|---|---|",
            *[f"| {n:,} | {r:.4f} | {c:.4f} |" for n, r, c in rows],
            "",
            f"![cost per payment]({out.with_suffix('.png').name})",
            "",
        ]
        out.write_text("\n".join(lines))
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([n for n, _, _ in rows], [r for _, r, _ in rows], "o-", label="Redis")
        ax.plot([n for n, _, _ in rows], [c for _, _, c in rows], "s-", label="client")
        ax.set_xscale("log")
        ax.set_xlabel("payments on the card in 30 days")
        ax.set_ylabel("CPU ms per payment")
        ax.set_ylim(bottom=0)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    typer.run(main)
