"""Risk: training numbers that cannot be trusted: a split that lets the future into training,
metrics that change between identical runs, probabilities that are not calibrated, a value
range that does not cover what it claims, a model that does not beat naive account rankings on
data with signal, and a pipeline that invents signal where the data has none (the Maven CRM
export)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tiering.config import MlflowConfig, TrainingConfig, load_config
from training.evaluate import expected_calibration_error
from training.fit import choose_calibrator, choose_size, conformal_interval

from support import FAST_TRAINING, training_config, write_small_demo

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_demo(tmp_path_factory.mktemp("demo"))


# --------------------------------------------------------------------------- calibration, range
def test_calibration_repairs_overconfident_scores() -> None:
    rng = np.random.default_rng(0)
    n = 40_000  # ECE itself is noisy: with few deals per bin it cannot go near 0
    p_true = rng.beta(2, 5, n)
    y = (rng.random(n) < p_true).astype(int)
    p_raw = np.clip(p_true * 1.8, 0, 0.999)  # overconfident
    calibrator, scores = choose_calibrator(p_raw[: n // 2], y[: n // 2], seed=1)
    assert scores["chosen"].sum() == 1 and set(scores["method"]) == {"isotonic", "sigmoid"}
    held_out_raw, held_out_y = p_raw[n // 2 :], y[n // 2 :]
    assert expected_calibration_error(held_out_y, held_out_raw) > 0.1
    assert expected_calibration_error(held_out_y, calibrator.transform(held_out_raw)) < 0.015


def test_conformal_range_covers_about_80_percent_of_new_deals() -> None:
    rng = np.random.default_rng(1)
    predicted = np.exp(rng.normal(10, 1, 6000))
    actual = predicted * np.exp(rng.normal(0, 0.6, 6000))
    interval = conformal_interval(actual[:1000], predicted[:1000])
    low, high = interval.bounds(predicted[1000:])
    coverage = np.mean((actual[1000:] >= low) & (actual[1000:] <= high))
    assert 0.77 < coverage < 0.83


def test_ece_uses_equal_mass_bins() -> None:
    p = np.r_[np.full(900, 0.1), np.full(100, 0.9)]
    y = np.r_[np.zeros(810), np.ones(90), np.ones(90), np.zeros(10)]
    assert expected_calibration_error(y, p) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.clip(p + 0.05, 0, 1)) == pytest.approx(0.05)


# --------------------------------------------------------------------------- model size
def _choose(loss_larger: np.ndarray, loss_smaller: np.ndarray) -> bool:
    return choose_size(
        loss_larger, loss_smaller, confidence=0.95, resamples=500, seed=0
    ).keep_smaller


def test_the_smaller_model_is_kept_when_the_larger_is_better_only_within_noise() -> None:
    rng = np.random.default_rng(2)
    loss_larger = rng.exponential(0.5, 2000)
    # On average a hair better than the smaller, but row by row the two differ far more.
    loss_smaller = loss_larger + rng.normal(0.002, 0.3, 2000)
    assert loss_smaller.mean() > loss_larger.mean()
    choice = choose_size(loss_larger, loss_smaller, confidence=0.95, resamples=500, seed=0)
    assert choice.keep_smaller and 0.0 < choice.larger_better_share < 0.95


def test_the_larger_model_is_kept_when_clearly_better() -> None:
    rng = np.random.default_rng(3)
    loss_larger = rng.exponential(0.5, 2000)
    loss_smaller = loss_larger + rng.normal(0.05, 0.3, 2000)  # ~7 standard errors worse
    assert not _choose(loss_larger, loss_smaller)
    # the same gap the other way round: the smaller is better, so it is kept
    assert _choose(loss_smaller, loss_larger)


def test_an_exact_tie_keeps_the_smaller_model() -> None:
    loss = np.random.default_rng(4).exponential(0.5, 500)
    choice = choose_size(loss, loss.copy(), confidence=0.95, resamples=200, seed=0)
    assert choice.keep_smaller and choice.larger_better_share == 0.0
    assert choice.mean_difference == 0.0


# --------------------------------------------------------------------------- the pipeline
def test_same_data_config_and_seed_give_the_same_metrics(demo_dir: Path) -> None:
    from features.contract import load_tables
    from training.pipeline import fit_and_evaluate

    config = training_config(demo_dir)
    tables = load_tables(config.data).tables
    first = fit_and_evaluate(config, tables=tables)
    second = fit_and_evaluate(config, tables=tables)
    assert first.metrics == second.metrics
    for name, model in first.bundle.models.items():
        assert model.booster is not None, name
        assert (
            model.booster.model_to_string() == second.bundle.models[name].booster.model_to_string()
        )  # type: ignore[union-attr]
    # and it learned something real on the demo, beside the naive rankings and the truth
    m = first.metrics
    assert m["test_auc"] > m["segment_test_auc"]
    assert m["tier1_lift"] > 1.5
    model_top = "capture_top_20__model_priority_orders_the_tiers"
    assert m[model_top] > m["capture_top_20__naive_segment_conversion_rate"]
    assert m[model_top] > m["capture_top_20__naive_past_deal_count"]
    assert 0.8 < m["capture_top_20_ratio_to_truth"] <= 1.1
    h = pd.Timedelta(days=first.split.horizon_days)
    assert first.split.train_dates[-1] + h <= first.split.calibration_dates[0]
    assert first.split.calibration_dates[-1] + h <= first.split.test_dates[0]


def test_training_refuses_to_start_on_a_leaking_feature(demo_dir: Path) -> None:
    from features.contract import load_tables
    from features.leakage import LeakageError
    from training.pipeline import fit_and_evaluate

    config = training_config(demo_dir)
    tables = load_tables(config.data).tables
    # "customer_since" is only filled once an account has won: a classic post-outcome field.
    won_accounts = set(
        tables.opportunities.loc[tables.opportunities["outcome"] == "won", "account_id"]
    )
    accounts = tables.accounts.assign(
        customer_since=np.where(tables.accounts["account_id"].isin(won_accounts), 2024.0, np.nan)
    )
    leaky = type(tables)(accounts, tables.opportunities, tables.activities)
    # The export's documentation says so: declared post-outcome, so offering it is refused.
    config = config.model_copy(
        update={
            "features": config.features.model_copy(update={"extra": ["customer_since"]}),
            "data": config.data.model_copy(update={"post_outcome": ["customer_since"]}),
        }
    )
    with pytest.raises(LeakageError, match="customer_since"):
        fit_and_evaluate(config, tables=leaky)


@pytest.mark.slow
def test_maven_export_shows_the_baselines_and_invents_no_lift(tmp_path: Path) -> None:
    """Maven's outcomes do not depend on anything recorded about the account, and its 85
    accounts all buy every two months: the model must not claim more than the naive rankings."""
    path = REPO / "configs" / "maven_crm.toml"
    from training.pipeline import train

    config = load_config(path)
    config = config.model_copy(
        update={
            "training": TrainingConfig.model_validate(
                {
                    **config.training.model_dump(),
                    **FAST_TRAINING.model_dump(exclude={"horizon_days", "snapshot_warmup_days"}),
                }
            ),
            "mlflow": MlflowConfig(
                tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                artifact_location=str(tmp_path / "artifacts"),
            ),
        }
    )
    result = train(config)
    metrics = result.all_metrics
    naive = result.capture[result.capture["ranking"].str.startswith("naive:")]
    assert len(naive) == 5  # every account baseline is shown beside the model
    # no lift the baselines lack: Tier 1 books no more than the best one-line ranking
    assert metrics["tier1_revenue_share"] <= metrics["best_baseline_tier1_capture"] + 0.05
    assert metrics["tier1_lift"] < 2.0
    assert any("one outcome only" in note for note in result.notes)
    # the gate's word names the baseline it compared with
    assert any("naive baseline" in reason for reason in result.gate.reasons)


def test_the_mlflow_run_logs_both_candidates_of_each_booster_and_the_choice(
    demo_dir: Path, tmp_path: Path
) -> None:
    import mlflow
    from rich.console import Console

    from tiering_cli.model_cmd import _size_table
    from training.pipeline import train

    config = training_config(demo_dir)
    config = config.model_copy(
        update={
            "mlflow": MlflowConfig(
                tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                artifact_location=str(tmp_path / "artifacts"),
            )
        }
    )
    result = train(config)
    run = mlflow.MlflowClient(result.tracking_uri).get_run(result.run_id)
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    sizes = result.sizes
    assert sizes is not None
    assert sorted(zip(sizes["model"], sizes["candidate"], strict=True)) == [
        ("conversion", "smaller"),
        ("conversion", "standard"),
        ("revenue", "smaller"),
        ("revenue", "standard"),
    ]
    for model in ("conversion", "revenue"):
        rows = sizes[sizes["model"] == model].set_index("candidate")
        assert rows["chosen"].sum() == 1
        kept = str(rows.index[rows["chosen"]][0])
        assert params[f"size.{model}.kept"].startswith(kept)
        assert tags[f"size.{model}"] == params[f"size.{model}.kept"]
        assert metrics[f"size_{model}_smaller_kept"] == float(kept == "smaller")
        for candidate in ("standard", "smaller"):
            for figure in ("trees", "num_leaves", "trees_x_leaves", "total_leaves", "score"):
                assert metrics[f"size_{model}_{candidate}_{figure}"] == pytest.approx(
                    float(rows.loc[candidate, figure])
                )
        assert rows.loc["smaller", "num_leaves"] < rows.loc["standard", "num_leaves"]
        # the bundle holds the kept candidate
        assert metrics[f"{model}_trees"] == rows.loc[kept, "trees"]
    logged = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/evaluation/model_sizes.csv")
    assert len(pd.read_csv(io.StringIO(logged))) == 4
    # and the CLI's training summary shows both candidates
    console = Console(record=True, width=250)
    console.print(_size_table(sizes))
    text = console.export_text()
    assert text.count("│ standard") == 2 and text.count("│ smaller") == 2  # rows, not the title
