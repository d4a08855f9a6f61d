"""Population stability index (PSI): how far a distribution moved from the training window's.

Training stores, for the score and each feature, the training window's decile edges and the
share of payments between them (``reference``). Live payments are binned on the same edges:

    PSI = sum over bins of (live share - reference share) * ln(live share / reference share)

The field's reading: under 0.1 stable, 0.1 to 0.25 a shift worth watching, over 0.25 a
shift that calls for a look (and usually a retraining).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

BINS = 10
# An empty bin would make the logarithm infinite: shares are floored at this.
EPSILON = 1e-4
WATCH = 0.1
ACT = 0.25


def reference(values: np.ndarray, bins: int = BINS) -> dict[str, list[float]]:
    """Quantile edges (inner ones only; ties merged) and the share of values in each bin."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return {"edges": [], "expected": [1.0]}
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, values, side="right"),
                         minlength=len(edges) + 1)
    return {"edges": edges.tolist(), "expected": (counts / counts.sum()).tolist()}


def psi(ref: Mapping[str, Sequence[float]], values: np.ndarray) -> float | None:
    """PSI of ``values`` against a ``reference``; None without values."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return None
    edges = np.asarray(ref["edges"], dtype=float)
    expected = np.maximum(np.asarray(ref["expected"], dtype=float), EPSILON)
    counts = np.bincount(np.searchsorted(edges, values, side="right"),
                         minlength=len(edges) + 1)
    actual = np.maximum(counts / counts.sum(), EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def references(features: Mapping[str, np.ndarray], scores: np.ndarray) -> dict[str, Any]:
    """The ``reference`` block of a model's metadata."""
    return {"bins": BINS, "score": reference(scores),
            "features": {name: reference(col) for name, col in features.items()}}
