import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from model.features import FEATURE_NAMES
from model.registry import Registry, RegistryError
from model.scorer import Scorer, Thresholds


def fitted_model(n_features: int):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, n_features))
    y = (X[:, 0] > 1.0).astype(int)
    return LogisticRegression().fit(X, y)


def metadata(names, review=0.3, decline=0.8):
    return {
        "features": names,
        "thresholds": {"review": review, "decline": decline},
        "reference": {"mean": dict.fromkeys(names, 0.0), "std": dict.fromkeys(names, 1.0)},
    }


@pytest.mark.parametrize(("score", "decision"), [
    (0.0, "approve"), (0.299, "approve"), (0.3, "review"), (0.79, "review"), (0.8, "decline"),
])
def test_thresholds_decide(score, decision):
    assert Thresholds(review=0.3, decline=0.8).decide(score) == decision


def test_thresholds_must_be_ordered():
    with pytest.raises(ValueError, match="review <= decline"):
        Thresholds(review=0.9, decline=0.2)


def test_registry_register_promote_and_load(tmp_path):
    reg = Registry(tmp_path)
    assert reg.current() is None
    names = list(FEATURE_NAMES)
    mv = reg.register(fitted_model(len(names)), metadata(names))
    assert reg.current_version() is None  # registering is not promoting
    reg.promote(mv.version)
    assert reg.current_version() == mv.version
    meta = json.loads((mv.path / "metadata.json").read_text())
    assert len(meta["sha256"]) == 64 and meta["features"] == names
    scorer = Scorer.from_version(reg.current())
    outcome = scorer.score(dict.fromkeys(names, 0.0) | {"amount": 5.0})
    assert 0.0 <= outcome.score <= 1.0
    assert outcome.decision in {"approve", "review", "decline"}
    assert [v.version for v in reg.versions()] == [mv.version]


def test_registry_refuses_a_model_whose_bytes_changed(tmp_path):
    reg = Registry(tmp_path)
    mv = reg.register(fitted_model(3), metadata(["a", "b", "c"]))
    with open(mv.path / "model.joblib", "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(RegistryError, match="sha256"):
        mv.load_estimator()


def test_registry_unknown_version_and_missing_features(tmp_path):
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError, match="no model version"):
        reg.promote("v-nope")
    with pytest.raises(RegistryError, match="features"):
        reg.register(fitted_model(2), {"features": []})


def test_scorer_reasons_are_this_payments_largest_contributions():
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, 3))
    y = ((X[:, 0] > 1.0) | (X[:, 2] > 1.5)).astype(int)
    model = HistGradientBoostingClassifier(max_iter=50, random_state=0).fit(X, y)
    scorer = Scorer(model, {"version": "v1", **metadata(["a", "b", "c"], 0.1, 0.5)})
    assert scorer.compiled is not None
    outcome = scorer.score({"a": 2.5, "b": 0.0, "c": 0.0})
    assert outcome.decision == "decline"
    assert outcome.reasons[0]["code"] == "score_above_decline_threshold"
    assert outcome.reasons[1]["feature"] == "a" and outcome.reasons[1]["value"] == 2.5
    assert "b" not in [r.get("feature") for r in outcome.reasons]
    other = scorer.score({"a": 0.0, "b": 0.0, "c": 3.0})
    assert other.reasons[1]["feature"] == "c"  # per payment, not a global importance
    calm = scorer.score({"a": -2.0, "b": 0.0, "c": -2.0})
    assert calm.decision == "approve" and calm.reasons == []


def test_a_logistic_regression_is_compiled_and_explains_its_score():
    scorer = Scorer(fitted_model(3), {"version": "v1", **metadata(["a", "b", "c"], 0.1, 0.5)})
    assert scorer.compiled is not None
    outcome = scorer.score({"a": 6.0, "b": 0.1, "c": 0.0})
    assert outcome.decision == "decline"
    assert outcome.score == pytest.approx(
        scorer.estimator.predict_proba([[6.0, 0.1, 0.0]])[0, 1], abs=1e-12)
    assert [r.get("feature") for r in outcome.reasons] == [None, "a"]


def test_scorer_falls_back_to_predict_proba_for_other_estimators():
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    model = KNeighborsClassifier().fit(X, (X[:, 0] > 1.0).astype(int))
    scorer = Scorer(model, {"version": "v1", **metadata(["a", "b", "c"], 0.1, 0.5)})
    assert scorer.compiled is None
    outcome = scorer.score({"a": 6.0, "b": 0.1, "c": 4.0})
    assert outcome.decision == "decline"
    assert [r["code"] for r in outcome.reasons] == ["score_above_decline_threshold"]


def test_scorer_names_a_missing_feature():
    scorer = Scorer(fitted_model(2), {"version": "v1", **metadata(["a", "b"])})
    with pytest.raises(ValueError, match="'b'"):
        scorer.score({"a": 1.0})
