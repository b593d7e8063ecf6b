"""The customer models: retention risk and expansion, trained on customer snapshots.

The same snapshots as the account models (every account at every month start, features from
``features.build.build_features``, split on as-of dates with a gap of H), kept where the account
is a paying customer as of that date (recurring revenue > 0), labelled from the subscriptions
table with what happened in ``[as_of, as_of + H)``:

- ``at_risk``: a subscription line churned or was downgraded (ended with that status);
- ``lost_revenue``: the recurring revenue those ends took away (a downgraded line's revenue
  minus the revenue of the term that continued it);
- ``expansion_revenue``: the recurring revenue of product lines started in the window.

``churn`` is a LightGBM binary booster stopped early and calibrated on the calibration slice
(isotonic or Platt by cross-validated Brier score, as the conversion model); ``expansion`` a
Tweedie booster of the expansion revenue (most customers expand by nothing). Both read the
customer columns (``cs_``) and the account features.

On the test slice the report sets them beside naive rankings: for churn, the usage trend of the
last 90 days and tenure (AUC), and for the revenue at risk captured by customer Tier 1 also
recurring revenue alone; for expansion, the past expansion count and recurring revenue; and, on
the demo, the generator's truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.customers import Events, expansion_rows, is_customer_column, missing_customer_figures
from features.tables import Tables
from tiering.bundle import (
    CHURN,
    EXPANSION,
    AmountModel,
    Bundle,
    Model,
    ProbabilityModel,
    ValueInterval,
    encode_features,
)
from tiering.config import Config
from training.evaluate import capture_at, classification_metrics
from training.fit import (
    _train_booster,
    choose_calibrator,
    freeze_categories,
    lgb_params,
    raw_probability,
)
from training.snapshots import SnapshotSplit

USAGE_TREND = "cs_usage_change_active_users"
CUSTOMER_LEAVES = 7
CUSTOMER_LEARNING_RATE = 0.02
_EPOCH = np.datetime64("1900-01-01", "D")


# Rows of the training summary (training.pipeline): figure, model, baseline, its name, truth.
CUSTOMER_SUMMARY_ROWS: list[tuple[str, str, str | None, str, str | None]] = [
    (
        "Customer: ROC-AUC of P(churn or downgrade in H)",
        "customers_churn_auc",
        "customers_churn_baseline_usage_trend_auc",
        "usage trend, last 90 days",
        "customers_truth_churn_auc",
    ),
    (
        "Customer: ROC-AUC of P(churn or downgrade in H)",
        "customers_churn_auc",
        "customers_churn_baseline_tenure_auc",
        "tenure",
        "customers_truth_churn_auc",
    ),
    (
        "Customer: ECE of P(churn or downgrade)",
        "customers_churn_ece",
        None,
        "",
        "customers_truth_churn_ece",
    ),
    (
        "Customer: revenue at risk captured by Tier 1",
        "customers_at_risk_tier1_model",
        "customers_at_risk_tier1_best_baseline",
        "best naive ranking, same size",
        "customers_at_risk_tier1_truth",
    ),
    (
        "Customer: expansion captured by Tier 1",
        "customers_expansion_tier1_model",
        "customers_expansion_tier1_best_baseline",
        "best naive ranking, same size",
        "customers_expansion_tier1_truth",
    ),
]


@dataclass
class CustomerFit:
    """The two models, what they read, and their test figures."""

    models: dict[str, Model]
    settings: dict[str, Any]
    metrics: dict[str, float]
    capture: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    test: pd.DataFrame | None = None


def _days(values: Any) -> np.ndarray:
    d = np.asarray(pd.to_datetime(values), dtype="datetime64[ns]").astype("datetime64[D]")
    return np.where(np.isnat(d), np.int64(1) << 23, (d - _EPOCH).astype(np.int64))


def customer_labels(
    subscriptions: pd.DataFrame, requests: pd.DataFrame, horizon_days: int
) -> pd.DataFrame:
    """``at_risk`` (0/1), ``churned`` (0/1), ``lost_revenue`` and ``expansion_revenue`` in
    ``[as_of, as_of + H)`` of each request (same index)."""
    ids = pd.Index(pd.unique(requests["account_id"].astype(str)))
    acc = ids.get_indexer(pd.Index(subscriptions["account_id"].astype(str))).astype(np.int64)
    codes = ids.get_indexer(pd.Index(requests["account_id"].astype(str))).astype(np.int64)
    start = _days(subscriptions["start"])
    end = _days(subscriptions["end"]) if "end" in subscriptions else np.full(len(acc), 1 << 23)
    revenue = (
        pd.to_numeric(subscriptions["recurring_revenue"], errors="coerce")
        .fillna(0.0)
        .to_numpy(dtype=float)
    )
    status = (
        subscriptions["status"].astype(str).to_numpy()
        if "status" in subscriptions
        else np.full(len(acc), "", dtype=object)
    )
    churned = status == "churned"
    downgraded = status == "downgraded"
    # a downgraded term continued at a lower revenue: what it lost is the difference
    product = (
        subscriptions["product"].astype(str).to_numpy()
        if "product" in subscriptions
        else np.full(len(acc), "")
    )
    nxt = pd.Series(revenue, index=pd.MultiIndex.from_arrays([acc, product, start]))
    nxt = nxt.groupby(level=[0, 1, 2]).sum()
    follow = nxt.reindex(pd.MultiIndex.from_arrays([acc, product, end])).fillna(0.0).to_numpy()
    lost = np.where(churned, revenue, np.where(downgraded, np.maximum(revenue - follow, 0.0), 0.0))
    expand = expansion_rows(subscriptions)
    t = _days(requests["as_of"])
    stop = t + horizon_days
    ends = churned | downgraded
    risk_events = Events(acc[ends], end[ends], np.ones(int(ends.sum())))
    churn_events = Events(acc[churned], end[churned], np.ones(int(churned.sum())))
    lost_events = Events(acc[ends], end[ends], lost[ends])
    expansion_events = Events(acc[expand], start[expand], revenue[expand])
    return pd.DataFrame(
        {
            "at_risk": (risk_events.count(codes, t, stop) > 0).astype(np.int64),
            "churned": (churn_events.count(codes, t, stop) > 0).astype(np.int64),
            "lost_revenue": lost_events.total(codes, t, stop),
            "expansion_revenue": expansion_events.total(codes, t, stop),
        },
        index=requests.index,
    )


def customer_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Snapshots of paying customers (recurring revenue > 0 as of the date)."""
    arr = pd.to_numeric(frame["cs_recurring_revenue"], errors="coerce").fillna(0.0)
    return frame[(arr > 0).to_numpy()]


def customer_feature_names(frame: pd.DataFrame, account_names: list[str]) -> list[str]:
    """The customer models' inputs: the customer columns (but the customer flags, constant on
    customer rows) and the account features."""
    own = [
        c
        for c in frame.columns
        if is_customer_column(c) and c not in ("cs_customer", "cs_former_customer")
    ]
    return own + [c for c in account_names if c not in own]


def _capacity(config: Config, n: int) -> int:
    return min(config.customers.csms * config.customers.tier1_per_csm, n)


def _pct(values: np.ndarray) -> np.ndarray:
    return pd.Series(values).rank(pct=True, method="average").to_numpy()


def _by_date(
    test: pd.DataFrame, scores: dict[str, np.ndarray], target: str, config: Config
) -> dict[str, float]:
    """Mean over the test dates of the share of ``target`` held by each ranking's top Tier 1
    seats (the CSM capacity, ties shared)."""
    out: dict[str, list[float]] = {name: [] for name in scores}
    when = pd.to_datetime(test["as_of"]).to_numpy()
    for day in np.unique(when):
        rows = when == day
        value = test[target].to_numpy(dtype=float)[rows]
        if value.sum() <= 0:
            continue
        n_top = _capacity(config, int(rows.sum()))
        for name, score in scores.items():
            out[name].append(capture_at(score[rows], value, n_top))
    return {name: float(np.mean(v)) if v else float("nan") for name, v in out.items()}


def fit_customer_models(
    config: Config,
    tables: Tables,
    split: SnapshotSplit,
    account_names: list[str],
    categorical: list[str],
) -> CustomerFit | None:
    """Fit and evaluate the churn and expansion models; None (with nothing fitted) when the
    export has no subscriptions or too few customers to learn from."""
    if tables.subscriptions is None or not config.customers.enabled:
        return None
    horizon = config.training.horizon_days
    slices = {}
    for name, frame in (
        ("train", split.train),
        ("calibration", split.calibration),
        ("test", split.test),
    ):
        rows = customer_rows(frame)
        slices[name] = rows.join(customer_labels(tables.subscriptions, rows, horizon))
    train, cal, test = slices["train"], slices["calibration"], slices["test"]
    for name, frame in slices.items():
        if len(frame) < 20 or frame["at_risk"].nunique() < 2:
            return CustomerFit(
                {},
                {},
                {},
                pd.DataFrame(),
                notes=[
                    f"customer models not trained: the {name} slice has {len(frame)} customer "
                    "snapshots and needs at least 20 with both renewals and churn or downgrades"
                ],
            )
    names = customer_feature_names(train, account_names)
    cats = [c for c in categorical if c in names]
    categories = freeze_categories(train, cats)
    x_train, x_cal, x_test = (encode_features(f, names, categories) for f in (train, cal, test))
    # A few thousand customer snapshots with a noisy outcome: small, slow trees stop later
    # and rank better on the calibration slice than the account models' settings.
    training = config.training.model_copy(
        update={
            "min_data_in_leaf": min(config.training.min_data_in_leaf, max(10, len(train) // 200)),
            "num_leaves": min(config.training.num_leaves, CUSTOMER_LEAVES),
            "learning_rate": min(config.training.learning_rate, CUSTOMER_LEARNING_RATE),
        }
    )
    y_train, y_cal = train["at_risk"].to_numpy(int), cal["at_risk"].to_numpy(int)
    booster = _train_booster(
        lgb_params(training, "binary", metric="binary_logloss"),
        x_train,
        y_train,
        x_cal,
        y_cal,
        training,
    )
    calibrator, calibration_scores = choose_calibrator(
        raw_probability(booster, x_cal), y_cal, seed=config.training.seed
    )
    churn = ProbabilityModel(booster, calibrator, rate=float(y_train.mean()))
    exp_booster = _train_booster(
        lgb_params(training, "tweedie", tweedie_variance_power=1.5, metric="tweedie"),
        x_train,
        train["expansion_revenue"].to_numpy(float),
        x_cal,
        cal["expansion_revenue"].to_numpy(float),
        training,
    )
    expansion = AmountModel(
        exp_booster,
        "tweedie",
        ValueInterval(0.0, 0.0, method="none: expected value only", n_calibration=0),
    )
    offered = (
        int(tables.subscriptions["product"].nunique()) if "product" in tables.subscriptions else 0
    )
    settings = {
        "feature_names": names,
        "categories": categories,
        "config": config.customers.model_dump(mode="json"),
        "products_offered": config.customers.products_offered or offered,
        "usage_trend": USAGE_TREND if USAGE_TREND in names else None,
        "horizon_days": horizon,
    }
    models: dict[str, Model] = {CHURN: churn, EXPANSION: expansion}

    # ---------------------------------------------------------------- the test window
    p = churn.predict(np.asarray(booster.predict(x_test, raw_score=True), dtype=float))
    expected = expansion.from_raw(np.asarray(exp_booster.predict(x_test, raw_score=True)))
    y = test["at_risk"].to_numpy(int)
    arr = test["cs_recurring_revenue"].to_numpy(float)
    metrics: dict[str, float] = {
        f"customers_churn_{k}": v
        for k, v in classification_metrics(y, p).items()
        if k in ("auc", "pr_auc", "brier", "ece", "log_loss")
    }
    metrics["customers_test_snapshots"] = float(len(test))
    metrics["customers_churn_rate"] = float(y.mean())
    metrics["customers_churn_calibration_isotonic"] = float(calibrator.method == "isotonic")
    del calibration_scores
    trend = (
        pd.to_numeric(test[USAGE_TREND], errors="coerce").fillna(0.0).to_numpy()
        if USAGE_TREND in test
        else np.zeros(len(test))
    )
    tenure = pd.to_numeric(test["cs_tenure_days"], errors="coerce").fillna(0.0).to_numpy()
    from sklearn.metrics import roc_auc_score

    both = len(np.unique(y)) == 2
    metrics["customers_churn_baseline_usage_trend_auc"] = (
        float(roc_auc_score(y, -trend)) if both else float("nan")
    )
    metrics["customers_churn_baseline_tenure_auc"] = (
        float(roc_auc_score(y, -tenure)) if both else float("nan")
    )
    risk_scores = {
        "model": arr * p,
        "usage trend (90 days)": arr * _pct(-trend),
        "tenure": arr * _pct(-tenure),
        "recurring revenue": arr,
    }
    past = pd.to_numeric(test["cs_expansions"], errors="coerce").fillna(0.0).to_numpy()
    expansion_scores = {
        "model": expected,
        "past expansion count": past,
        "recurring revenue": arr,
    }
    truth = _customer_truth(config, test, horizon)
    if truth is not None:
        true_p, true_expansion = truth
        metrics.update(
            {
                f"customers_truth_churn_{k}": v
                for k, v in classification_metrics(y, true_p).items()
                if k in ("auc", "brier", "ece")
            }
        )
        metrics["customers_churn_auc_vs_truth"] = (
            metrics["customers_churn_auc"] / metrics["customers_truth_churn_auc"]
        )
        risk_scores["truth"] = arr * true_p
        expansion_scores["truth"] = true_expansion
    at_risk = _by_date(test, risk_scores, "lost_revenue", config)
    grows = _by_date(test, expansion_scores, "expansion_revenue", config)
    capture = pd.DataFrame(
        {
            "revenue at risk captured by Tier 1": pd.Series(at_risk),
            "expansion captured by Tier 1": pd.Series(grows),
        }
    )
    for name, value in at_risk.items():
        metrics[f"customers_at_risk_tier1_{_slug(name)}"] = value
    for name, value in grows.items():
        metrics[f"customers_expansion_tier1_{_slug(name)}"] = value
    actual = test["expansion_revenue"].to_numpy(float)
    metrics["customers_expansion_mae"] = float(np.mean(np.abs(actual - expected)))
    metrics["customers_expansion_mean_predicted"] = float(np.mean(expected))
    metrics["customers_expansion_mean_actual"] = float(np.mean(actual))
    notes = []
    for label, scores, key in (
        ("revenue at risk", at_risk, "customers_at_risk_tier1"),
        ("expansion", grows, "customers_expansion_tier1"),
    ):
        baselines = {k: v for k, v in scores.items() if k not in ("model", "truth")}
        best = max(baselines, key=lambda k: baselines[k])
        metrics[f"{key}_best_baseline"] = baselines[best]
        word = "beats" if scores["model"] > baselines[best] else "does not beat"
        notes.append(
            f"customers: {label} captured by customer Tier 1: model {scores['model']:.1%}, best "
            f"naive ranking {best} {baselines[best]:.1%} (the model {word} it)"
        )
    missing = missing_customer_figures(tables)
    if missing:
        notes.append(f"customers: not computed for want of data: {', '.join(missing)}")
    return CustomerFit(
        models,
        settings,
        metrics,
        capture,
        notes,
        test.assign(p_churn=p, expected_expansion=expected),
    )


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.lower()).strip("_").replace("__", "_")


def _customer_truth(
    config: Config, test: pd.DataFrame, horizon: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The demo's true P(churn or downgrade) and expected expansion of the test rows; None
    without a truth folder, without customer truth, or for another horizon than the truth's."""
    if config.data.truth_dir is None:
        return None
    from demo.truth import read_truth

    truth = read_truth(Path(config.data.truth_dir)).customers
    if truth is None or len(truth) == 0 or int(truth["horizon_days"].iloc[0]) != horizon:
        return None
    merged = test[["account_id", "as_of"]].merge(
        truth.assign(as_of=pd.to_datetime(truth["as_of"])),
        on=["account_id", "as_of"],
        how="left",
    )
    if merged["true_p_churn_or_downgrade"].isna().any():
        return None
    return (
        merged["true_p_churn_or_downgrade"].to_numpy(float),
        merged["true_expected_expansion"].to_numpy(float),
    )


def attach(bundle: Bundle, fit: CustomerFit | None) -> None:
    """Put the customer models into the bundle (nothing without them)."""
    if fit is None or not fit.models:
        return
    bundle.models.update(fit.models)
    bundle.customer = dict(fit.settings)
