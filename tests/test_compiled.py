import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from model.compiled import CompiledForest


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(6000, 8))
    X[:, 3] = rng.exponential(size=6000)
    logit = 2 * X[:, 0] - X[:, 1] * X[:, 2] + np.log1p(X[:, 3]) - 3
    y = (rng.random(6000) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y


@pytest.mark.parametrize("params", [
    {"max_iter": 200, "max_leaf_nodes": 31},
    {"max_iter": 120, "max_depth": 4, "learning_rate": 0.3},
    {"max_iter": 1},
])
def test_compiled_forest_equals_sklearn_predict_proba(data, params):
    X, y = data
    model = HistGradientBoostingClassifier(random_state=0, early_stopping=False, **params)
    model.fit(X[:4000], y[:4000])
    forest = CompiledForest.from_sklearn(model)
    test = X[4000:]
    ours = np.array([forest.predict_proba(row) for row in test])
    np.testing.assert_allclose(ours, model.predict_proba(test)[:, 1], rtol=0, atol=1e-9)
    # the batch walk (the shadow's) gives the same, NaNs routed as training sent them
    test = test.copy()
    test[::7, 1] = np.nan
    np.testing.assert_allclose(forest.predict_proba_many(test), model.predict_proba(test)[:, 1],
                               rtol=0, atol=1e-9)


def test_missing_values_follow_the_learned_direction(data):
    X, y = data
    X = X.copy()
    X[::7, 0] = np.nan  # missing during training: each split learns where NaN goes
    model = HistGradientBoostingClassifier(max_iter=80, random_state=0).fit(X, y)
    forest = CompiledForest.from_sklearn(model)
    test = X[:500]
    assert np.isnan(test).any()
    ours = np.array([forest.predict_proba(row) for row in test])
    np.testing.assert_allclose(ours, model.predict_proba(test)[:, 1], rtol=0, atol=1e-9)
    # the batch walk (the shadow's) gives the same, NaNs routed as training sent them
    test = test.copy()
    test[::7, 1] = np.nan
    np.testing.assert_allclose(forest.predict_proba_many(test), model.predict_proba(test)[:, 1],
                               rtol=0, atol=1e-9)


def test_contributions_add_up_to_the_raw_score(data):
    X, y = data
    model = HistGradientBoostingClassifier(max_iter=60, random_state=0).fit(X, y)
    forest = CompiledForest.from_sklearn(model)
    for row in X[:50]:
        e = forest.explain(row)
        assert e.bias + e.contributions.sum() == pytest.approx(e.raw, abs=1e-9)
        assert e.proba == pytest.approx(forest.predict_proba(row), abs=1e-15)
    # features the target ignores get (almost) nothing
    mean_abs = np.mean([np.abs(forest.explain(r).contributions) for r in X[:300]], axis=0)
    assert mean_abs[0] > 5 * mean_abs[5]


def test_refuses_what_it_cannot_compile(data):
    from sklearn.linear_model import LogisticRegression

    X, y = data
    with pytest.raises(TypeError, match="HistGradientBoostingClassifier"):
        CompiledForest.from_sklearn(LogisticRegression().fit(X, y))
    forest = CompiledForest.from_sklearn(
        HistGradientBoostingClassifier(max_iter=5).fit(X, y))
    with pytest.raises(ValueError, match="expected 8 features"):
        forest.predict_proba(np.zeros(3))
