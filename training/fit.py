"""Fitting: the LightGBM win model and its calibrator, the LightGBM deal-value model and its
P10-P90 range, and the baselines they are shown beside.

Who sees which rows (the time split decides):
- train: the boosters' trees.
- calibration slice: early stopping of both boosters, the choice between each booster and its
  smaller candidate (``prefer_smaller``), the choice and fit of the calibrator
  (chosen by cross-validation *within* the slice, so no candidate is judged on rows it was
  fitted on), the choice of the value objective, the log_l2 smearing factor and the conformal
  offsets of the value range.
- test: nothing here; ``training.evaluate`` reports on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from tiering.bundle import (
    P_CLIP,
    AmountModel,
    Calibrator,
    ProbabilityModel,
    ValueInterval,
    booster_from_text,
    segment_key,
)
from tiering.bundle import encode_features as encode
from tiering.config import TrainingConfig

CALIBRATION_FOLDS = 5
BOOTSTRAP_CELLS = 2_000_000  # resample indices drawn at once: bounds the bootstrap's memory
INTERVAL_LEVEL = 0.8  # P10-P90
TWEEDIE_VARIANCE_POWER = 1.5
CONVERSION_SIZE_NAME, REVENUE_SIZE_NAME = "conversion", "revenue"


class TrainingDataError(ValueError):
    """The slices cannot support a model (one class only, no won deals with an amount, ...)."""


# --------------------------------------------------------------------------- encoding
def freeze_categories(train: pd.DataFrame, categorical: list[str]) -> dict[str, list[str]]:
    """Category levels seen in training, sorted, as strings: the model's vocabulary for good."""
    levels: dict[str, list[str]] = {}
    for name in categorical:
        values = train[name].dropna().astype("string")
        levels[name] = sorted(str(v) for v in values.unique())
    return levels


# --------------------------------------------------------------------------- LightGBM
def lgb_params(config: TrainingConfig, objective: str, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "objective": objective,
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_data_in_leaf,
        "feature_fraction": config.feature_fraction,
        "lambda_l2": config.lambda_l2,
        "num_threads": config.n_jobs,
        # Same data, config and seed -> same trees: deterministic needs a fixed histogram layout.
        "deterministic": True,
        "force_col_wise": True,
        "seed": config.seed,
        "verbosity": -1,
    }
    params.update(extra)
    return params


@dataclass
class _Cluster:
    client: Any
    notes: list[str]


_CLUSTER: ContextVar[_Cluster | None] = ContextVar("training_cluster", default=None)


@contextlib.contextmanager
def boosters_on(cluster: str | None) -> Iterator[list[str]]:
    """Within the block, boosters with more than ``cluster_pilot_rows`` training rows are fitted
    on ``cluster`` (``tiering.cluster.ClusterSpec``; None: all in this process). Yields the
    training notes the cluster fits add, one per booster."""
    if cluster is None:
        yield []
        return
    from tiering.cluster import connect

    with connect(cluster) as client:
        state = _Cluster(client, [])
        token = _CLUSTER.set(state)
        try:
            yield state.notes
        finally:
            _CLUSTER.reset(token)


def _train_booster(
    params: dict[str, Any],
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    x_valid: pd.DataFrame,
    y_valid: np.ndarray,
    config: TrainingConfig,
) -> lgb.Booster:
    cluster = _CLUSTER.get()
    if cluster is not None and len(x_train) > config.cluster_pilot_rows:
        from training.distributed import fit_on_cluster

        fit = fit_on_cluster(cluster.client, params, x_train, y_train, x_valid, y_valid, config)
        cluster.notes.append(fit.summary(str(params["objective"]), len(x_train)))
        return fit.booster
    return train_in_process(params, x_train, y_train, x_valid, y_valid, config)


def train_in_process(
    params: dict[str, Any],
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    x_valid: pd.DataFrame,
    y_valid: np.ndarray,
    config: TrainingConfig,
) -> lgb.Booster:
    """``lgb.train`` with early stopping on the validation rows, cut at the best iteration."""
    train_set = lgb.Dataset(x_train, label=y_train, categorical_feature="auto", free_raw_data=False)
    valid_set = lgb.Dataset(x_valid, label=y_valid, reference=train_set, free_raw_data=False)
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=config.num_boost_round,
        valid_sets=[valid_set],
        valid_names=["calibration"],
        callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False)],
    )
    # Keep only the trees up to the best iteration, so the in-memory model, the saved text
    # and every later predict/pred_contrib agree without passing num_iteration around.
    best = booster.best_iteration or booster.current_iteration()
    return booster_from_text(booster.model_to_string(num_iteration=best))


def fit_win_model(
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    x_cal: pd.DataFrame,
    y_cal: np.ndarray,
    config: TrainingConfig,
) -> lgb.Booster:
    for name, y in (("train", y_train), ("calibration", y_cal)):
        if len(np.unique(y)) < 2:
            raise TrainingDataError(
                f"the {name} slice has only {'won' if y.mean() else 'lost'} deals"
            )
    params = lgb_params(config, "binary", metric="binary_logloss")
    return _train_booster(params, x_train, y_train, x_cal, y_cal, config)


def raw_probability(booster: lgb.Booster, x: pd.DataFrame) -> np.ndarray:
    margin = np.asarray(booster.predict(x, raw_score=True), dtype=float)
    return 1.0 / (1.0 + np.exp(-margin))


# --------------------------------------------------------------------------- model size
@dataclass(frozen=True)
class SizeChoice:
    keep_smaller: bool
    mean_difference: float
    """Mean loss of the smaller candidate minus the larger's: > 0 when the larger scores better."""
    larger_better_share: float
    """Share of the bootstrap resamples in which the larger candidate has the lower mean loss."""


def choose_size(
    loss_larger: np.ndarray,
    loss_smaller: np.ndarray,
    *,
    confidence: float,
    resamples: int,
    seed: int,
) -> SizeChoice:
    """Keep the smaller of two models unless the larger is better beyond the noise.

    The losses are per row of the same slice, so the comparison is paired: each bootstrap
    resample draws rows with replacement and compares the two models' mean loss on those same
    rows. The larger model is kept only if it has the lower mean loss in at least
    ``confidence`` of the resamples; a tie (no resample where it is strictly better) keeps the
    smaller, whose explanations cost less.
    """
    diff = np.asarray(loss_smaller, dtype=float) - np.asarray(loss_larger, dtype=float)
    n = len(diff)
    if n == 0:
        return SizeChoice(True, 0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, BOOTSTRAP_CELLS // n)
    for start in range(0, resamples, step):
        stop = min(start + step, resamples)
        means[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    share = float(np.mean(means > 0))
    return SizeChoice(share < confidence, float(diff.mean()), share)


def smaller_config(config: TrainingConfig) -> TrainingConfig:
    """The smaller candidate's settings: fewer leaves per tree and a higher learning rate, so
    early stopping also ends with fewer trees; TreeSHAP's cost grows with trees x leaves."""
    return config.model_copy(
        update={
            "num_leaves": config.smaller_num_leaves or max(2, config.num_leaves // 2),
            "learning_rate": config.smaller_learning_rate or 2 * config.learning_rate,
        }
    )


def total_leaves(booster: lgb.Booster) -> int:
    """Leaves over all trees (trees may stop short of num_leaves)."""
    return int(sum(tree["num_leaves"] for tree in booster.dump_model()["tree_info"]))


def select_size(
    model: str,
    metric: str,
    standard: tuple[lgb.Booster, np.ndarray],
    smaller: tuple[lgb.Booster, np.ndarray],
    config: TrainingConfig,
) -> tuple[bool, pd.DataFrame]:
    """Whether the smaller candidate is kept, and both candidates' sizes and scores.

    ``standard`` and ``smaller`` are each a booster and its per-row loss on the calibration
    slice. Which one is the larger is decided by the leaves they ended with, not by their
    settings: early stopping may leave the "smaller" settings with more trees.
    """
    small_config = smaller_config(config)
    rows = []
    for name, cfg, (booster, loss) in (
        ("standard", config, standard),
        ("smaller", small_config, smaller),
    ):
        trees = booster.current_iteration()
        rows.append(
            {
                "model": model,
                "candidate": name,
                "num_leaves": cfg.num_leaves,
                "learning_rate": cfg.learning_rate,
                "trees": trees,
                "trees_x_leaves": trees * cfg.num_leaves,
                "total_leaves": total_leaves(booster),
                "metric": metric,
                "score": float(np.mean(loss)),
            }
        )
    smaller_is_smaller = total_leaves(smaller[0]) <= total_leaves(standard[0])
    large, small = (standard, smaller) if smaller_is_smaller else (smaller, standard)
    choice = choose_size(
        large[1],
        small[1],
        confidence=config.selection_confidence,
        resamples=config.selection_resamples,
        seed=config.seed,
    )
    keep_smaller_candidate = choice.keep_smaller == smaller_is_smaller
    table = pd.DataFrame(rows)
    table["larger_better_share"] = choice.larger_better_share
    table["chosen"] = [not keep_smaller_candidate, keep_smaller_candidate]
    return keep_smaller_candidate, table


def _log_loss_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, P_CLIP, 1 - P_CLIP)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


# --------------------------------------------------------------------------- calibration
def fit_calibrator(method: str, p_raw: np.ndarray, y: np.ndarray) -> Calibrator:
    p = np.clip(np.asarray(p_raw, dtype=float), P_CLIP, 1 - P_CLIP)
    y = np.asarray(y, dtype=float)
    if method == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        return Calibrator(
            "isotonic", x=tuple(iso.X_thresholds_.tolist()), y=tuple(iso.y_thresholds_.tolist())
        )
    if method == "sigmoid":
        logit = np.log(p / (1 - p)).reshape(-1, 1)
        # Platt scaling without a penalty: two parameters, nothing to regularise.
        lr = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000).fit(logit, y)
        return Calibrator("sigmoid", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))
    if method == "identity":
        return Calibrator("identity")
    raise ValueError(f"unknown calibration method {method!r}")


def choose_calibrator(
    p_raw: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    methods: tuple[str, ...] = ("isotonic", "sigmoid"),
) -> tuple[Calibrator, pd.DataFrame]:
    """Pick the calibration method by stratified k-fold cross-validation inside the
    calibration slice (each candidate judged on folds it was not fitted on), then refit the
    winner on the whole slice.

    Criterion: Brier score, log loss breaking ties. Both are proper scores; Brier is bounded,
    so one isotonic step at exactly 0 meeting a won deal in a held-out fold cannot decide the
    choice alone, which with log loss it would (-log(1e-6) = 13.8 for a single deal).
    Returns the calibrator and a table of the cross-validated scores per method.
    """
    y = np.asarray(y, dtype=int)
    n_minority = int(min(y.sum(), len(y) - y.sum()))
    folds = min(CALIBRATION_FOLDS, n_minority)
    if folds < 2:
        # One class only (or a single deal of one): nothing can be learned about calibration.
        scores = pd.DataFrame(
            {
                "method": ["identity"],
                "cv_log_loss": [np.nan],
                "cv_brier": [np.nan],
                "chosen": [True],
            }
        )
        return Calibrator("identity"), scores
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    rows = []
    for method in methods:
        out = np.empty(len(y))
        for fit_idx, held_idx in cv.split(p_raw, y):
            out[held_idx] = fit_calibrator(method, p_raw[fit_idx], y[fit_idx]).transform(
                p_raw[held_idx]
            )
        rows.append(
            {
                "method": method,
                "cv_log_loss": log_loss(y, out, labels=[0, 1]),
                "cv_brier": brier_score_loss(y, out),
            }
        )
    scores = (
        pd.DataFrame(rows)
        .sort_values(["cv_brier", "cv_log_loss"], kind="stable")
        .reset_index(drop=True)
    )
    best = str(scores.loc[0, "method"])
    scores["chosen"] = scores["method"] == best
    return fit_calibrator(best, p_raw, y), scores


# --------------------------------------------------------------------------- deal value
@dataclass
class ValueFit:
    objective: str
    booster: lgb.Booster
    smearing: float = 1.0

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        raw = np.asarray(self.booster.predict(x, raw_score=True), dtype=float)
        return np.exp(raw) * (self.smearing if self.objective == "log_l2" else 1.0)


def fit_value_model(
    objective: str,
    x_train: pd.DataFrame,
    amount_train: np.ndarray,
    x_cal: pd.DataFrame,
    amount_cal: np.ndarray,
    config: TrainingConfig,
) -> ValueFit:
    if objective == "log_l2":
        params = lgb_params(config, "regression", metric="l2")
        booster = _train_booster(
            params, x_train, np.log(amount_train), x_cal, np.log(amount_cal), config
        )
        mu = np.asarray(booster.predict(x_cal), dtype=float)
        # Duan's smearing on held-out deals: E[amount] = exp(mu) * mean(exp(residual)), which
        # assumes nothing about the residuals' distribution (exp(sigma^2/2) would assume normal).
        smearing = float(np.mean(np.exp(np.log(amount_cal) - mu)))
        return ValueFit("log_l2", booster, smearing)
    if objective == "gamma":
        params = lgb_params(config, "gamma", metric="gamma")
    elif objective == "tweedie":
        params = lgb_params(
            config, "tweedie", metric="tweedie", tweedie_variance_power=TWEEDIE_VARIANCE_POWER
        )
    else:
        raise ValueError(f"unknown value objective {objective!r}")
    booster = _train_booster(params, x_train, amount_train, x_cal, amount_cal, config)
    return ValueFit(objective, booster)


def value_errors(amount: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    amount = np.asarray(amount, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    return {
        "mae": float(np.mean(np.abs(amount - predicted))),
        "mean_abs_log_error": float(np.mean(_abs_log_error_rows(amount, predicted))),
    }


def choose_value_model(
    objectives: list[str],
    x_train: pd.DataFrame,
    amount_train: np.ndarray,
    x_cal: pd.DataFrame,
    amount_cal: np.ndarray,
    config: TrainingConfig,
) -> tuple[ValueFit, pd.DataFrame]:
    """Fit each objective and keep the one with the lowest mean absolute log error on the
    calibration slice's won deals.

    Why the log error: deal sizes span orders of magnitude and tiering ranks accounts by
    expected value, so a 2x miss on a $20k deal matters as much as on a $2M one; MAE in
    currency would let a handful of the largest deals pick the model. MAE is reported too.
    """
    if len(amount_train) < 2 or len(amount_cal) < 1:
        raise TrainingDataError(
            f"won deals with an amount: {len(amount_train)} in train, {len(amount_cal)} in the "
            "calibration slice; the deal-value model needs some in both"
        )
    fits: dict[str, ValueFit] = {}
    rows = []
    for objective in dict.fromkeys(objectives):
        fit = fit_value_model(objective, x_train, amount_train, x_cal, amount_cal, config)
        fits[objective] = fit
        rows.append(
            {
                "objective": objective,
                **value_errors(amount_cal, fit.predict(x_cal)),
                "trees": fit.booster.current_iteration(),
            }
        )
    table = (
        pd.DataFrame(rows).sort_values("mean_abs_log_error", kind="stable").reset_index(drop=True)
    )
    best = str(table.loc[0, "objective"])
    table["chosen"] = table["objective"] == best
    return fits[best], table


def _abs_log_error_rows(amount: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    return np.abs(np.log(np.asarray(amount, dtype=float)) - np.log(np.asarray(predicted, float)))


def prefer_smaller_value_model(
    fit: ValueFit,
    x_train: pd.DataFrame,
    amount_train: np.ndarray,
    x_cal: pd.DataFrame,
    amount_cal: np.ndarray,
    config: TrainingConfig,
) -> tuple[ValueFit, pd.DataFrame]:
    """The chosen objective refitted as the smaller candidate; the smaller of the two is kept
    unless the other's mean |log error| on the calibration slice is lower beyond the noise.
    Only the chosen objective gets a smaller twin: the objectives' comparison is about the
    shape of the errors, the size's about their cost."""
    small = fit_value_model(
        fit.objective, x_train, amount_train, x_cal, amount_cal, smaller_config(config)
    )
    keep_small, sizes = select_size(
        REVENUE_SIZE_NAME,
        "mean_abs_log_error",
        (fit.booster, _abs_log_error_rows(amount_cal, fit.predict(x_cal))),
        (small.booster, _abs_log_error_rows(amount_cal, small.predict(x_cal))),
        config,
    )
    return (small if keep_small else fit), sizes


def conformal_interval(
    amount_cal: np.ndarray, predicted_cal: np.ndarray, level: float = INTERVAL_LEVEL
) -> ValueInterval:
    """Split-conformal offsets on log(actual / predicted): the lower and upper (1-level)/2 tails,
    with the (n+1) finite-sample correction so coverage holds for a new deal."""
    residual = np.sort(
        np.log(np.asarray(amount_cal, dtype=float)) - np.log(np.asarray(predicted_cal, dtype=float))
    )
    n = len(residual)
    tail = (1.0 - level) / 2.0
    lo_rank = int(np.floor((n + 1) * tail))  # 1-based rank of the lower offset
    hi_rank = int(np.ceil((n + 1) * (1.0 - tail)))
    low = residual[max(lo_rank, 1) - 1]
    high = residual[min(hi_rank, n) - 1]
    return ValueInterval(low=float(low), high=float(high), level=level, n_calibration=n)


# --------------------------------------------------------------------------- baselines
@dataclass
class SegmentWinRate:
    """Historical win rate by segment, shrunk towards the overall rate with ``smoothing``
    pseudo-deals so a segment with 3 deals does not claim 100 %."""

    smoothing: float = 20.0
    rates_: dict[str, float] = field(default_factory=dict)
    overall_: float = float("nan")

    def fit(self, frame: pd.DataFrame, won: np.ndarray) -> SegmentWinRate:
        won = np.asarray(won, dtype=float)
        self.overall_ = float(won.mean())
        grouped = pd.DataFrame({"segment": segment_key(frame).to_numpy(), "won": won}).groupby(
            "segment"
        )["won"]
        wins, deals = grouped.sum(), grouped.count()
        rates = (wins + self.smoothing * self.overall_) / (deals + self.smoothing)
        self.rates_ = {str(k): float(v) for k, v in rates.items()}
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return segment_key(frame).map(self.rates_).fillna(self.overall_).to_numpy(dtype=float)


@dataclass
class SegmentMedianValue:
    """Median won deal size by segment (overall median where a segment has < min_deals)."""

    min_deals: int = 5
    default: float = 1.0
    """What every segment is worth when there is no won deal with an amount at all."""
    medians_: dict[str, float] = field(default_factory=dict)
    overall_: float = float("nan")

    def fit(self, frame: pd.DataFrame, amount: np.ndarray) -> SegmentMedianValue:
        amount = np.asarray(amount, dtype=float)
        self.overall_ = float(np.median(amount)) if len(amount) else self.default
        grouped = pd.DataFrame(
            {"segment": segment_key(frame).to_numpy(), "amount": amount}
        ).groupby("segment")["amount"]
        stats = grouped.agg(["median", "count"])
        stats = stats[stats["count"] >= self.min_deals]
        self.medians_ = {str(k): float(v) for k, v in stats["median"].items()}
        return self

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return segment_key(frame).map(self.medians_).fillna(self.overall_).to_numpy(dtype=float)


def _signed_log1p(x: np.ndarray) -> np.ndarray:
    # Counts and revenues are heavy-tailed; on the log scale a linear model can use them.
    x = np.asarray(x, dtype=float)
    return np.sign(x) * np.log1p(np.abs(x))


@dataclass
class LogisticBaseline:
    """One-hot categoricals + imputed, log-compressed, scaled numerics -> logistic regression."""

    numeric: list[str]
    categorical: list[str]
    C: float = 1.0
    pipeline_: Pipeline | None = None

    def _frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame(index=frame.index)
        for name in self.numeric:
            out[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
        for name in self.categorical:
            col = frame[name].astype(object)
            out[name] = col.where(col.notna(), "missing").astype(str).to_numpy(dtype=object)
        return out

    def fit(self, frame: pd.DataFrame, won: np.ndarray) -> LogisticBaseline:
        numeric = Pipeline(
            [
                ("log", FunctionTransformer(_signed_log1p, feature_names_out="one-to-one")),
                (
                    "impute",
                    SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                ),
                ("scale", StandardScaler()),
            ]
        )
        categorical = OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=10)
        self.pipeline_ = Pipeline(
            [
                (
                    "columns",
                    ColumnTransformer(
                        [("num", numeric, self.numeric), ("cat", categorical, self.categorical)]
                    ),
                ),
                ("model", LogisticRegression(C=self.C, max_iter=2000)),
            ]
        )
        self.pipeline_.fit(self._frame(frame), np.asarray(won, dtype=int))
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        if self.pipeline_ is None:
            raise RuntimeError("LogisticBaseline is not fitted")
        return np.asarray(self.pipeline_.predict_proba(self._frame(frame))[:, 1], dtype=float)


# --------------------------------------------------------------------------- all together
@dataclass
class FittedModels:
    feature_names: list[str]
    categories: dict[str, list[str]]
    conversion: ProbabilityModel
    calibration_scores: pd.DataFrame
    revenue: AmountModel
    revenue_comparison: pd.DataFrame
    segment_conversion: SegmentWinRate
    segment_revenue: SegmentMedianValue
    deal_win: ProbabilityModel | None = None
    deal_calibration_scores: pd.DataFrame | None = None
    deal_logistic: LogisticBaseline | None = None
    deal_segment: SegmentWinRate | None = None
    notes: list[str] = field(default_factory=list)
    """What fell back or was left out, in words for the report."""
    size_selection: pd.DataFrame | None = None
    """The conversion and revenue boosters beside their smaller candidates (``select_size``);
    None when ``prefer_smaller`` is off or no booster was fitted."""


def _concat(frames: list[pd.DataFrame | None]) -> pd.DataFrame | None:
    present = [f for f in frames if f is not None]
    return pd.concat(present, ignore_index=True) if present else None


def fit_probability(
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    x_cal: pd.DataFrame,
    y_cal: np.ndarray,
    config: TrainingConfig,
    *,
    size_model: str | None = None,
) -> tuple[ProbabilityModel, pd.DataFrame, pd.DataFrame | None]:
    """A binary booster (trees on train, early stopping on calibration) and its calibrator
    (chosen by cross-validation inside the calibration slice). A slice with one outcome only
    (every account bought within the horizon, say) leaves nothing to learn: the model is the
    observed rate, and the caller's notes say so.

    With ``size_model`` (the model's name) and ``config.prefer_smaller``, a smaller candidate
    is fitted too and kept unless the first has a lower log loss on the calibration slice
    beyond the noise (``select_size``); the third value is that comparison."""
    if len(np.unique(y_train)) < 2 or len(np.unique(y_cal)) < 2:
        rate = float(np.concatenate([y_train, y_cal]).mean())
        table = pd.DataFrame(
            {
                "method": ["constant rate"],
                "cv_log_loss": [np.nan],
                "cv_brier": [np.nan],
                "chosen": [True],
            }
        )
        return ProbabilityModel(None, Calibrator("identity"), rate), table, None
    booster = fit_win_model(x_train, y_train, x_cal, y_cal, config)
    p_cal = raw_probability(booster, x_cal)
    sizes = None
    if size_model is not None and config.prefer_smaller:
        small = fit_win_model(x_train, y_train, x_cal, y_cal, smaller_config(config))
        p_small = raw_probability(small, x_cal)
        keep_small, sizes = select_size(
            size_model,
            "log_loss",
            (booster, _log_loss_rows(y_cal, p_cal)),
            (small, _log_loss_rows(y_cal, p_small)),
            config,
        )
        if keep_small:
            booster, p_cal = small, p_small
    calibrator, scores = choose_calibrator(p_cal, y_cal, seed=config.seed)
    return ProbabilityModel(booster, calibrator), scores, sizes


def fit_revenue(
    x_train: pd.DataFrame,
    revenue_train: np.ndarray,
    x_cal: pd.DataFrame,
    revenue_cal: np.ndarray,
    frame_train: pd.DataFrame,
    frame_cal: pd.DataFrame,
    config: TrainingConfig,
    default_value: float = 1.0,
) -> tuple[AmountModel, pd.DataFrame, SegmentMedianValue, list[str], pd.DataFrame | None]:
    """Revenue if the account converts (rows: converted snapshots with revenue > 0).

    Each configured objective is fitted, and the best by mean |log error| on the calibration
    slice is compared with the naive segment median on the same rows. A booster that does not
    beat the median is not kept: the bundle carries the medians instead, and the notes say so.

    Too few rows with revenue (fewer than 2 in train or none in calibration, e.g. an export
    without amounts): no revenue model is fitted; revenue if converted is ``default_value``
    (``data.default_deal_value``) for every account, and the notes say so.
    """
    segment = SegmentMedianValue(default=default_value).fit(frame_train, revenue_train)
    if len(revenue_train) < 2 or len(revenue_cal) < 1:
        interval = ValueInterval(low=0.0, high=0.0, level=INTERVAL_LEVEL, n_calibration=0)
        model = AmountModel(None, "segment_median", interval, overall=default_value)
        table = pd.DataFrame(
            [
                {
                    "objective": "none (default_deal_value)",
                    "mae": np.nan,
                    "mean_abs_log_error": np.nan,
                    "trees": 0,
                    "chosen": True,
                }
            ]
        )
        note = (
            f"no revenue model: converted accounts with revenue are {len(revenue_train)} in "
            f"train and {len(revenue_cal)} in the calibration slice (at least 2 and 1 needed); "
            f"expected revenue = P(convert) x {default_value:,g} (data.default_deal_value)"
        )
        return model, table, segment, [note], None
    fit, table = choose_value_model(
        list(config.value_objectives), x_train, revenue_train, x_cal, revenue_cal, config
    )
    sizes = None
    if config.prefer_smaller:
        fit, sizes = prefer_smaller_value_model(
            fit, x_train, revenue_train, x_cal, revenue_cal, config
        )
        # The objective's row shows the booster that is kept.
        kept = table["objective"] == fit.objective
        for key, value in value_errors(revenue_cal, fit.predict(x_cal)).items():
            table.loc[kept, key] = value
        table.loc[kept, "trees"] = fit.booster.current_iteration()
    median_cal = segment.predict(frame_cal)
    median_errors = value_errors(revenue_cal, median_cal)
    table = pd.concat(
        [
            table.drop(columns="chosen"),
            pd.DataFrame([{"objective": "segment_median", **median_errors, "trees": 0}]),
        ],
        ignore_index=True,
    )
    best_booster = float(
        table.loc[table["objective"] == fit.objective, "mean_abs_log_error"].iloc[0]
    )
    notes: list[str] = []
    if best_booster < median_errors["mean_abs_log_error"]:
        chosen = fit.objective
        interval = conformal_interval(revenue_cal, fit.predict(x_cal))
        model = AmountModel(fit.booster, fit.objective, interval, smearing=fit.smearing)  # type: ignore[arg-type]  # a configured objective
    else:
        chosen = "segment_median"
        notes.append(
            f"revenue model: no booster beat the segment median on the calibration slice "
            f"(mean |log error| {best_booster:.3f} vs {median_errors['mean_abs_log_error']:.3f}); "
            "revenue if converted is the segment median"
        )
        model = AmountModel(
            None,
            "segment_median",
            conformal_interval(revenue_cal, median_cal),
            medians=dict(segment.medians_),
            overall=segment.overall_,
        )
    table["chosen"] = table["objective"] == chosen
    return model, table, segment, notes, sizes


def fit_models(
    train: pd.DataFrame,
    calibration: pd.DataFrame,
    feature_names: list[str],
    categorical: list[str],
    config: TrainingConfig,
    *,
    deals_train: pd.DataFrame | None = None,
    deals_calibration: pd.DataFrame | None = None,
    default_deal_value: float = 1.0,
) -> FittedModels:
    """Fit the account models on a snapshot split's train and calibration slices (features plus
    ``converted`` and ``revenue``), and the deal-win model on deals (features plus ``won``)
    when given."""
    categories = freeze_categories(train, [c for c in categorical if c in feature_names])
    x_train = encode(train, feature_names, categories)
    x_cal = encode(calibration, feature_names, categories)
    y_train = train["converted"].to_numpy(dtype=int)
    y_cal = calibration["converted"].to_numpy(dtype=int)
    conversion, calibration_scores, conversion_sizes = fit_probability(
        x_train, y_train, x_cal, y_cal, config, size_model=CONVERSION_SIZE_NAME
    )
    constant_notes = []
    if conversion.booster is None:
        constant_notes.append(
            f"conversion model: the training or calibration snapshots hold one outcome only "
            f"({conversion.rate:.0%} converted within the horizon overall), so P(convert) is that "
            "rate for every account and the revenue model alone orders the tiers (a shorter "
            "horizon may help)"
        )

    pos_train = (y_train == 1) & (train["revenue"].to_numpy(dtype=float) > 0)
    pos_cal = (y_cal == 1) & (calibration["revenue"].to_numpy(dtype=float) > 0)
    revenue, comparison, segment_revenue, notes, revenue_sizes = fit_revenue(
        x_train[pos_train],
        train["revenue"].to_numpy(dtype=float)[pos_train],
        x_cal[pos_cal],
        calibration["revenue"].to_numpy(dtype=float)[pos_cal],
        train[pos_train],
        calibration[pos_cal],
        config,
        default_deal_value,
    )
    fitted = FittedModels(
        feature_names=feature_names,
        categories=categories,
        conversion=conversion,
        calibration_scores=calibration_scores,
        revenue=revenue,
        revenue_comparison=comparison,
        segment_conversion=SegmentWinRate().fit(train, y_train),
        segment_revenue=segment_revenue,
        notes=constant_notes + notes,
        size_selection=_concat([conversion_sizes, revenue_sizes]),
    )
    if deals_train is not None and deals_calibration is not None:
        try:
            xd_train = encode(deals_train, feature_names, categories)
            xd_cal = encode(deals_calibration, feature_names, categories)
            yd_train = deals_train["won"].to_numpy(dtype=int)
            yd_cal = deals_calibration["won"].to_numpy(dtype=int)
            # Not explained per account, so its size costs little: no smaller candidate.
            fitted.deal_win, fitted.deal_calibration_scores, _ = fit_probability(
                xd_train, yd_train, xd_cal, yd_cal, config
            )
        except TrainingDataError as exc:
            fitted.notes.append(f"deal-win model left out: {exc}")
        else:
            numeric = [c for c in feature_names if c not in categories]
            fitted.deal_logistic = LogisticBaseline(numeric, list(categories)).fit(
                deals_train, yd_train
            )
            fitted.deal_segment = SegmentWinRate().fit(deals_train, yd_train)
    return fitted
