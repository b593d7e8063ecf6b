"""Boosters fitted on a Dask cluster (``lightgbm.dask``) for snapshot sets too large for one
process, with early stopping kept.

``lightgbm.dask`` has no early stopping (LightGBM issues #3712 and #6197): each worker only
sees its own share of a validation set, and the boosting rounds are fixed up front. Training
relies on early stopping on the calibration slice, so a cluster fit here is three steps:

1. **A pilot**: an early-stopped single-process fit on a sample of ``cluster_pilot_rows``
   training rows (the same calibration slice for stopping). Its number of trees sizes the
   budget: twice that plus the patience (more rows usually carry more trees).
2. **The fit on the cluster**: every training row, data-parallel over the workers, for the
   budget's number of rounds.
3. **Early stopping after the fact**: the calibration slice's loss at every number of trees,
   computed from the whole slice on the client with the metric LightGBM would have used, and
   the same rule as ``lightgbm.early_stopping`` (the first strict minimum, stopping after
   ``early_stopping_rounds`` rounds without one). The model keeps the trees up to there.

A fit that keeps the budget's last tree may have wanted more: its training note
(:meth:`ClusterFit.summary`) says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from tiering.bundle import booster_from_text

if TYPE_CHECKING:
    from distributed import Client

    from tiering.config import TrainingConfig

_LABEL = "__tiering_label__"
P_CLIP = 1e-15  # LightGBM's binary_logloss clips probabilities at this distance from 0 and 1


@dataclass(frozen=True)
class ClusterFit:
    booster: lgb.Booster
    pilot_trees: int
    budget: int
    budget_was_short: bool
    """The budget came from the pilot, below ``num_boost_round``."""
    best_iteration: int
    losses: np.ndarray
    """The calibration slice's loss after 1, 2, ..., budget trees."""

    def summary(self, objective: str, rows: int) -> str:
        """One training note: what was fitted where, and whether the budget may have been
        short."""
        note = (
            f"{objective} booster fitted on the Dask cluster (lightgbm.dask) on {rows:,} rows: "
            f"{self.best_iteration} trees kept of {len(self.losses)} fitted (a pilot on a "
            f"sample stopped at {self.pilot_trees})"
        )
        if self.best_iteration < len(self.losses) or not self.budget_was_short:
            return note
        return (
            f"{note}; it kept every tree of its budget, so more trees might still help: raise "
            "[training] cluster_pilot_rows for a pilot on more rows"
        )


# ------------------------------------------------------------------ losses per tree count
def _binary(y: np.ndarray, raw: np.ndarray, params: dict[str, Any]) -> float:
    p = np.clip(1.0 / (1.0 + np.exp(-raw)), P_CLIP, 1 - P_CLIP)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _l2(y: np.ndarray, raw: np.ndarray, params: dict[str, Any]) -> float:
    return float(np.mean((y - raw) ** 2))


def _gamma(y: np.ndarray, raw: np.ndarray, params: dict[str, Any]) -> float:
    # LightGBM's gamma metric with psi = 1: y / mu + log(mu), mu = exp(raw).
    return float(np.mean(y * np.exp(-raw) + raw))


def _tweedie(y: np.ndarray, raw: np.ndarray, params: dict[str, Any]) -> float:
    rho = float(params.get("tweedie_variance_power", 1.5))
    log_mu = np.maximum(raw, np.log(1e-10))
    a = y * np.exp((1 - rho) * log_mu) / (1 - rho)
    b = np.exp((2 - rho) * log_mu) / (2 - rho)
    return float(np.mean(b - a))


LOSSES: dict[str, Callable[[np.ndarray, np.ndarray, dict[str, Any]], float]] = {
    "binary": _binary,
    "regression": _l2,
    "gamma": _gamma,
    "tweedie": _tweedie,
}
"""The calibration loss of each objective training uses, as LightGBM's metric of the same name
computes it (``binary_logloss``, ``l2``, ``gamma``, ``tweedie``)."""


def _leaf_values(booster: lgb.Booster) -> list[np.ndarray]:
    """Each tree's leaf outputs, indexed by leaf index (what ``pred_leaf`` returns)."""
    values = []
    for tree in booster.dump_model()["tree_info"]:
        out = np.zeros(int(tree["num_leaves"]))
        stack = [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "leaf_value" in node:
                out[int(node.get("leaf_index", 0))] = float(node["leaf_value"])
            else:
                stack.extend((node["left_child"], node["right_child"]))
        values.append(out)
    return values


def losses_by_trees(
    booster: lgb.Booster, params: dict[str, Any], x: pd.DataFrame, y: np.ndarray
) -> np.ndarray:
    """The loss on ``(x, y)`` of the model's first 1, 2, ..., all trees: one ``pred_leaf`` pass,
    the raw score accumulated tree by tree."""
    objective = str(params["objective"])
    if objective not in LOSSES:
        raise ValueError(f"no calibration loss for objective {objective!r}")
    loss = LOSSES[objective]
    leaves = np.asarray(booster.predict(x, pred_leaf=True), dtype=np.int64).reshape(len(x), -1)
    y = np.asarray(y, dtype=float)
    raw = np.zeros(len(x))
    out = np.empty(leaves.shape[1])
    for tree, values in enumerate(_leaf_values(booster)):
        raw += values[leaves[:, tree]]
        out[tree] = loss(y, raw, params)
    return out


def early_stopping_iteration(losses: np.ndarray, patience: int) -> int:
    """The number of trees ``lightgbm.early_stopping(patience)`` keeps given the validation
    loss after each tree: the first strict minimum, looking no further than ``patience``
    rounds past it."""
    best, best_loss = 0, np.inf
    for i, value in enumerate(losses):
        if value < best_loss:
            best, best_loss = i, value
        elif i - best >= patience:
            break
    return best + 1


# ------------------------------------------------------------------------------ the fit
def _dask_booster(
    client: Client, params: dict[str, Any], x: pd.DataFrame, y: np.ndarray, rounds: int
) -> lgb.Booster:
    import dask.dataframe as dd
    from lightgbm.dask import DaskLGBMRegressor

    workers = max(1, len(client.scheduler_info()["workers"]))
    frame = dd.from_pandas(
        x.reset_index(drop=True).assign(**{_LABEL: np.asarray(y, dtype=float)}),
        npartitions=workers,
    )
    settings = dict(params)
    # The scikit-learn wrapper's names for the settings it also takes by name.
    named = {
        "objective": settings.pop("objective"),
        "learning_rate": settings.pop("learning_rate"),
        "num_leaves": settings.pop("num_leaves"),
        "min_child_samples": settings.pop("min_data_in_leaf"),
        "colsample_bytree": settings.pop("feature_fraction"),
        "reg_lambda": settings.pop("lambda_l2"),
        "random_state": settings.pop("seed"),
    }
    settings.pop("metric", None)  # no validation set on the workers
    settings.pop("num_threads", None)  # each worker uses its own threads
    # The wrapper's regressor fits any objective: the booster is all that is kept.
    model = DaskLGBMRegressor(client=client, n_estimators=rounds, **named, **settings)
    with warnings.catch_warnings():
        # The wrapper's own n_jobs default; the workers' threads are what counts.
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
        model.fit(frame.drop(columns=[_LABEL]), frame[_LABEL])
    return model.booster_


def fit_on_cluster(
    client: Client,
    params: dict[str, Any],
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    x_valid: pd.DataFrame,
    y_valid: np.ndarray,
    config: TrainingConfig,
) -> ClusterFit:
    """The booster ``lgb.train`` with early stopping would fit, fitted on ``client``'s
    workers (see the module docstring)."""
    from training.fit import train_in_process

    n = len(x_train)
    pilot_rows = min(n, config.cluster_pilot_rows)
    rows = np.sort(np.random.default_rng(config.seed).choice(n, pilot_rows, replace=False))
    pilot = train_in_process(
        params, x_train.iloc[rows], np.asarray(y_train)[rows], x_valid, y_valid, config
    ).current_iteration()
    budget = min(config.num_boost_round, 2 * pilot + config.early_stopping_rounds)
    full = _dask_booster(client, params, x_train, y_train, budget)
    losses = losses_by_trees(full, params, x_valid, y_valid)
    best = early_stopping_iteration(losses, config.early_stopping_rounds)
    booster = booster_from_text(full.model_to_string(num_iteration=best))
    return ClusterFit(booster, pilot, budget, budget < config.num_boost_round, best, losses)
