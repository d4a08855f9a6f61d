"""Fraud-detection metrics on a test period.

Besides AUC-ROC and average precision, two that match how a fraud team works:

- card precision@k per day: each day investigators check the k cards with the highest
  score; the share of them that really had fraud that day. Cards whose fraud was already
  known before the day are left out: they are blocked, not detected.
- recall at a fixed alert rate: the share of fraud caught when alerting on the top x% of
  payments by score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score


def card_precision_at_k(
    payments: pd.DataFrame, scores: np.ndarray, y: np.ndarray,
    fraud_reported_at: pd.Series, k: int = 100,
) -> float:
    frame = payments[["card_id", "day"]].assign(score=scores, y=y)
    # Known compromised: a fraud label on the card reported before the day starts.
    known = (
        payments[["card_id"]].assign(at=fraud_reported_at.to_numpy()).dropna()
        .groupby("card_id")["at"].min()
    )
    precisions = []
    for day, group in frame.groupby("day", sort=True):
        day_start = pd.Timestamp(day).timestamp()
        first_known = group["card_id"].map(known)
        fresh = group[~(first_known < day_start)]
        per_card = fresh.groupby("card_id").agg(score=("score", "max"), y=("y", "max"))
        if per_card.empty:
            continue
        top = per_card.nlargest(min(k, len(per_card)), "score")
        precisions.append(float(top["y"].mean()))
    return float(np.mean(precisions)) if precisions else float("nan")


def recall_at_alert_rate(scores: np.ndarray, y: np.ndarray, rate: float) -> float:
    if y.sum() == 0:
        return float("nan")
    n_alerts = max(1, round(rate * len(scores)))
    top = np.argsort(-scores, kind="stable")[:n_alerts]
    return float(y[top].sum() / y.sum())


def evaluate(
    payments: pd.DataFrame, scores: np.ndarray, y: np.ndarray,
    fraud_reported_at: pd.Series, alert_rate: float = 0.01, k: int = 100,
) -> dict[str, float]:
    both = len(np.unique(y)) == 2
    return {
        "auc_roc": float(roc_auc_score(y, scores)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, scores)) if both else float("nan"),
        f"card_precision_at_{k}": card_precision_at_k(payments, scores, y,
                                                      fraud_reported_at, k),
        f"recall_at_{alert_rate:g}_alert_rate": recall_at_alert_rate(scores, y, alert_rate),
        "test_payments": float(len(y)),
        "test_fraud": float(y.sum()),
    }
