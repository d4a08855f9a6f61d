"""Calibrated scores: a score means a probability, the ranking is kept."""

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import roc_auc_score

from model.calibration import ISOTONIC_MIN_FRAUD, Calibration, curve, fit, logit
from model.scorer import Scorer


def overconfident(n: int, seed: int, rate: float = -4.0) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose log-odds are twice, and 3 above, the truth's: a model trained on
    sampled-down legitimate payments says 'fraud' far too readily."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n) * 1.5 + rate
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return 1 / (1 + np.exp(-(2 * z + 3))), y


@pytest.mark.parametrize(("n", "kind"), [(4000, "platt"), (60000, "isotonic")])
def test_calibration_turns_scores_into_observed_rates_on_new_payments(n, kind):
    scores, y = overconfident(n, seed=1)
    cal = fit(scores, y)
    assert cal.kind == kind and (y.sum() >= ISOTONIC_MIN_FRAUD) == (kind == "isotonic")
    fresh, y_fresh = overconfident(60000, seed=2)
    before, after = curve(fresh, y_fresh), curve(cal(fresh), y_fresh)
    assert after["ece"] < before["ece"] / 4
    # the ranking is the model's: AUC unchanged, no two scores tied by the map
    assert roc_auc_score(y_fresh, cal(fresh)) == pytest.approx(roc_auc_score(y_fresh, fresh),
                                                               abs=1e-4)
    inside = np.sort(fresh[(fresh > min(cal.x or [0])) & (fresh < max(cal.x or [1]))])
    assert np.all(np.diff(cal(inside)) >= 0)
    assert np.unique(cal(inside)).size >= 0.99 * np.unique(inside).size
    # one score at a time equals the batch, and the form round-trips through metadata
    assert cal.one(float(fresh[0])) == pytest.approx(float(cal(fresh[:1])[0]), abs=1e-12)
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_calibration_needs_both_classes_and_old_models_keep_their_scores():
    with pytest.raises(ValueError, match="fraud and legitimate"):
        fit(np.linspace(0, 1, 50), np.zeros(50))
    identity = Calibration.from_dict(None)
    assert identity.kind == "identity" and identity.one(0.37) == 0.37


def test_the_scorer_serves_calibrated_scores_and_reasons_in_their_log_odds():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(5000, 3))
    y = (X[:, 0] + rng.normal(size=5000) > 2.2).astype(int)
    model = RandomForestClassifier(n_estimators=20, max_depth=8, random_state=0,
                                   class_weight="balanced").fit(X[:3000], y[:3000])
    cal = fit(model.predict_proba(X[3000:])[:, 1], y[3000:])
    meta = {"version": "v1", "features": ["a", "b", "c"],
            "thresholds": {"review": 0.2, "decline": 0.6}, "calibration": cal.to_dict()}
    scorer = Scorer(model, meta)
    raw = model.predict_proba(X[3000:3200])[:, 1]
    np.testing.assert_allclose(scorer.probabilities(X[3000:3200]), cal(raw), atol=1e-9)
    assert scorer.probabilities(X[3000:3200]).mean() < raw.mean()  # balanced: overconfident
    assert scorer.compiled is not None
    prior = cal.one(float(1 / (1 + np.exp(-scorer.compiled.explain(X[0]).bias))))
    for row in X[3000:3050]:
        outcome = scorer.score(dict(zip("abc", row, strict=True)))
        assert outcome.score == pytest.approx(cal.one(float(model.predict_proba(row[None])[0, 1])),
                                              abs=1e-9)
        credits = scorer._calibrated(scorer.compiled.explain(row).contributions,
                                     scorer.compiled.explain(row).raw,
                                     scorer.compiled.explain(row).bias, outcome.score)
        assert credits.sum() == pytest.approx(float(logit(np.asarray(outcome.score))
                                                    - logit(np.asarray(prior))), abs=1e-6)
