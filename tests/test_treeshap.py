"""Exact reasons: the compiled TreeSHAP kernel gives LightGBM's ``pred_contrib`` values on every
row, on the project's own models and on boosters built to stress categorical splits, every
missing-value direction and deep paths; the bundle's reasons come from them unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from tiering import treeshap
from tiering.bundle import CHURN, CUSTOMER_MODELS, EXPANSION, Bundle, encode_features

from support import TrainedBundle

TOLERANCE = 1e-5


def _feature_rows(trained: TrainedBundle) -> pd.DataFrame:
    from features.build import build_features, scoring_requests
    from features.contract import load_tables

    tables = load_tables(trained.config.data).tables
    requests = scoring_requests(tables.accounts, tables.end_of_data())
    return build_features(tables, requests, trained.config.features)


def _stressed(matrix: np.ndarray, categorical: int, seed: int = 0) -> np.ndarray:
    """The rows, and copies with values knocked out (NaN), set to zero, and categorical codes
    the model never saw (negative and beyond its levels)."""
    rng = np.random.default_rng(seed)
    copies = [matrix]
    for fill in (np.nan, 0.0):
        noisy = matrix.copy()
        noisy[rng.random(noisy.shape) < 0.25] = fill
        copies.append(noisy)
    unseen = matrix.copy()
    codes = rng.choice([-1.0, 40.0, 1e6], size=(len(unseen), categorical))
    hit = rng.random((len(unseen), categorical)) < 0.3
    unseen[:, :categorical] = np.where(hit, codes, unseen[:, :categorical])
    copies.append(unseen)
    return np.vstack(copies)


def test_kernel_equals_pred_contrib_on_the_projects_models(
    trained_bundle: TrainedBundle,
) -> None:
    bundle = Bundle.load(trained_bundle.bundle_dir)
    matrix = bundle.model_matrix(_feature_rows(trained_bundle))
    assert isinstance(matrix, np.ndarray)
    rows = _stressed(matrix, categorical=len(bundle.categories))
    explained = 0
    for name, model in bundle.models.items():
        booster = model.booster
        # The customer models read their own columns; the account models read this matrix.
        if booster is None or name in CUSTOMER_MODELS:
            continue
        compiled = treeshap.compile_booster(booster)
        assert compiled is not None, name
        expected = np.asarray(booster.predict(rows, pred_contrib=True, num_threads=1))
        got = compiled.contributions(rows)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < TOLERANCE, name
        # The kernel's source as plain Python (what numba compiles) on a few rows.
        few = np.ascontiguousarray(rows[::97])
        plain = np.zeros((len(few), few.shape[1] + 1))
        plain[:, -1] = compiled.bias
        treeshap.explain_rows(few, plain, *compiled.kernel_args())
        assert np.abs(plain - expected[::97]).max() < TOLERANCE, name
        explained += 1
    assert explained >= 2
    # The project's models do split on categories and on missing values.
    dumped = str(bundle.conversion.booster.dump_model())  # type: ignore[union-attr]
    assert "'=='" in dumped and "'default_left': True" in dumped


def test_bundle_contributions_come_from_the_kernel_and_equal_lightgbm(
    trained_bundle: TrainedBundle,
) -> None:
    bundle = Bundle.load(trained_bundle.bundle_dir)
    features = _feature_rows(trained_bundle)
    conv, revenue = bundle.contributions(features)
    matrix = bundle.model_matrix(features)
    for contrib, model in ((conv, bundle.conversion), (revenue, bundle.revenue)):
        assert model.booster is not None
        expected = model.booster.predict(matrix, pred_contrib=True, num_threads=1)
        assert list(contrib.columns) == [*bundle.feature_names, "bias"]
        assert np.abs(contrib.to_numpy() - expected).max() < TOLERANCE
        assert treeshap.explainer_for(model.booster) is not None


def test_customer_models_contributions_equal_lightgbm(trained_bundle: TrainedBundle) -> None:
    bundle = Bundle.load(trained_bundle.bundle_dir)
    assert bundle.has_customer_models
    features = _feature_rows(trained_bundle)
    customers = features[pd.to_numeric(features["cs_customer"], errors="coerce") > 0]
    assert len(customers) > 0
    predicted = bundle.predict_customers(customers)
    # LightGBM's own values on the encoded frame (its own category re-mapping).
    inputs = list(bundle.customer["feature_names"])
    levels = {k: list(v) for k, v in bundle.customer.get("categories", {}).items()}
    encoded = encode_features(customers, inputs, levels)
    names = [*inputs, "bias"]
    for prefix, model in ((CHURN, bundle.models[CHURN]), (EXPANSION, bundle.models[EXPANSION])):
        assert model.booster is not None
        expected = model.booster.predict(encoded, pred_contrib=True, num_threads=1)
        got = predicted[[f"{prefix}:{n}" for n in names]].to_numpy()
        assert np.abs(got - expected).max() < TOLERANCE, prefix
        assert treeshap.explainer_for(model.booster) is not None


def _synthetic(
    seed: int, *, zero_as_missing: bool, num_leaves: int, rounds: int = 25
) -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 3_000
    cats = rng.integers(0, 12, size=(n, 2)).astype(float)
    nums = rng.normal(size=(n, 6))
    nums[rng.random(nums.shape) < 0.15] = np.nan
    nums[rng.random(nums.shape) < 0.15] = 0.0
    x = np.hstack([cats, nums])
    signal = np.isin(cats[:, 0], [1, 4, 7]) * 1.5 + np.nan_to_num(nums[:, 0]) - cats[:, 1] / 6
    y = (signal + rng.normal(scale=0.7, size=n) > 0.5).astype(float)
    params = {
        "objective": "binary",
        "num_leaves": num_leaves,
        "min_data_in_leaf": 5,
        "max_cat_to_onehot": 2,
        "cat_smooth": 1,
        "min_data_per_group": 5,
        "zero_as_missing": zero_as_missing,
        "num_threads": 1,
        "verbose": -1,
        "seed": seed,
    }
    data = lgb.Dataset(x, y, categorical_feature=[0, 1], free_raw_data=False)
    return lgb.train(params, data, num_boost_round=rounds), x


@pytest.mark.parametrize(("zero_as_missing", "num_leaves"), [(False, 31), (True, 31), (False, 96)])
def test_categorical_splits_and_every_missing_direction(
    zero_as_missing: bool, num_leaves: int
) -> None:
    booster, x = _synthetic(3, zero_as_missing=zero_as_missing, num_leaves=num_leaves)
    dumped = str(booster.dump_model())
    assert "'=='" in dumped
    assert ("'Zero'" if zero_as_missing else "'NaN'") in dumped
    rows = _stressed(x[:400], categorical=2, seed=1)
    compiled = treeshap.compile_booster(booster)
    assert compiled is not None
    expected = booster.predict(rows, pred_contrib=True, num_threads=1)
    assert np.abs(compiled.contributions(rows) - expected).max() < TOLERANCE
    many = np.tile(rows, (3, 1))  # enough rows for two threads
    assert np.abs(compiled.contributions(many, threads=2) - np.tile(expected, (3, 1))).max() < (
        TOLERANCE
    )


def test_a_multiclass_model_is_explained_by_lightgbm_itself() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(600, 4))
    y = np.argmax(x[:, :3], axis=1)
    params = {"objective": "multiclass", "num_class": 3, "verbose": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=5)
    assert treeshap.compile_booster(booster) is None
    np.testing.assert_allclose(
        treeshap.contributions(booster, x[:50]),
        booster.predict(x[:50], pred_contrib=True, num_threads=1),
    )


def test_a_matrix_of_the_wrong_width_is_refused_by_name() -> None:
    booster, x = _synthetic(7, zero_as_missing=False, num_leaves=7, rounds=3)
    compiled = treeshap.compile_booster(booster)
    assert compiled is not None
    with pytest.raises(ValueError, match="expected a matrix with 8 columns"):
        compiled.contributions(x[:, :5])


def test_warm_up_compiles_once_and_later_calls_reuse_it(monkeypatch: pytest.MonkeyPatch) -> None:
    booster, x = _synthetic(9, zero_as_missing=False, num_leaves=7, rounds=3)
    treeshap.warm_up([booster])

    def again(_: lgb.Booster) -> None:
        raise AssertionError("compiled a second time")

    monkeypatch.setattr(treeshap, "compile_booster", again)
    np.testing.assert_allclose(
        treeshap.contributions(booster, x[:20]),
        booster.predict(x[:20], pred_contrib=True, num_threads=1),
        atol=1e-9,
    )


_CACHED_RUN = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_treeshap import _synthetic
from tiering import treeshap

booster, x = _synthetic(11, zero_as_missing=True, num_leaves=15, rounds=5)
values = treeshap.contributions(booster, x[:200])
reference = booster.predict(x[:200], pred_contrib=True, num_threads=1)
print(json.dumps({{
    "max_difference": float(np.abs(values - reference).max()),
    "loaded_from_cache": sum(treeshap._kernel().stats.cache_hits.values()),
}}))
"""


def _explain_in_a_new_process(env: dict[str, str]) -> dict[str, float]:
    script = _CACHED_RUN.format(tests=str(Path(__file__).parent))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_compiled_kernel_is_cached_for_later_processes_outside_the_package(
    tmp_path: Path,
) -> None:
    """The first process compiles and stores the kernel in the user's cache folder; the next
    loads it instead of compiling, and its values are still pred_contrib's."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    runs = [_explain_in_a_new_process(env) for _ in range(2)]
    assert [run["loaded_from_cache"] for run in runs] == [0, 1]
    assert all(run["max_difference"] < TOLERANCE for run in runs)
    assert list((tmp_path / "cache").glob("account-tiering/numba/**/*.nbi"))
    package = Path(treeshap.__file__).parent
    assert not list(package.glob("**/*.nbi")), "numba wrote its cache into the package"


def test_an_unwritable_cache_folder_still_explains(tmp_path: Path) -> None:
    """A cache folder that cannot be created (here, under a file) costs the compile, not the
    run."""
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(blocked / "numba")}
    for _ in range(2):
        run = _explain_in_a_new_process(env)
        assert run["loaded_from_cache"] == 0
        assert run["max_difference"] < TOLERANCE
    assert blocked.read_text() == "not a folder"
