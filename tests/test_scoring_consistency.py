"""Risk: the fast scoring path answers differently from the plain one: a model matrix built
without pandas that LightGBM reads differently from the encoded DataFrame (unseen or missing
categories, text in numeric columns, column order), a bundle whose boosters store other
category levels, predictions that change with the thread count, or ``score`` giving other
numbers or reasons when it encodes the rows once for both models."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tiering.bundle import SMALL_BATCH_ROWS, Bundle
from tiering.config import TrainingConfig
from tiering.policy import reference_cutoffs
from tiering.scoring import records, score, score_columns
from training.fit import fit_models

from support import named_bundle, with_account_labels

INDUSTRIES = ["software", "fintech", "retail", "manufacturing"]
REGIONS = ["emea", "amer", "apac"]
FEATURES = ["industry", "employees", "region", "meeting_90d", "web_visit_90d"]
CONFIG = TrainingConfig(
    n_jobs=1, num_boost_round=40, early_stopping_rounds=10, learning_rate=0.1, min_data_in_leaf=20
)


def feature_rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    industry = rng.choice(INDUSTRIES, n).astype(object)
    industry[rng.random(n) < 0.05] = np.nan
    region = rng.choice(REGIONS, n).astype(object)
    employees = np.round(rng.lognormal(6, 1.5, n))
    employees[rng.random(n) < 0.05] = np.nan
    meetings = rng.poisson(1.0, n).astype(float)
    visits = rng.poisson(3.0, n).astype(float)
    logit = -1.5 + 0.8 * meetings + 0.6 * (industry == "software") + 0.1 * visits
    won = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    amount = np.where(
        won == 1,
        np.exp(9 + 0.3 * np.log1p(np.nan_to_num(employees)) + rng.normal(0, 0.5, n)),
        np.nan,
    )
    return pd.DataFrame(
        {
            "account_id": [f"A-{i:05d}" for i in range(n)],
            "as_of": pd.Timestamp("2025-01-01"),
            "industry": pd.Series(industry, dtype=object),
            "employees": employees,
            "region": pd.Series(region, dtype=object),
            "meeting_90d": meetings,
            "web_visit_90d": visits,
            "won": won,
            "amount": amount,
        }
    )


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    rows = with_account_labels(feature_rows(1500, seed=1))
    train, cal = rows.iloc[:1000], rows.iloc[1000:]
    models = fit_models(
        train,
        cal,
        FEATURES,
        ["industry", "region"],
        CONFIG,
        deals_train=train,
        deals_calibration=cal,
    )
    bundle = named_bundle(models, FEATURES, metadata={"model_version": "3"})
    reference = feature_rows(600, seed=2)
    predicted = bundle.predict(reference)
    bundle.cutoffs = reference_cutoffs(
        predicted["expected_revenue"],
        np.full(len(reference), 100.0),
        np.ones(len(reference)),
        bundle.policy,
        "2025-06-30",
    )
    return bundle


def awkward_rows() -> dict[str, pd.DataFrame]:
    """Inputs a model matrix could get wrong."""
    rows = feature_rows(300, seed=3).drop(columns=["won", "amount"])
    rows.loc[rows.index[::7], "industry"] = "aerospace"  # unseen level
    rows.loc[rows.index[::11], "region"] = None
    return {
        "plain": rows,
        "one row": rows.iloc[[7]],
        "shuffled columns": rows[list(reversed(rows.columns))],
        "pandas categories": rows.assign(industry=rows["industry"].astype("category")),
        "string dtype": rows.assign(region=rows["region"].astype("string")),
        "numbers as text": rows.assign(
            employees=rows["employees"].map(lambda v: "n/a" if np.isnan(v) else f"{v:.0f}")
        ),
        "integers": rows.assign(meeting_90d=rows["meeting_90d"].astype(np.int64)),
        "levels as numbers": rows.assign(industry=1.0),
        "many rows": pd.concat([rows] * 5, ignore_index=True),
        "many rows, pandas categories": pd.concat(
            [rows.assign(region=rows["region"].astype("category"))] * 5, ignore_index=True
        ),
    }


@pytest.mark.parametrize("case", list(awkward_rows()))
def test_model_matrix_gives_lightgbm_exactly_what_the_encoded_frame_gives(
    bundle: Bundle, case: str
) -> None:
    rows = awkward_rows()[case]
    matrix = bundle.model_matrix(rows)
    encoded = bundle.encode(rows)
    assert isinstance(matrix, np.ndarray) and matrix.shape == (len(rows), len(FEATURES))
    for booster in bundle.boosters():
        for kind in ({"raw_score": True}, {"pred_contrib": True}):
            np.testing.assert_array_equal(
                booster.predict(matrix, **kind), booster.predict(encoded, **kind)
            )


def test_unseen_and_missing_levels_are_missing_in_the_matrix(bundle: Bundle) -> None:
    rows = feature_rows(5, seed=4).assign(industry=["software", "aerospace", None, np.nan, ""])
    column = bundle.model_matrix(rows)[:, FEATURES.index("industry")]
    assert column[0] == bundle.categories["industry"].index("software")
    assert np.isnan(column[1:]).all()


def test_boosters_with_other_stored_levels_keep_lightgbms_own_mapping(bundle: Bundle) -> None:
    reordered = dataclasses.replace(
        bundle, categories={k: list(reversed(v)) for k, v in bundle.categories.items()}
    )
    rows = awkward_rows()["plain"]
    assert isinstance(reordered.model_matrix(rows), pd.DataFrame)
    # LightGBM maps levels by name to the ones the boosters were trained with.
    pd.testing.assert_frame_equal(reordered.predict(rows), bundle.predict(rows), check_exact=True)


def test_thread_count_does_not_change_predictions(bundle: Bundle) -> None:
    rows = feature_rows(SMALL_BATCH_ROWS + 500, seed=5).drop(columns=["won", "amount"])
    whole = bundle.predict(rows)  # configured threads
    pieces = pd.concat(bundle.predict(rows.iloc[i : i + 700]) for i in range(0, len(rows), 700))
    pd.testing.assert_frame_equal(whole, pieces, check_exact=True)
    win, value = bundle.contributions(rows.iloc[:50])
    win_small, value_small = bundle.contributions(rows.iloc[:50].iloc[::-1])
    pd.testing.assert_frame_equal(win, win_small.iloc[::-1], check_exact=True)
    pd.testing.assert_frame_equal(value, value_small.iloc[::-1], check_exact=True)


class PlainBundle:
    """Only what ``tiering.scoring.Scorable`` asks for: ``score`` then encodes the rows once
    for the predictions and again for the contributions."""

    def __init__(self, bundle: Bundle) -> None:
        self._bundle = bundle
        self.icp, self.policy, self.playbook = bundle.icp, bundle.policy, bundle.playbook
        self.cutoffs, self.metadata, self.calibrator, self.horizon_days = (
            bundle.cutoffs,
            bundle.metadata,
            bundle.calibrator,
            bundle.horizon_days,
        )

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        return self._bundle.predict(features)

    def contributions(self, features: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        return self._bundle.contributions(features)


@pytest.mark.parametrize("population", [True, False])
def test_score_encoding_once_equals_predict_and_contributions_apart(
    bundle: Bundle, population: bool
) -> None:
    rows = awkward_rows()["plain"]
    rows.index = rows.index * 2 + 5
    fast = score(bundle, rows, reasons=True, population=population)
    plain: Any = PlainBundle(bundle)
    pd.testing.assert_frame_equal(
        fast, score(plain, rows, reasons=True, population=population), check_exact=True
    )
    assert fast["reasons"].tolist() == score(plain, rows, population=population)["reasons"].tolist()
    assert list(fast.index) == list(rows.index)


def _same_values(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal keys in order, and per key the same type and value (NaN equal to NaN)."""
    if list(a) != list(b):
        return False
    for k in a:
        x, y = a[k], b[k]
        if type(x) is not type(y):
            return False
        if isinstance(x, float) and np.isnan(x):
            if not np.isnan(y):
                return False
        elif x is not y and x != y:
            return False
    return True


@pytest.mark.parametrize("reasons", [True, False])
@pytest.mark.parametrize("case", ["plain", "one row", "string dtype", "pandas categories"])
def test_records_of_the_columns_are_the_frames_records(
    bundle: Bundle, case: str, reasons: bool
) -> None:
    """The service reads ``score_columns`` as rows without building the frame: the same
    keys, values and Python types as ``score(...).to_dict("records")``, missing values
    included."""
    rows = awkward_rows()[case]
    frame = score(bundle, rows, reasons=reasons, population=False)
    expected = frame.to_dict("records")
    got = records(score_columns(bundle, rows, reasons=reasons, population=False))
    assert len(got) == len(expected) == len(rows)
    assert all(_same_values(g, e) for g, e in zip(got, expected, strict=True))
    assert all(_same_values(g, e) for g, e in zip(records(frame), expected, strict=True))
    # A missing customer tier (prospects) stays what the frame gives, not a float NaN.
    assert {type(r["customer_tier"]) for r in got} == {type(r["customer_tier"]) for r in expected}


def test_records_refuse_columns_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="different lengths"):
        records({"a": np.arange(2), "b": np.arange(3)})
    assert records({"a": np.arange(2), "v": "3"}) == [{"a": 0, "v": "3"}, {"a": 1, "v": "3"}]
