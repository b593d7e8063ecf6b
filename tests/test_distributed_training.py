"""Boosters fitted on Dask (``training.distributed``): the after-the-fact early stopping
reproduces LightGBM's own, and a booster fitted on a two-worker LocalCluster scores like the
one fitted in process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from tiering.config import TrainingConfig
from training.distributed import early_stopping_iteration, fit_on_cluster, losses_by_trees
from training.fit import _train_booster, boosters_on, lgb_params

PATIENCE = 10


def _rows(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Numeric and categorical features, missing values included, and a signal in both."""
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.normal(size=(n, 5)), columns=[f"f{i}" for i in range(5)])
    x.loc[rng.random(n) < 0.1, "f1"] = np.nan
    x["segment"] = pd.Categorical(
        rng.choice(["smb", "mid", "ent", "gov"], n), categories=["ent", "gov", "mid", "smb"]
    )
    margin = x["f0"] - 0.5 * x["f2"].abs() + (x["segment"] == "ent") * 0.8
    return x, np.asarray(margin.fillna(0), dtype=float)


def _labels(objective: str, margin: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if objective == "binary":
        return (rng.random(len(margin)) < 1 / (1 + np.exp(-margin))).astype(float)
    if objective == "regression":
        return margin + rng.normal(scale=1.0, size=len(margin))
    # gamma and tweedie: positive amounts (tweedie with some zeros)
    amount = np.exp(0.5 * margin) * rng.gamma(2.0, 0.5, size=len(margin))
    return (
        np.where(rng.random(len(margin)) < 0.2, 0.0, amount) if objective == "tweedie" else amount
    )


def _params(objective: str, config: TrainingConfig) -> dict[str, Any]:
    metric = {"binary": "binary_logloss", "regression": "l2"}.get(objective, objective)
    extra = {"tweedie_variance_power": 1.5} if objective == "tweedie" else {}
    return lgb_params(config, objective, metric=metric, **extra)


@pytest.mark.parametrize("objective", ["binary", "regression", "gamma", "tweedie"])
def test_losses_by_trees_and_the_stopping_rule_reproduce_lightgbm_early_stopping(
    objective: str,
) -> None:
    config = TrainingConfig(learning_rate=0.2, num_leaves=15, min_data_in_leaf=20, n_jobs=1)
    params = _params(objective, config)
    x, margin = _rows(4000, seed=1)
    y = _labels(objective, margin, seed=2)
    train, valid = slice(0, 3000), slice(3000, None)
    recorded: dict[str, Any] = {}
    stopped = lgb.train(
        params,
        lgb.Dataset(x.iloc[train], label=y[train]),
        num_boost_round=400,
        valid_sets=[lgb.Dataset(x.iloc[valid], label=y[valid])],
        valid_names=["calibration"],
        callbacks=[
            lgb.early_stopping(PATIENCE, verbose=False),
            lgb.record_evaluation(recorded),
        ],
    )
    # The same fit run to the end: identical trees (deterministic), then stopped after the fact.
    full = lgb.train(params, lgb.Dataset(x.iloc[train], label=y[train]), num_boost_round=400)
    losses = losses_by_trees(full, params, x.iloc[valid], y[valid])
    lightgbm_losses = next(iter(recorded["calibration"].values()))
    np.testing.assert_allclose(losses[: len(lightgbm_losses)], lightgbm_losses, rtol=1e-6)
    assert stopped.best_iteration < 400, "the fit must stop early for the test to mean anything"
    assert early_stopping_iteration(losses, PATIENCE) == stopped.best_iteration


def test_the_stopping_rule_takes_the_first_minimum_within_patience() -> None:
    # Minimum at tree 3; a lower loss at tree 9 comes after more than 4 rounds without one.
    losses = np.array([5.0, 4.0, 3.0, 3.0, 3.5, 3.2, 3.1, 3.3, 2.0, 1.0])
    assert early_stopping_iteration(losses, patience=4) == 3
    assert early_stopping_iteration(losses, patience=8) == 10
    assert early_stopping_iteration(np.array([1.0]), patience=4) == 1


def _log_loss(y: np.ndarray, booster: lgb.Booster, x: pd.DataFrame) -> float:
    p = np.clip(np.asarray(booster.predict(x), dtype=float), 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@pytest.mark.slow
def test_a_booster_fitted_on_a_local_cluster_scores_like_one_fitted_in_process() -> None:
    config = TrainingConfig(
        learning_rate=0.1,
        num_leaves=15,
        min_data_in_leaf=50,
        n_jobs=1,
        early_stopping_rounds=PATIENCE,
        cluster_pilot_rows=5000,
    )
    params = _params("binary", config)
    x, margin = _rows(24_000, seed=3)
    y = _labels("binary", margin, seed=4)
    x_train, y_train, x_cal, y_cal = x.iloc[:20_000], y[:20_000], x.iloc[20_000:], y[20_000:]
    local = _train_booster(params, x_train, y_train, x_cal, y_cal, config)

    with boosters_on("local:2") as notes:
        from training.fit import _CLUSTER

        state = _CLUSTER.get()
        assert state is not None
        fit = fit_on_cluster(state.client, params, x_train, y_train, x_cal, y_cal, config)
        # Through the trainer every fit uses: above the pilot's rows on the cluster, below it
        # in process (no note).
        on_cluster = _train_booster(params, x_train, y_train, x_cal, y_cal, config)
        small = _train_booster(params, x_train.iloc[:4000], y_train[:4000], x_cal, y_cal, config)
    assert len(notes) == 1 and "Dask cluster" in notes[0] and "20,000 rows" in notes[0]

    assert fit.best_iteration == early_stopping_iteration(fit.losses, PATIENCE)
    assert fit.booster.current_iteration() == fit.best_iteration < len(fit.losses) <= fit.budget
    # Data-parallel histograms over two workers are neither bit-identical to one process's nor
    # from one cluster fit to the next (which rows land on which worker), so the figure is the
    # calibration loss, not the trees.
    for booster in (fit.booster, on_cluster):
        assert _log_loss(y_cal, booster, x_cal) == pytest.approx(
            _log_loss(y_cal, local, x_cal), rel=0.01
        )
    assert small.current_iteration() > 0


def test_a_cluster_that_is_not_one_is_refused_by_name() -> None:
    from tiering.cluster import ClusterError

    with pytest.raises(ClusterError, match="local:N"), boosters_on("locl:2"):
        pass


def test_train_refuses_a_cluster_that_is_not_one_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from tiering_cli.main import app

    monkeypatch.chdir(tmp_path)  # nothing may be written, least of all into the checkout
    config = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--cluster", "locl:2"])
    assert result.exit_code == 2, result.output
    assert "'locl:2' is not a cluster" in result.output and "local:N" in result.output
    assert list(tmp_path.iterdir()) == []
