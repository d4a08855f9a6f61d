"""Fraud-detection metrics the way the field reports them, with confidence intervals.

- AUC-ROC and average precision over the test payments.
- Card precision@k per day, the field's way (``card_precision_at_k``, the headline): each
  day investigators check the k cards with the highest score; the share of them that
  really had fraud that day. A card is left out of a day when it is known compromised:
  a fraud on it was reported before the day, or the investigators themselves alerted it
  in the top k on an earlier day of the window and found its fraud (it is blocked from
  then on, not detected again). ``card_precision_at_k_every_day`` leaves out only the
  reported ones, so a card found once counts again on each day it pays: the more
  generous figure, shown beside it.
- Recall at an alert budget: the share of fraud caught when alerting on the top x% of
  payments, and the fraud amount caught per alert (what a review is worth).

Intervals come from a bootstrap over cards (a card's payments stay together, since they
are not independent), with Poisson weights so that every replicate reuses one sort of the
scores. Comparing two models on the same payments uses the same replicates for both
(paired), which is what makes a small but real gain significant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class EvalConfig:
    k: int = 100  # cards checked per day
    alert_rate: float = 0.01  # share of payments alerted on, for recall and amount
    bootstrap: int = 200
    seed: int = 0


@dataclass(frozen=True)
class EvalSet:
    """Test payments (``card_id``, ``day``, ``amount``), their labels as matured, and since
    when each was known as fraud (NaN if never)."""

    payments: pd.DataFrame
    y: np.ndarray
    known_since: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def _ranked_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order by descending score, and the start of each run of equal scores in it."""
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return order, starts


def _auc_ap(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC and AP from per-group positive and negative weights (rows: replicates; groups
    in descending score), ties handled as scikit-learn does."""
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    p_all, n_all = tp[:, -1:], fp[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        # a positive beats every negative ranked below it, and half of those tied with it
        auc = (pos * (n_all - fp) + 0.5 * pos * neg).sum(axis=1) / (p_all * n_all)[:, 0]
        precision = tp / (tp + fp)
        ap = (pos / p_all * precision).sum(axis=1)
    return auc, ap


def _card_precision_per_day(test: EvalSet, scores: np.ndarray, k: int
                            ) -> tuple[pd.Series, pd.Series]:
    """Per day, the share of fraud among the k top-scored cards: the field's count, and the
    count that checks the cards found on earlier days again (see the module)."""
    p = test.payments
    day_start = p["day"].map(lambda d: pd.Timestamp(d).timestamp()).to_numpy()
    frame = pd.DataFrame({"card": p["card_id"].to_numpy(), "day": p["day"].to_numpy(),
                          "score": scores, "y": test.y})
    # Known compromised: a fraud on the card known before the day starts.
    first_known = (pd.Series(test.known_since, index=p["card_id"].to_numpy())
                   .groupby(level=0).min())
    known = frame["card"].map(first_known).to_numpy() < day_start
    per_card = (frame[~known].groupby(["day", "card"], sort=False)
                .agg(score=("score", "max"), y=("y", "max")).reset_index())
    per_card = per_card.sort_values(["day", "score"], ascending=[True, False], kind="stable")
    every_day = per_card.groupby("day", sort=True).head(k).groupby("day", sort=True)["y"].mean()
    # Day after day, as investigators work: a card alerted in the top k whose fraud they
    # confirmed is blocked from then on, and is not found again on the following days.
    found: set[str] = set()
    field: dict[object, float] = {}
    for day, cards in per_card.groupby("day", sort=True):
        top = cards[~cards["card"].isin(found)].head(k)
        field[day] = float(top["y"].mean())
        found.update(top["card"][top["y"] == 1])
    return pd.Series(field, dtype=float), every_day


def evaluate(test: EvalSet, scores: np.ndarray, cfg: EvalConfig = EvalConfig(),
             replicates: np.ndarray | None = None) -> dict[str, float]:
    """Every metric, with ``_low``/``_high`` 95% bounds where a bootstrap applies."""
    if len(test) == 0:
        raise ValueError("no test payments to evaluate on")
    y = test.y.astype(float)
    amount = test.payments["amount"].to_numpy(dtype=float)
    out: dict[str, float] = {"test_payments": float(len(y)), "test_fraud": float(y.sum())}

    n_alerts = max(1, round(cfg.alert_rate * len(y)))
    blocks = [_block_metrics(np.ones((1, len(y))), scores, y, amount, n_alerts)]
    if replicates is not None:
        blocks += [_block_metrics(replicates[i:i + CHUNK], scores, y, amount, n_alerts)
                   for i in range(0, len(replicates), CHUNK)]
    auc, ap, recall, amount_per_alert = (np.concatenate(parts) for parts in zip(*blocks,
                                                                                 strict=True))
    for name, values in (("auc_roc", auc), ("average_precision", ap),
                         ("recall_at_budget", recall),
                         ("fraud_amount_per_alert", amount_per_alert)):
        out[name] = float(values[0])
        if len(values) > 1:
            out[f"{name}_low"], out[f"{name}_high"] = (
                float(v) for v in np.nanpercentile(values[1:], [2.5, 97.5]))
    daily, every_day = _card_precision_per_day(test, np.asarray(scores, dtype=float), cfg.k)
    out["card_precision_at_k"] = float(daily.mean()) if len(daily) else float("nan")
    out["card_precision_at_k_every_day"] = \
        float(every_day.mean()) if len(every_day) else float("nan")
    if len(daily) > 1:  # days are the unit investigators work in: a t-interval over them
        half = 1.96 * float(daily.std(ddof=1)) / np.sqrt(len(daily))
        out["card_precision_at_k_low"] = out["card_precision_at_k"] - half
        out["card_precision_at_k_high"] = out["card_precision_at_k"] + half
    return out


# Replicates weighed at once: bounds memory to CHUNK x payments.
CHUNK = 25


def _block_metrics(weights: np.ndarray, scores: np.ndarray, y: np.ndarray,
                   amount: np.ndarray, n_alerts: int) -> tuple[np.ndarray, ...]:
    order, starts = _ranked_groups(np.asarray(scores, dtype=float))
    w = weights[:, order]
    wy = w * y[order]
    auc, ap = _auc_ap(np.add.reduceat(wy, starts, axis=1),
                      np.add.reduceat(w - wy, starts, axis=1))
    caught = wy[:, :n_alerts].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = caught / wy.sum(axis=1)
        per_alert = (wy[:, :n_alerts] * amount[order][:n_alerts]).sum(1) / w[:, :n_alerts].sum(1)
    return auc, ap, recall, per_alert


def card_replicates(test: EvalSet, cfg: EvalConfig = EvalConfig()) -> np.ndarray:
    """Bootstrap weights, ``(cfg.bootstrap, len(test))``: each card drawn Poisson(1) times."""
    codes, uniques = pd.factorize(test.payments["card_id"])
    rng = np.random.default_rng(cfg.seed)
    return rng.poisson(1.0, size=(cfg.bootstrap, len(uniques)))[:, codes].astype(float)


def paired_gain(test: EvalSet, candidate: np.ndarray, other: np.ndarray,
                replicates: np.ndarray, metric: str = "average_precision") -> dict[str, float]:
    """The candidate's gain over ``other`` on ``metric`` (AUC or AP), with a paired 95%
    interval: significant when the interval is above zero."""
    return gain_between(metric_replicates(test, candidate, replicates, metric),
                        metric_replicates(test, other, replicates, metric))


def metric_replicates(test: EvalSet, scores: np.ndarray, replicates: np.ndarray,
                      metric: str = "average_precision") -> np.ndarray:
    """``metric`` (AUC or AP) on the test window, then on each card-bootstrap replicate:
    computed once per model, any two models' rows give their paired gain
    (``gain_between``)."""
    if metric not in ("auc_roc", "average_precision"):
        raise ValueError(f"paired gain is computed for auc_roc or average_precision, "
                         f"not {metric!r}")
    y = test.y.astype(float)
    amount = test.payments["amount"].to_numpy(dtype=float)
    which = 0 if metric == "auc_roc" else 1
    weights = np.vstack([np.ones(len(y)), replicates])
    return np.concatenate([_block_metrics(weights[i:i + CHUNK], scores, y, amount, 1)[which]
                           for i in range(0, len(weights), CHUNK)])


def gain_between(values: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Paired gain of one model's ``metric_replicates`` over another's: the gain on the
    window, and the 95% interval of the replicates' gains."""
    gain = values - other
    low, high = (float(v) for v in np.nanpercentile(gain[1:], [2.5, 97.5]))
    return {"gain": float(gain[0]), "low": low, "high": high,
            "significant": float(low > 0)}
