"""Send simulated traffic to a running API: payments at a fixed rate, labels as they mature.

Payments keep their simulated timestamps (event time), so a day of traffic can be replayed
in a minute; a label is sent once the simulated clock passes its ``reported_at``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pandas as pd

from model.schemas import PAYMENT_DETAILS


@dataclass
class TrafficReport:
    sent: int = 0
    labels_sent: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    retried: int = 0  # requests sent again after a transport error, as a gateway does
    decisions: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    answers: dict[str, dict[str, object]] = field(default_factory=dict)  # with keep_answers

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


OPTIONAL_FIELDS = ("country", "channel", "merchant_category", *PAYMENT_DETAILS)


def payment_body(row: pd.Series) -> dict[str, object]:
    body: dict[str, object] = {
        "payment_id": row["payment_id"],
        "timestamp": row["timestamp"].isoformat(),
        "card_id": row["card_id"],
        "terminal_id": row["terminal_id"],
        "amount": float(row["amount"]),
        "currency": row["currency"],
    }
    # and the card-not-present gateway's details (``model.schemas.Payment``), where given
    for optional in OPTIONAL_FIELDS:
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


# Times a request is sent again after a transport error before it counts as failed.
TRANSPORT_RETRIES = 2


async def send_traffic(
    api_url: str,
    traffic: pd.DataFrame,
    rate: float,
    concurrency: int = 32,
    headers: dict[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
    keep_answers: bool = False,
    settle: Callable[[list[pd.Series]], Awaitable[None]] | None = None,
    card_order: bool = False,
) -> TrafficReport:
    """Open loop: payment i is due at start + i/rate whatever the previous answers took.

    With ``settle``, the labels that fall due are posted and then awaited (accepted, and
    ``settle`` returns once they are in the features) before any later payment is sent:
    the clock pauses meanwhile, so no payment races the labels reported before it. With
    ``card_order``, a payment waits for the answer to its card's previous one, so that each
    card's payments reach the store in timestamp order despite the concurrency.
    """
    if rate <= 0:
        raise ValueError("rate must be > 0 payments per second")
    report = TrafficReport()
    labels = traffic[traffic["is_fraud"].astype(bool)].sort_values("label_reported_at")
    # Rows as named tuples: pandas' stubs type their fields as any scalar.
    label_rows: list[Any] = list(labels.itertuples(index=False))
    next_label = 0
    limit = asyncio.Semaphore(concurrency)

    async with httpx.AsyncClient(base_url=api_url, timeout=10.0, headers=headers) as client:

        last_of_card: dict[str, asyncio.Task[None]] = {}

        async def post(path: str, body: dict[str, object], is_payment: bool,
                       after: asyncio.Task[None] | None = None) -> None:
            if after is not None:
                await after
            async with limit:
                started = time.perf_counter()
                for attempt in range(TRANSPORT_RETRIES + 1):
                    try:
                        resp = await client.post(path, json=body)
                        break
                    except httpx.TransportError as exc:
                        # Typically a kept-alive connection the server closed just as this
                        # request left on it. Scoring and labels are idempotent by id, so
                        # sending the same body again is safe, and what a gateway does.
                        if attempt == TRANSPORT_RETRIES:
                            report.errors[type(exc).__name__] += 1
                            return
                        report.retried += 1
                        await asyncio.sleep(0.05 * (attempt + 1))
                    except httpx.HTTPError as exc:
                        report.errors[type(exc).__name__] += 1
                        return
                if resp.status_code >= 400:
                    report.errors[f"HTTP {resp.status_code}"] += 1
                    return
                if is_payment:
                    report.latencies_ms.append((time.perf_counter() - started) * 1000)
                    answer = resp.json()
                    report.decisions[answer["decision"]] += 1
                    if keep_answers:
                        report.answers[str(body["payment_id"])] = answer

        tasks: list[asyncio.Task[None]] = []
        t0 = time.perf_counter()
        row: Any
        for i, row in enumerate(traffic.itertuples(index=False)):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            due: list[pd.Series] = []
            while next_label < len(label_rows) and \
                    label_rows[next_label].label_reported_at <= row.timestamp:
                due.append(pd.Series(label_rows[next_label]._asdict()))
                next_label += 1
            posted = [asyncio.create_task(post("/v1/labels", label_body(lrow), False))
                      for lrow in due]
            tasks.extend(posted)
            report.labels_sent += len(due)
            if due and settle is not None:
                paused = time.perf_counter()
                await asyncio.gather(*tasks)  # earlier payments recorded, labels accepted
                await settle(due)
                t0 += time.perf_counter() - paused
            body = payment_body(pd.Series(row._asdict()))
            after = last_of_card.get(row.card_id) if card_order else None
            task = asyncio.create_task(post("/v1/payments/score", body, True, after))
            tasks.append(task)
            if card_order:
                last_of_card[row.card_id] = task
            report.sent += 1
            if progress is not None:
                progress(1)
        await asyncio.gather(*tasks)
        report.elapsed_s = time.perf_counter() - t0
    return report


def spread_sample(traffic: pd.DataFrame, count: int) -> pd.DataFrame:
    """``count`` payments spread evenly over the traffic's period (all of it if 0), so that
    labels mature while they are sent."""
    if not count:
        return traffic
    return traffic.iloc[::max(1, len(traffic) // count)].head(count)
