"""Risk: the deployed bundle is not the model that was evaluated: a save/load round trip that
changes predictions (of any named model, fallbacks included), a calibrator that does not
survive JSON, categories re-encoded differently at scoring than at training, a pickle sneaking
in, or an MLflow pyfunc that returns labels instead of probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tiering.bundle import (
    CONVERSION,
    DEAL_WIN,
    REVENUE,
    AmountModel,
    Bundle,
    BundleError,
    Calibrator,
    ProbabilityModel,
    ValueInterval,
)
from tiering.config import TrainingConfig
from training.fit import fit_calibrator, fit_models

INDUSTRIES = ["software", "fintech", "retail", "manufacturing"]
CONFIG = TrainingConfig(
    n_jobs=1, num_boost_round=60, early_stopping_rounds=10, learning_rate=0.1, min_data_in_leaf=20
)


def synthetic_deals(n: int, seed: int) -> pd.DataFrame:
    """Feature rows in the shape build_features returns, with the labels of both levels:
    ``won`` / ``amount`` (a deal) and ``converted`` / ``revenue`` (an account snapshot)."""
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
            "converted": won,
            "revenue": np.nan_to_num(amount),
        }
    )


FEATURES = ["industry", "employees", "meeting_90d"]


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    rows = synthetic_deals(1500, seed=1)
    train, cal = rows.iloc[:1000], rows.iloc[1000:]
    models = fit_models(
        train, cal, FEATURES, ["industry"], CONFIG, deals_train=train, deals_calibration=cal
    )
    assert models.deal_win is not None
    return Bundle(
        models={CONVERSION: models.conversion, REVENUE: models.revenue, DEAL_WIN: models.deal_win},
        feature_names=FEATURES,
        categories=models.categories,
        metadata={"model_version": "7"},
    )


def test_fallback_models_survive_a_round_trip(bundle: Bundle, tmp_path: Path) -> None:
    """A conversion model that had one outcome to learn from and a revenue model that fell back
    to segment medians are saved without boosters and predict the same after loading."""
    fallback = Bundle(
        models={
            CONVERSION: ProbabilityModel(None, Calibrator("identity"), rate=0.37),
            REVENUE: AmountModel(
                None,
                "segment_median",
                ValueInterval(low=-0.5, high=0.4),
                medians={"software | 1,000-4,999": 90_000.0},
                overall=40_000.0,
            ),
        },
        feature_names=FEATURES,
        categories=bundle.categories,
    )
    loaded = Bundle.load(fallback.save(tmp_path / "f"))
    assert not list((tmp_path / "f" / "models").glob("*.txt"))
    rows = synthetic_deals(40, seed=3)
    out = loaded.predict(rows)
    pd.testing.assert_frame_equal(out, fallback.predict(rows))
    np.testing.assert_allclose(out["p_convert"], 0.37)
    assert set(np.round(out["revenue_if_converts"])) <= {90_000.0, 40_000.0}
    assert out["p_win_deal"].isna().all()  # no deal-win model in this bundle
    conv, revenue = loaded.contributions(rows)
    # Without a booster, all of a model's effect sits in the bias: no driver to show.
    assert (conv.drop(columns="bias").to_numpy() == 0).all()
    np.testing.assert_allclose(np.exp(revenue["bias"]), out["revenue_if_converts"])


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
    for path in folder.rglob("*"):
        if path.is_dir():
            continue
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
    assert not np.allclose(bundle.predict(known)["p_convert"], bundle.predict(missing)["p_convert"])


def test_column_order_of_the_input_does_not_matter(bundle: Bundle) -> None:
    rows = synthetic_deals(50, seed=4)
    shuffled = rows[list(reversed(rows.columns))]
    pd.testing.assert_frame_equal(bundle.predict(shuffled), bundle.predict(rows))


def test_missing_feature_column_is_a_clear_error(bundle: Bundle) -> None:
    with pytest.raises(BundleError, match="meeting_90d"):
        bundle.predict(synthetic_deals(5, seed=2).drop(columns="meeting_90d"))


def test_value_range_brackets_the_point_and_expected_revenue_is_p_times_value(
    bundle: Bundle,
) -> None:
    out = bundle.predict(synthetic_deals(200, seed=5))
    assert (out["revenue_p10"] <= out["revenue_if_converts"]).all()
    assert (out["revenue_if_converts"] <= out["revenue_p90"]).all()
    np.testing.assert_allclose(
        out["expected_revenue"], out["p_convert"] * out["revenue_if_converts"]
    )


def test_open_pipeline_is_open_amounts_priced_by_the_deal_win_model(bundle: Bundle) -> None:
    rows = synthetic_deals(100, seed=8).assign(open_amount=np.linspace(0, 99_000, 100))
    out = bundle.predict(rows)
    assert out["p_win_deal"].between(0, 1).all()
    np.testing.assert_allclose(out["open_pipeline"], rows["open_amount"] * out["p_win_deal"])
    # The open amounts are context, never a model input: the probabilities do not move.
    np.testing.assert_allclose(
        out["p_convert"], bundle.predict(rows.drop(columns="open_amount"))["p_convert"]
    )


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
        predicted["expected_revenue"],
        np.full(len(rows), 80.0),
        np.ones(len(rows)),
        frozen.policy,
        "2025-06-30",
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    features = rows.drop(columns=["won", "amount", "converted", "revenue"])
    with mlflow.start_run(experiment_id=experiment):
        info = log_bundle_model(frozen, features, tmp_path / "work")
    model = mlflow.pyfunc.load_model(info.model_uri)
    out = model.predict(features.head(50))
    p = out["p_convert"].to_numpy(dtype=float)
    assert out["tier"].isin([1, 2, 3]).all()
    assert ((p > 0) & (p < 1)).all()
    assert len(np.unique(p)) > 5  # probabilities, not 0/1 labels
    np.testing.assert_allclose(p, frozen.predict(features.head(50))["p_convert"].to_numpy())
    assert not list((tmp_path / "artifacts").rglob("*.pkl"))
