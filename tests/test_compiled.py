import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from model.compiled import CompiledForest, compile_model


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


def _forests():
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    return [RandomForestClassifier(n_estimators=30, max_depth=12, min_samples_leaf=3,
                                   random_state=0),
            ExtraTreesClassifier(n_estimators=30, max_depth=12, min_samples_leaf=3,
                                 random_state=0),
            RandomForestClassifier(n_estimators=5, random_state=1)]  # grown to pure leaves


@pytest.mark.parametrize("model", _forests(), ids=lambda m: type(m).__name__)
def test_compiled_forests_equal_sklearn_and_explain_in_log_odds(data, model):
    X, y = data
    X = X.copy()
    X[::9, 2] = np.nan  # missing in training: each split learned where NaN goes
    model.fit(X[:4000], y[:4000])
    compiled = compile_model(model)
    test = X[4000:]
    expected = model.predict_proba(test)[:, 1]
    ours = np.array([compiled.predict_proba(row) for row in test])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(compiled.predict_proba_many(test), expected, rtol=0, atol=1e-9)
    for row in test[:200]:
        e = compiled.explain(row)
        p = min(max(e.proba, 1e-6), 1 - 1e-6)
        assert e.raw == pytest.approx(np.log(p / (1 - p)), abs=1e-9)
        assert e.bias + e.contributions.sum() == pytest.approx(e.raw, abs=1e-9)
    # the signal's features are credited, the ignored ones (almost) not
    mean_abs = np.mean([np.abs(compiled.explain(r).contributions) for r in test[:300]], axis=0)
    assert mean_abs[0] > 5 * mean_abs[5]


def test_a_compiled_blend_is_its_members_mean_and_explains_in_log_odds(data):
    from sklearn.ensemble import RandomForestClassifier

    from model.ensemble import MeanBlend

    X, y = data
    blend = MeanBlend([HistGradientBoostingClassifier(max_iter=50, random_state=0),
                       RandomForestClassifier(n_estimators=20, max_depth=8, random_state=0)])
    blend.fit(X[:4000], y[:4000], sample_weight=np.ones(4000))
    compiled = compile_model(blend)
    test = X[4000:]
    expected = blend.predict_proba(test)[:, 1]
    np.testing.assert_allclose(expected, np.mean([m.predict_proba(test)[:, 1]
                                                  for m in blend.fitted_], axis=0))
    np.testing.assert_allclose(compiled.predict_proba_many(test), expected, rtol=0, atol=1e-9)
    for row in test[:100]:
        e = compiled.explain(row)
        assert e.proba == pytest.approx(blend.predict_proba(row[None])[0, 1], abs=1e-9)
        assert e.bias + e.contributions.sum() == pytest.approx(e.raw, abs=1e-9)


@pytest.mark.parametrize("imputed", [True, False])
def test_compiled_logistic_regression_equals_sklearn(data, imputed):
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = data
    X = X.copy()
    if imputed:
        X[::5, 1] = np.nan
    steps = [SimpleImputer(strategy="median")] if imputed else []
    model = make_pipeline(*steps, StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(X[:4000], y[:4000])
    compiled = compile_model(model)
    test = X[4000:]
    expected = model.predict_proba(test)[:, 1]
    np.testing.assert_allclose([compiled.predict_proba(r) for r in test], expected,
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(compiled.predict_proba_many(test), expected, rtol=0, atol=1e-9)
    z = model.decision_function(test[:50])
    for row, raw in zip(test[:50], z, strict=True):
        e = compiled.explain(row)
        assert e.raw == pytest.approx(raw, abs=1e-9)
        assert e.bias + e.contributions.sum() == pytest.approx(raw, abs=1e-9)


def test_refuses_what_it_cannot_compile(data):
    from sklearn.impute import SimpleImputer
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler

    X, y = data
    with pytest.raises(TypeError, match="HistGradientBoostingClassifier"):
        CompiledForest.from_sklearn(KNeighborsClassifier().fit(X, y))
    with pytest.raises(TypeError, match="not KNeighborsClassifier"):
        compile_model(KNeighborsClassifier().fit(X, y))
    from sklearn.linear_model import LogisticRegression
    with pytest.raises(TypeError, match="not after MinMaxScaler"):
        compile_model(make_pipeline(SimpleImputer(), MinMaxScaler(),
                                    LogisticRegression()).fit(X, y))
    forest = CompiledForest.from_sklearn(
        HistGradientBoostingClassifier(max_iter=5).fit(X, y))
    with pytest.raises(ValueError, match="expected 8 features"):
        forest.predict_proba(np.zeros(3))
