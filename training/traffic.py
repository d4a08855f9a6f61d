"""Send simulated traffic to a running API: payments at a fixed rate, labels as they mature.

Payments keep their simulated timestamps (event time), so a day of traffic can be replayed
in a minute; a label is sent once the simulated clock passes its ``reported_at``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np
import pandas as pd


@dataclass
class TrafficReport:
    sent: int = 0
    labels_sent: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def payment_body(row: pd.Series) -> dict[str, object]:
    body: dict[str, object] = {
        "payment_id": row["payment_id"],
        "timestamp": row["timestamp"].isoformat(),
        "card_id": row["card_id"],
        "terminal_id": row["terminal_id"],
        "amount": float(row["amount"]),
        "currency": row["currency"],
    }
    for optional in ("country", "channel", "merchant_category"):
        if isinstance(row.get(optional), str):
            body[optional] = row[optional]
    return body


def label_body(row: pd.Series) -> dict[str, object]:
    return {
        "payment_id": row["payment_id"],
        "is_fraud": bool(row["is_fraud"]),
        "source": row["label_source"],
        "reported_at": row["label_reported_at"].isoformat(),
    }


async def send_traffic(
    api_url: str,
    traffic: pd.DataFrame,
    rate: float,
    concurrency: int = 32,
    headers: dict[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> TrafficReport:
    """Open loop: payment i is due at start + i/rate whatever the previous answers took."""
    if rate <= 0:
        raise ValueError("rate must be > 0 payments per second")
    report = TrafficReport()
    labels = traffic[traffic["is_fraud"].astype(bool)].sort_values("label_reported_at")
    label_rows = list(labels.itertuples(index=False))
    next_label = 0
    limit = asyncio.Semaphore(concurrency)

    async with httpx.AsyncClient(base_url=api_url, timeout=10.0, headers=headers) as client:

        async def post(path: str, body: dict[str, object], is_payment: bool) -> None:
            async with limit:
                started = time.perf_counter()
                try:
                    resp = await client.post(path, json=body)
                except httpx.HTTPError as exc:
                    report.errors[type(exc).__name__] += 1
                    return
                if resp.status_code >= 400:
                    report.errors[f"HTTP {resp.status_code}"] += 1
                    return
                if is_payment:
                    report.latencies_ms.append((time.perf_counter() - started) * 1000)
                    report.decisions[resp.json()["decision"]] += 1

        tasks: list[asyncio.Task[None]] = []
        t0 = time.perf_counter()
        for i, row in enumerate(traffic.itertuples(index=False)):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            while next_label < len(label_rows) and \
                    label_rows[next_label].label_reported_at <= row.timestamp:
                lrow = pd.Series(label_rows[next_label]._asdict())
                tasks.append(asyncio.create_task(post("/v1/labels", label_body(lrow), False)))
                report.labels_sent += 1
                next_label += 1
            body = payment_body(pd.Series(row._asdict()))
            tasks.append(asyncio.create_task(post("/v1/payments/score", body, True)))
            report.sent += 1
            if progress is not None:
                progress(1)
        await asyncio.gather(*tasks)
        report.elapsed_s = time.perf_counter() - t0
    return report
