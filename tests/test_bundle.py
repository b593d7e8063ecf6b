"""Risk: the deployed bundle is not the model that was evaluated: a save/load round trip that
changes predictions, a calibrator that does not survive JSON, categories re-encoded differently
at scoring than at training, a pickle sneaking in, or an MLflow pyfunc that returns labels
instead of probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tiering.bundle import Bundle, BundleError, Calibrator, ValueInterval
from tiering.config import TrainingConfig
from training.fit import fit_calibrator, fit_models

INDUSTRIES = ["software", "fintech", "retail", "manufacturing"]
CONFIG = TrainingConfig(
    n_jobs=1, num_boost_round=60, early_stopping_rounds=10, learning_rate=0.1, min_data_in_leaf=20
)


def synthetic_deals(n: int, seed: int) -> pd.DataFrame:
    """Feature rows in the shape build_features returns, with ``won`` and ``amount``."""
    rng = np.random.default_rng(seed)
    industry = rng.choice(INDUSTRIES, n).astype(object)
    industry[rng.random(n) < 0.05] = np.nan
    employees = np.round(rng.lognormal(6, 1.5, n))
    meetings = rng.poisson(1.0, n).astype(float)
    logit = -1.5 + 0.8 * meetings + 0.6 * (industry == "software") + 0.2 * np.log1p(employees)
    won = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    amount = np.where(
        won == 1, np.exp(9 + 0.3 * np.log1p(employees) + rng.normal(0, 0.5, n)), np.nan
    )
    return pd.DataFrame(
        {
            "account_id": [f"A-{i:05d}" for i in range(n)],
            "as_of": pd.Timestamp("2025-01-01")
            + pd.to_timedelta(np.sort(rng.integers(0, 540, n)), unit="D"),
            "industry": pd.Series(industry, dtype=object),
            "employees": employees,
            "meeting_90d": meetings,
            "won": won,
            "amount": amount,
        }
    )


FEATURES = ["industry", "employees", "meeting_90d"]


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    deals = synthetic_deals(1500, seed=1)
    models = fit_models(deals.iloc[:1000], deals.iloc[1000:], FEATURES, ["industry"], CONFIG)
    return Bundle(
        win_model=models.win_model,
        calibrator=models.calibrator,
        value_model=models.value.booster,
        value_objective=models.value.objective,  # type: ignore[arg-type]
        value_interval=models.value_interval,
        feature_names=FEATURES,
        categories=models.categories,
        metadata={"model_version": "7"},
        value_smearing=models.value.smearing,
    )


@pytest.mark.parametrize(
    "calibrator",
    [
        Calibrator("isotonic", x=(0.1, 0.4, 0.9), y=(0.05, 0.3, 0.95)),
        Calibrator("sigmoid", a=1.3, b=-0.2),
        Calibrator("identity"),
    ],
    ids=["isotonic", "sigmoid", "identity"],
)
def test_calibrator_survives_a_json_round_trip(calibrator: Calibrator) -> None:
    restored = Calibrator.from_dict(json.loads(json.dumps(calibrator.to_dict())))
    p = np.linspace(0.0, 1.0, 101)
    np.testing.assert_array_equal(restored.transform(p), calibrator.transform(p))


def test_fitted_calibrators_are_monotone_and_stay_inside_0_1() -> None:
    rng = np.random.default_rng(3)
    p_raw = rng.random(2000)
    y = (rng.random(2000) < p_raw**2).astype(int)  # raw scores overstate the win chance
    for method in ("isotonic", "sigmoid"):
        cal = fit_calibrator(method, p_raw, y)
        out = cal.transform(np.linspace(0, 1, 200))
        assert np.all(np.diff(out) >= -1e-12), method
        assert out.min() > 0 and out.max() < 1, method
        # calibrated: the mean prediction matches the observed win rate
        assert abs(cal.transform(p_raw).mean() - y.mean()) < 0.02, method


def test_save_load_round_trip_gives_identical_predictions(bundle: Bundle, tmp_path: Path) -> None:
    bundle.save(tmp_path / "b")
    loaded = Bundle.load(tmp_path / "b")
    rows = synthetic_deals(300, seed=9)
    pd.testing.assert_frame_equal(loaded.predict(rows), bundle.predict(rows))
    for got, want in zip(loaded.contributions(rows), bundle.contributions(rows), strict=True):
        pd.testing.assert_frame_equal(got, want)
    assert loaded.categories == bundle.categories
    assert loaded.version == "7"


def test_saved_bundle_is_text_only(bundle: Bundle, tmp_path: Path) -> None:
    folder = bundle.save(tmp_path / "b")
    for path in folder.iterdir():
        text = path.read_text(encoding="utf-8")  # raises on binary content
        if path.suffix == ".json":
            json.loads(text)
        else:
            assert path.suffix == ".txt" and text.startswith("tree"), path.name


def test_unseen_category_is_missing_not_another_level(bundle: Bundle) -> None:
    rows = synthetic_deals(5, seed=2)
    known = rows.assign(industry="software")
    unseen = rows.assign(industry="aerospace")
    missing = rows.assign(industry=np.nan)
    assert bundle.encode(unseen)["industry"].isna().all()
    pd.testing.assert_frame_equal(bundle.predict(unseen), bundle.predict(missing))
    assert not np.allclose(bundle.predict(known)["p_win"], bundle.predict(missing)["p_win"])


def test_column_order_of_the_input_does_not_matter(bundle: Bundle) -> None:
    rows = synthetic_deals(50, seed=4)
    shuffled = rows[list(reversed(rows.columns))]
    pd.testing.assert_frame_equal(bundle.predict(shuffled), bundle.predict(rows))


def test_missing_feature_column_is_a_clear_error(bundle: Bundle) -> None:
    with pytest.raises(BundleError, match="meeting_90d"):
        bundle.predict(synthetic_deals(5, seed=2).drop(columns="meeting_90d"))


def test_value_range_brackets_the_point_and_expected_value_is_p_times_value(bundle: Bundle) -> None:
    out = bundle.predict(synthetic_deals(200, seed=5))
    assert (out["value_p10"] <= out["deal_value"]).all()
    assert (out["deal_value"] <= out["value_p90"]).all()
    np.testing.assert_allclose(out["expected_value"], out["p_win"] * out["deal_value"])


def test_value_interval_json_round_trip() -> None:
    interval = ValueInterval(low=-0.7, high=0.6, n_calibration=321)
    assert ValueInterval.from_dict(json.loads(json.dumps(interval.to_dict()))) == interval


def test_loading_a_folder_that_is_not_a_bundle_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a model bundle"):
        Bundle.load(tmp_path)


@pytest.mark.slow
def test_pyfunc_from_registry_path_returns_probabilities(
    bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from tiering.policy import reference_cutoffs
    from training.pipeline import log_bundle_model

    rows = synthetic_deals(400, seed=6)
    predicted = bundle.predict(rows)
    frozen = Bundle(**{**bundle.__dict__})
    frozen.cutoffs = reference_cutoffs(
        predicted["expected_value"],
        np.full(len(rows), 80.0),
        np.ones(len(rows)),
        frozen.policy,
        "2025-06-30",
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    features = rows.drop(columns=["won", "amount"])
    with mlflow.start_run(experiment_id=experiment):
        info = log_bundle_model(frozen, features, tmp_path / "work")
    model = mlflow.pyfunc.load_model(info.model_uri)
    out = model.predict(features.head(50))
    p = out["p_win"].to_numpy(dtype=float)
    assert out["tier"].isin([1, 2, 3]).all()
    assert ((p > 0) & (p < 1)).all()
    assert len(np.unique(p)) > 5  # probabilities, not 0/1 labels
    np.testing.assert_allclose(p, frozen.predict(features.head(50))["p_win"].to_numpy())
    assert not list((tmp_path / "artifacts").rglob("*.pkl"))
