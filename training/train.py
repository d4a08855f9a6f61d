"""``fraudstream train``: evaluate honestly, compare with baselines and the current model,
refit the winner on everything matured, promote only on a significant gain.

The split is by time, never at random, and each side only knows what it would have known::

    |------ train ------|-- maturity --|---- test ----|-- maturity --|  <- cut-off
                        ^ labels known here            ^ test labels known here (matured)

- **Maturity**: labels arrive days to weeks after a payment. A test window that ends at
  the newest payment would count its unreported fraud as legitimate (and a live system,
  where that window has no labels yet, could never compare models). So the test window
  ends one maturity period before the cut-off, and the training payments end one maturity
  period before the test starts, labelled with what was known then. The maturity defaults
  to the 90th percentile of the label delays observed in the history.
- **Model selection**: several families are fitted on the same rows (``FAMILIES``: a
  logistic regression, the tuned gradient boosting, a random forest, the same with
  balanced class weights, extra trees) and judged on the matured test window by average
  precision with paired card-bootstrap intervals. The candidate is the simplest family
  that no other beats significantly (``choose_family``): the best one, unless a simpler
  one is within its interval; the blend of the two best (the mean of their probabilities)
  is judged last, as the most complex. So the candidate is never significantly worse than
  any family it was compared with, on a first run included; the textbook ones (the logistic
  regression, the random forest) are the field's baselines.
- **The gate**: the candidate replaces the current model only if its average precision on
  the same matured test window is higher with a paired bootstrap interval above zero.
- **Champion refit**: the promoted artifact is the candidate's configuration refitted on
  every payment matured by the cut-off. Its thresholds are set on the held-back test
  window's out-of-sample scores: by alert budget (review and decline rates), or by cost
  (the review threshold that maximises fraud amount caught minus the cost of reviews).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import sklearn
from sklearn.ensemble import (
    ExtraTreesClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from model import calibration
from model.catalogue import DEFAULT, Catalogue
from model.drift import references
from model.ensemble import MeanBlend, fit_weighted
from model.features import DAY, FEATURE_NAMES, TERMINAL_HORIZON
from model.labels import fraud_known_since, fraud_spells
from model.point_in_time import compute_features
from model.registry import ModelVersion, Registry
from stores.history import HistoryStore
from training.dataset import load, newest_event
from training.evaluate import (
    EvalConfig,
    EvalSet,
    card_replicates,
    evaluate,
    gain_between,
    metric_replicates,
)

PRIMARY_METRIC = "average_precision"
# The families model selection fits, simplest first: where two are within each other's
# intervals, the earlier is chosen. The tuned gradient boosting (300 trees of 15 leaves)
# comes before the forests, whose 50 trees of depth 20 hold far more leaves to serve and to
# explain. The balanced forest is the field's answer to class imbalance (each tree weighs
# the classes equally in its bootstrap sample), kept only when it wins like any family.
FAMILIES = ("logistic_regression", "gradient_boosting", "random_forest",
            "random_forest_balanced", "extra_trees")
# The mean of the two best families' probabilities: judged last, as the most complex.
BLEND = "blend"
GRADIENT_BOOSTING = "gradient_boosting"
# The textbook models the report names as the field's baselines.
BASELINES = ("logistic_regression", "random_forest")
CURRENT = "current"
# Forests: 50 trees on at most 100,000 payments each, so that they stay cheap to fit and
# to serve (on 1.2 M training payments, 100 trees of 200,000 took 150 s here for no better
# a score).
RF_MAX_SAMPLES = 100_000
RF_TREES = 50
# Payments of the test window kept as the drift reference (score and feature deciles).
REFERENCE_ROWS = 100_000


class TrainingError(ValueError):
    pass


@dataclass(frozen=True)
class TrainConfig:
    test_days: float = 7.0
    maturity_days: float | None = None  # None: the observed label delays' 90th percentile
    train_days: float | None = None  # None: every matured payment after the warm-up
    warm_up_days: float | None = None  # None: the longest feature window (37 days)
    cutoff: float | None = None  # epoch seconds; None: the newest event in the history
    thresholds_by: Literal["budget", "cost"] = "budget"
    review_rate: float = 0.03  # share of payments sent to review ("budget")
    decline_rate: float = 0.005
    review_cost: float = 5.0  # what one review costs, in the payments' currency ("cost")
    alert_rate: float = 0.01  # the alert budget the recall and amount metrics use
    k: int = 100
    bootstrap: int = 200
    # Fit every family of FAMILIES and choose; False: the gradient boosting alone (a
    # cheaper run, no selection and no baselines in the report).
    baselines: bool = True
    force: bool = False
    # Scores calibrated on the matured test window's out-of-sample scores (model.calibration)
    calibrate: bool = True
    # The features to train on: today's 25, or the installation's catalogue (the default
    # catalogue and the team's features.toml, ``model.catalogue_file``).
    features: Literal["today", "catalogue"] = "today"
    # A candidate that passes the gate first runs in shadow beside the champion (the retrain
    # worker's way); False promotes it at once (the way of ``fraudstream train``).
    shadow: bool = False
    # Legitimate payments are sampled down to at most this many training rows (every fraud
    # kept, the sampled weighted back up): fits stay within the time budget on big books,
    # and with fraud under 1% the dropped rows add little.
    max_train_rows: int = 400_000
    # The candidate: gradient-boosted trees, tuned on the simulated books of
    # benchmarks/model_quality.py. Small leaves of at least 100 payments and half the
    # features per split keep it from learning one book's accidents: on the smaller books
    # the untuned defaults lost 0.03-0.04 AP to a random forest.
    max_iter: int = 300
    learning_rate: float = 0.05
    max_leaf_nodes: int = 15
    max_depth: int = 8  # the compiled scorer walks trees level by level: depth sets its cost
    min_samples_leaf: int = 100
    l2_regularization: float = 1.0
    max_features: float = 0.5
    seed: int = 0
    # Seconds the gradient boosting's hyperparameter search may spend (``search``): on a
    # validation slice at the end of the training window, never on the test window; 0: the
    # tuned settings above as they are.
    search_seconds: float = 60.0

    def eval_config(self) -> EvalConfig:
        return EvalConfig(k=self.k, alert_rate=self.alert_rate, bootstrap=self.bootstrap,
                          seed=self.seed)


@dataclass
class TrainResult:
    version: str
    promoted: bool
    decision: str
    metrics: dict[str, float]  # the candidate's, on the matured test window
    comparison: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> metrics
    gains: dict[str, dict[str, float]] = field(default_factory=dict)  # candidate vs model
    family: str = GRADIENT_BOOSTING  # the family chosen as the candidate
    selection: str = ""  # why that family
    calibration: dict[str, Any] = field(default_factory=dict)  # how, and its curves
    search: dict[str, Any] = field(default_factory=dict)  # the settings tried, and chosen
    warnings: list[str] = field(default_factory=list)
    window: dict[str, Any] = field(default_factory=dict)
    previous_version: str | None = None
    shadowed: bool = False  # passed the gate and entered the shadow as challenger


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def observed_maturity_days(payments: pd.DataFrame, labels: pd.DataFrame) -> float:
    """The 90th percentile of fraud label delays (whole days, at least one); 7 days when
    the history has no fraud label yet."""
    spells = fraud_spells(labels)
    if spells.empty:
        return 7.0
    ts = spells["payment_id"].map(payments.set_index("payment_id")["ts"])
    delays = (spells["known_since"] - ts).dropna().to_numpy()
    if len(delays) == 0:
        return 7.0
    return float(max(1, math.ceil(np.quantile(delays, 0.9) / DAY - 1e-9)))


# The settings the search tries after the tuned ones, in this order, while its time lasts:
# faster and slower learning, bigger and smaller trees, less regularisation, every feature
# at each split. The depth stays within the compiled scorer's budget.
SEARCH_SPACE: tuple[dict[str, Any], ...] = (
    {"learning_rate": 0.1, "max_iter": 150},
    {"max_leaf_nodes": 31, "min_samples_leaf": 50},
    {"max_leaf_nodes": 7},
    {"l2_regularization": 0.0, "min_samples_leaf": 20},
    {"max_features": 1.0},
    {"learning_rate": 0.03, "max_iter": 500},
)


def search(X: np.ndarray, payments: pd.DataFrame, spells: pd.DataFrame, y_then: np.ndarray,
           split: Split, maturity_days: float, cfg: TrainConfig,
           step: Callable[[str], Any] | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """The gradient boosting's settings, searched as ``train`` evaluates, one level down:
    the last ``test_days`` (at most a third) of the training window are the validation
    slice, labelled as known when the test window starts (matured: the training window ends
    a maturity period before it); the search fits on the payments ending a maturity period
    before that slice, labelled as known at its start. Tuned settings first, then
    ``SEARCH_SPACE`` while ``cfg.search_seconds`` last; the best average precision on the
    slice wins (the tuned ones on a tie). The test window is never seen. A training window
    too short for that gap is fitted up to the slice."""
    from sklearn.metrics import average_precision_score

    if cfg.search_seconds <= 0:
        return cfg, {"why": "no search (search_seconds 0)"}
    ts = payments["ts"].to_numpy(dtype=float)
    train_ts = ts[split.train]
    start, end = float(train_ts.min()), float(np.nextafter(train_ts.max(), np.inf))
    val_days = min(cfg.test_days, (end - start) / DAY / 3)
    val_start = end - val_days * DAY
    fit_end = val_start - maturity_days * DAY
    gap = maturity_days
    if fit_end - start < val_days * DAY:
        # A window too short for the gap: the search fits up to the slice, its newest labels
        # unmatured (it ranks settings; the slice it is judged on is matured all the same).
        fit_end, gap = val_start, 0.0
    fit_rows = split.train & (ts < fit_end)
    val_rows = split.train & (ts >= val_start)
    y_fit = fraud_known_since(payments["payment_id"], spells,
                              val_start).notna().to_numpy(dtype=int)
    y_val = y_then[val_rows]
    report: dict[str, Any] = {"validation_start": _iso(val_start), "validation_end": _iso(end),
                              "fit_end": _iso(fit_end), "gap_days": gap,
                              "budget_s": cfg.search_seconds,
                              "tried": []}
    if len(np.unique(y_fit[fit_rows])) < 2 or y_val.sum() == 0:
        report["why"] = ("the training window is too short or too clean for a validation "
                         "slice: the tuned settings kept")
        return cfg, report
    rows, weight = sample_rows(fit_rows, y_fit, cfg)
    began = time.perf_counter()
    best_ap, best = -1.0, cfg
    longest = 0.0
    for changes in ({}, *SEARCH_SPACE):
        # A fit is started only if, as long as the longest so far, it ends within budget.
        if changes and time.perf_counter() - began + longest > cfg.search_seconds:
            break
        if step is not None:
            step(f"search: {changes or 'the tuned settings'}")
        trial = replace(cfg, **changes)
        t = time.perf_counter()
        model = candidate_model(trial).fit(X[rows], y_fit[rows], sample_weight=weight)
        ap = float(average_precision_score(y_val, model.predict_proba(X[val_rows])[:, 1]))
        took = time.perf_counter() - t
        longest = max(longest, took)
        report["tried"].append({"settings": changes, "average_precision": ap,
                                "seconds": round(took, 2)})
        if ap > best_ap:
            best_ap, best = ap, trial
    report["chosen"] = next(t["settings"] for t in report["tried"]
                            if t["average_precision"] == best_ap)
    report["seconds"] = round(time.perf_counter() - began, 1)
    return best, report


def candidate_model(cfg: TrainConfig) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(
        max_iter=cfg.max_iter, learning_rate=cfg.learning_rate,
        max_leaf_nodes=cfg.max_leaf_nodes, max_depth=cfg.max_depth,
        min_samples_leaf=cfg.min_samples_leaf, l2_regularization=cfg.l2_regularization,
        max_features=cfg.max_features, early_stopping=False, random_state=cfg.seed,
    )


def family_model(name: str, n_train: int, cfg: TrainConfig) -> Any:
    """An unfitted model of one of ``FAMILIES``."""
    if name == GRADIENT_BOOSTING:
        return candidate_model(cfg)
    if name == "logistic_regression":
        # Features of entities a payment lacks are missing (NaN): the median stands in.
        return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True),
                             StandardScaler(), LogisticRegression(max_iter=500))
    forest = {"random_forest": (RandomForestClassifier, None),
              "random_forest_balanced": (RandomForestClassifier, "balanced_subsample"),
              "extra_trees": (ExtraTreesClassifier, None)}.get(name)
    if forest is None:
        raise ValueError(f"unknown model family {name!r}; choose from {', '.join(FAMILIES)}")
    kind, weights = forest
    return kind(n_estimators=RF_TREES, max_depth=20, min_samples_leaf=5, n_jobs=-1,
                bootstrap=True, class_weight=weights,
                max_samples=min(1.0, RF_MAX_SAMPLES / max(n_train, 1)), random_state=cfg.seed)



def choose_family(values: dict[str, np.ndarray]) -> tuple[str, str]:
    """The simplest family (in ``FAMILIES``' order) that no other beats significantly, and
    why. ``values``: each family's ``metric_replicates`` on the test window."""
    order = [f for f in (*FAMILIES, BLEND) if f in values]
    best = max(order, key=lambda f: (values[f][0], -order.index(f)))
    for family in order:
        beaten = [o for o in order if o != family
                  and gain_between(values[o], values[family])["significant"]]
        if beaten:
            continue
        if family == best:
            return family, (f"best {PRIMARY_METRIC} of {len(order)} families"
                            if len(order) > 1 else "the only family fitted")
        g = gain_between(values[best], values[family])
        return family, (f"{best.replace('_', ' ')}'s {g['gain']:+.4f} {PRIMARY_METRIC} over "
                        f"it is not significant (95% CI {g['low']:+.4f} .. {g['high']:+.4f}): "
                        "the simpler kept")
    # Significance is not transitive in general; the best is beaten by nobody's mean.
    return best, f"best {PRIMARY_METRIC} of {len(order)} families"


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    test: np.ndarray
    refit: np.ndarray
    window: dict[str, Any]
    train_known_at: float  # labels the training rows are labelled with: reported by then


def time_split(payments: pd.DataFrame, cutoff: float, maturity_days: float,
               cfg: TrainConfig) -> Split:
    ts = payments["ts"].to_numpy()
    maturity = maturity_days * DAY
    # An imported history's labels run on past its last payment: the window then ends
    # with the payments.
    test_end = min(cutoff - maturity, float(np.nextafter(ts.max(), np.inf)))
    test_start = test_end - cfg.test_days * DAY
    train_end = test_start - maturity
    # The history's first weeks have truncated windows (a card seems new, a terminal has
    # no matured labels yet): features unlike any a live payment gets. Left out of fitting
    # while enough history remains after them.
    first = float(ts.min())
    warmed = first + (TERMINAL_HORIZON if cfg.warm_up_days is None
                      else cfg.warm_up_days * DAY)
    if warmed >= train_end - DAY:
        warmed = first
    train_start = warmed if cfg.train_days is None else max(train_end - cfg.train_days * DAY,
                                                            warmed)
    refit_start = warmed if cfg.train_days is None else max(test_end - cfg.train_days * DAY,
                                                            warmed)
    split = Split(
        train=(ts >= train_start) & (ts < train_end),
        test=(ts >= test_start) & (ts < test_end),
        refit=(ts >= refit_start) & (ts < test_end),
        window={
            "cutoff": _iso(cutoff), "maturity_days": maturity_days,
            "train_start": _iso(train_start), "train_end": _iso(train_end),
            "test_start": _iso(test_start), "test_end": _iso(test_end),
            "refit_start": _iso(refit_start), "refit_end": _iso(test_end),
        },
        train_known_at=test_start,
    )
    span = (float(ts.max()) - first) / DAY
    need = f"test ({cfg.test_days:g}d) and two maturity periods ({maturity_days:g}d each)"
    if not split.test.any():
        raise TrainingError(f"no payments in the matured test window {split.window['test_start']}"
                            f" .. {split.window['test_end']}: the history spans {span:.1f} "
                            f"days; {need} must fit; import more history or pass "
                            "--maturity-days / --test-days")
    if not split.train.any():
        raise TrainingError(f"no payments left to train on: the history spans {span:.1f} days "
                            f"and {need} take the last {cfg.test_days + 2 * maturity_days:g}d; "
                            "import more history or pass --maturity-days / --test-days")
    return split


def sample_rows(rows: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Training rows (indices) and their weights: all fraud, legit sampled down."""
    idx = np.flatnonzero(rows)
    fraud = idx[y[idx] == 1]
    legit = idx[y[idx] == 0]
    keep = max(cfg.max_train_rows - len(fraud), 1)
    if len(legit) <= keep:
        return idx, np.ones(len(idx))
    rng = np.random.default_rng(cfg.seed)
    legit = np.sort(rng.choice(legit, size=keep, replace=False))
    chosen = np.sort(np.r_[fraud, legit])
    weight = np.where(y[chosen] == 1, 1.0, (len(idx) - len(fraud)) / keep)
    return chosen, weight


def _scores(model: Any, X: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict_proba(X)[:, 1], dtype=float)


def choose_thresholds(scores: np.ndarray, y: np.ndarray, amount: np.ndarray,
                      cfg: TrainConfig) -> dict[str, float]:
    """Review and decline thresholds on held-back, out-of-sample scores."""
    decline = float(np.quantile(scores, 1 - cfg.decline_rate))
    if cfg.thresholds_by == "budget":
        review = float(np.quantile(scores, 1 - cfg.review_rate))
    else:
        order = np.argsort(-scores, kind="stable")
        value = np.cumsum((y * amount)[order]) - cfg.review_cost * np.arange(1, len(y) + 1)
        best = int(np.argmax(value))
        review = float(scores[order][best]) if value[best] > 0 else decline
    review = min(review, decline)
    return {"review": review, "decline": decline}


def train(
    store: HistoryStore, registry: Registry, cfg: TrainConfig,
    progress: Callable[[str, int | None], None] | None = None,
    catalogue: Catalogue | None = None,
) -> TrainResult:
    """``catalogue``: the installation's, when ``cfg.features`` is "catalogue" (default:
    the default catalogue)."""
    def step(what: str, advance: int | None = None) -> None:
        if progress is not None:
            progress(what, advance)

    use = (catalogue or DEFAULT) if cfg.features == "catalogue" else None
    names = list(FEATURE_NAMES) if use is None else list(use.names)
    step("loading history")
    payments, labels = load(store, cfg.cutoff, details=use is not None)
    if payments.empty:
        raise TrainingError(f"the history at {store.root} holds no payments; import or record "
                            "some")
    cutoff = cfg.cutoff if cfg.cutoff is not None else newest_event(payments, labels)
    maturity = (cfg.maturity_days if cfg.maturity_days is not None
                else observed_maturity_days(payments, labels))
    split = time_split(payments, cutoff, maturity, cfg)

    step("features")
    features = compute_features(payments, labels, progress=lambda n: step("features", n)) \
        if use is None else use.compute(payments, labels)
    X = features[names].to_numpy()
    spells = fraud_spells(labels)
    y_then = fraud_known_since(payments["payment_id"], spells,
                               split.train_known_at).notna().to_numpy(dtype=int)
    known_now = fraud_known_since(payments["payment_id"], spells, cutoff)
    y_now = known_now.notna().to_numpy(dtype=int)

    window = dict(split.window)
    window.update(train_payments=int(split.train.sum()), train_fraud=int(y_then[split.train].sum()),
                  test_payments=int(split.test.sum()), test_fraud=int(y_now[split.test].sum()),
                  refit_payments=int(split.refit.sum()),
                  refit_fraud=int(y_now[split.refit].sum()))
    if len(np.unique(y_then[split.train])) < 2:
        raise TrainingError("the training window needs both fraud and legitimate payments "
                            f"(it has {window['train_fraud']} fraud of "
                            f"{window['train_payments']})")
    if window["test_fraud"] == 0:
        raise TrainingError(f"no fraud is known in the matured test window "
                            f"{window['test_start'][:10]} .. {window['test_end'][:10]}: "
                            "models cannot be compared; wait for labels or widen --test-days")

    test_pay = payments[split.test].assign(
        day=lambda d: pd.to_datetime(d["ts"], unit="s", utc=True).dt.floor("D"))
    test = EvalSet(test_pay, y_now[split.test], known_now[split.test].to_numpy(dtype=float))
    ecfg = cfg.eval_config()
    replicates = card_replicates(test, ecfg)
    rows, weight = sample_rows(split.train, y_then, cfg)
    X_train, y_train, X_test = X[rows], y_then[rows], X[split.test]
    window["train_rows_fitted"] = len(rows)

    # The search's settings are the gradient boosting's from here on (fit and refit).
    cfg, searched = search(X, payments, spells, y_then, split, maturity, cfg, step)
    families = FAMILIES if cfg.baselines else (GRADIENT_BOOSTING,)
    scores: dict[str, np.ndarray] = {}
    for name in families:
        step(f"fit {name.replace('_', ' ')}")
        scores[name] = _scores(fit_weighted(family_model(name, len(y_train), cfg), X_train,
                                            y_train, weight), X_test)
    previous = registry.current()
    warnings: list[str] = []
    if previous is not None:
        prev_scores = _score_previous(previous, features, split.test,
                                      split.window["test_start"], warnings)
        if prev_scores is not None:
            scores[CURRENT] = prev_scores

    step("evaluate")
    values = {name: metric_replicates(test, s, replicates, PRIMARY_METRIC)
              for name, s in scores.items()}
    blend_of: tuple[str, ...] = ()
    if len(families) > 1:
        # The blend of the two best, on the same out-of-sample scores: no fit of its own.
        blend_of = tuple(sorted(families, key=lambda f: -values[f][0])[:2])
        scores[BLEND] = np.mean([scores[f] for f in blend_of], axis=0)
        values[BLEND] = metric_replicates(test, scores[BLEND], replicates, PRIMARY_METRIC)
    candidates = (*families, BLEND) if blend_of else families
    comparison = {name: evaluate(test, s, ecfg, replicates) for name, s in scores.items()}
    family, selection = choose_family({f: values[f] for f in candidates})
    if family == BLEND:
        selection = f"{' and '.join(f.replace('_', ' ') for f in blend_of)}: {selection}"
    gains = {name: gain_between(values[family], v) for name, v in values.items()
             if name != family}
    for name in candidates:
        if name != family and gains[name]["high"] < 0:
            warnings.append(f"the candidate significantly loses to {name.replace('_', ' ')} "
                            f"on {PRIMARY_METRIC} ({gains[name]['gain']:+.4f})")

    if previous is None:
        promoted, why = True, "no current model"
    elif cfg.force:
        promoted, why = True, "forced"
    elif CURRENT not in scores:
        promoted, why = True, (f"the current model {previous.version} needs features this "
                               "version no longer computes: it cannot be served")
    else:
        g = gains[CURRENT]
        promoted = bool(g["significant"])
        why = (f"{PRIMARY_METRIC} gain over {previous.version}: {g['gain']:+.4f} "
               f"(95% CI {g['low']:+.4f} .. {g['high']:+.4f}): "
               + ("significant" if promoted else "not significant, not promoted"))

    step("refit on all matured payments")
    rows, weight = sample_rows(split.refit, y_now, cfg)
    window["refit_rows_fitted"] = len(rows)
    final = fit_weighted(
        MeanBlend([family_model(f, len(rows), cfg) for f in blend_of]) if family == BLEND
        else family_model(family, len(rows), cfg), X[rows], y_now[rows], weight)
    calibrate, calibration_report = fit_calibration(scores[family], test_pay["ts"], test.y,
                                                    cfg.calibrate)
    # Thresholds on the calibrated scale, the one the scorer serves.
    thresholds = choose_thresholds(calibrate(scores[family]), test.y,
                                   test_pay["amount"].to_numpy(dtype=float), cfg)
    # What live traffic is compared with for drift: the latest matured weeks, as the
    # promoted model saw them.
    recent = np.flatnonzero(split.test)
    recent = recent[np.random.default_rng(cfg.seed).permutation(len(recent))[:REFERENCE_ROWS]]
    reference = references({f: X[recent, i] for i, f in enumerate(names)},
                           calibrate(_scores(final, X[recent])))

    mv = registry.register(final, {
        "features": names,
        "thresholds": thresholds,
        "metrics": comparison[family],
        "family": family,
        "selection": selection,
        "blend_of": list(blend_of) if family == BLEND else None,
        "calibration": calibrate.to_dict(),
        "calibration_report": calibration_report,
        "search": searched,
        "comparison": comparison,
        "gains": gains,
        "warnings": warnings,
        "training": window,
        "config": asdict(cfg),
        "estimator": type(final).__name__,
        "sklearn_version": sklearn.__version__,
        "primary_metric": PRIMARY_METRIC,
        "decision": why,
        "compared_with": previous.version if previous is not None else None,
        "reference": reference,
    })
    if calibration_report.get("before"):
        # Beside the model (outside its sha256): the curve people look at, not read.
        calibration_report["plot"] = str(plot_calibration(calibration_report,
                                                          mv.path / "calibration.png"))
    shadowed = promoted and cfg.shadow and previous is not None and not cfg.force
    if shadowed:
        registry.set_challenger(mv.version, since=cutoff)
        promoted, why = False, f"{why}; challenger in shadow"
    elif promoted:
        registry.promote(mv.version, by="train", why=why)
    return TrainResult(mv.version, promoted, why, comparison[family], comparison, gains,
                       family, selection, calibration_report, searched, warnings, window,
                       previous.version if previous else None, shadowed)


def fit_calibration(scores: np.ndarray, ts: pd.Series, y: np.ndarray,
                    enabled: bool = True) -> tuple[calibration.Calibration, dict[str, Any]]:
    """The promoted model's calibration, fitted on the chosen family's out-of-sample scores
    over the matured test window, and how well it holds: fitted on the window's first half
    alone, then checked on its second (reliability curves and expected calibration error,
    before and after). The refitted artifact's scores are mapped by it: the refit sees more
    payments than the evaluated model, so the fit is an estimate; the curves say how good.
    """
    if not enabled:
        return calibration.Calibration(), {"kind": "identity", "why": "--no-calibrate"}
    full = calibration.fit(scores, y)
    report: dict[str, Any] = {"kind": full.kind, "fraud": int(y.sum()),
                              "payments": len(y)}
    later = (ts >= ts.median()).to_numpy()
    try:
        half = calibration.fit(scores[~later], y[~later])
    except ValueError:
        report["check"] = "no fraud in the window's first half: not checked"
        return full, report
    report.update(check="fitted on the test window's first half, checked on its second",
                  before=calibration.curve(scores[later], y[later]),
                  after=calibration.curve(half(scores[later]), y[later]))
    return full, report


def plot_calibration(report: dict[str, Any], path: Path) -> Path:
    """The reliability diagram of ``fit_calibration``'s check: per band of scores, the
    fraud rate observed against the mean score, before and after calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    low = 1e-4
    for key, label, marker in (("before", "model's score", "o"),
                               ("after", "calibrated", "s")):
        curve = report[key]
        ax.plot(np.maximum(curve["mean_score"], low), np.maximum(curve["fraud_rate"], low),
                marker=marker, label=f"{label} (ECE {curve['ece']:.4f})")
    ax.plot([low, 1], [low, 1], color="grey", linestyle="--", label="a calibrated score")
    ax.set(xscale="log", yscale="log", xlabel="mean score of the band",
           ylabel="fraud observed in the band",
           title="calibration, on the test window's half it was not fitted on")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _score_previous(previous: ModelVersion, features: pd.DataFrame, rows: np.ndarray,
                    test_start: str, warnings: list[str]) -> np.ndarray | None:
    missing = set(previous.feature_names) - set(features.columns)
    if missing:
        warnings.append(f"the current model {previous.version} uses features no longer "
                        f"computed ({', '.join(sorted(missing))}); not compared")
        return None
    trained_to = previous.metadata.get("training", {}).get("refit_end")
    if trained_to is not None and trained_to > test_start:
        warnings.append(f"the current model {previous.version} was fitted on payments up to "
                        f"{trained_to[:10]}: where that overlaps the test window, it has seen "
                        "those labels, and the comparison favours it")
    return _scores(previous.load_estimator(), features[previous.feature_names].to_numpy()[rows])
