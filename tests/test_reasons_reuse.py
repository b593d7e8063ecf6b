"""SHAP values reused from the tier history: a second run on unchanged data explains no
account and writes exactly what a fresh run writes; an account whose model input changed is
explained again, alone; other models, or ``[history] reuse_reasons = false``, explain every
account. On SQLite and on a real PostgreSQL server, in one process and on Dask."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from serving.batch import score_accounts
from serving.tier_changes import describe_run, open_history
from tiering.bundle import CONVERSION, Bundle, booster_from_text
from tiering.config import Config
from tiering.reuse import CACHE_COLUMNS

from support import TrainedBundle


@pytest.fixture(params=["sqlite", "postgresql"])
def history_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty history database per test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'history.db'}"
        return
    server = request.getfixturevalue("postgres_url")
    name = f"reuse_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield server.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _config(trained: TrainedBundle, folder: Path, url: str, *, reuse: bool = True) -> Config:
    config = trained.config_writing_to(folder)
    history = config.history.model_copy(update={"url": url, "reuse_reasons": reuse})
    return config.model_copy(update={"history": history})


def _counts(config: Config) -> tuple[int, int]:
    """(reused, explained) of the latest run in the history."""
    run = open_history(config).runs().sort_values("created_at").iloc[-1]
    return int(run["reasons_reused"]), int(run["reasons_explained"])


def _fingerprints(config: Config) -> pd.Series:
    """Each account's model-input fingerprint in the latest run (a rerun of a date replaces
    the run)."""
    rows = open_history(config).rows(columns=["account_id", "input_fingerprint"])
    return rows.set_index("account_id")["input_fingerprint"]


def _run(config: Config, bundle: Bundle, out: Path) -> pd.DataFrame:
    return pd.read_parquet(score_accounts(config, bundle, out=out).output)


def test_a_second_run_on_unchanged_data_reuses_every_account_and_writes_a_fresh_runs_texts(
    trained_bundle: TrainedBundle, tmp_path: Path, history_url: str
) -> None:
    bundle = Bundle.load(trained_bundle.bundle_dir)
    config = _config(trained_bundle, tmp_path, history_url)
    first = _run(config, bundle, tmp_path / "first.parquet")
    n = len(first)
    assert _counts(config) == (0, n)  # nothing stored yet: every account explained

    second = _run(config, bundle, tmp_path / "second.parquet")
    assert _counts(config) == (n, 0)
    as_of = pd.Timestamp(open_history(config).runs()["as_of"].iloc[-1])
    assert f"0 accounts explained, {n:,} reused" in describe_run(config, as_of)

    fresh_config = _config(trained_bundle, tmp_path, history_url, reuse=False)
    fresh = _run(fresh_config, bundle, tmp_path / "fresh.parquet")
    assert _counts(config) == (0, n)  # the switch explains every account again
    fresh_line = describe_run(config, as_of).splitlines()[-1]
    assert fresh_line.endswith(f"{n:,} accounts explained, none reused")  # and no reason why
    assert second["reasons"].str.len().gt(2).all()
    assert not set(CACHE_COLUMNS) & set(second.columns)  # kept in the history only
    pd.testing.assert_frame_equal(second, fresh)
    pd.testing.assert_frame_equal(second, first)
    rows = open_history(config).rows(columns=["account_id", "input_fingerprint", "drivers"])
    assert rows["input_fingerprint"].str.len().eq(32).all()


def test_an_account_whose_model_input_changed_is_explained_again_alone(
    trained_bundle: TrainedBundle, tmp_path: Path
) -> None:
    bundle = Bundle.load(trained_bundle.bundle_dir)
    config = _config(trained_bundle, tmp_path, f"sqlite:///{tmp_path / 'history.db'}")
    first = _run(config, bundle, tmp_path / "first.parquet")
    before_fp = _fingerprints(config)

    source = config.data.accounts
    assert source is not None
    accounts = pd.read_csv(source.path)
    changed = str(accounts["account_id"].iloc[7])
    assert "employees" in bundle.feature_names
    accounts.loc[accounts["account_id"] == changed, "employees"] = 123_456
    edited = tmp_path / "accounts.csv"
    accounts.to_csv(edited, index=False)
    data = config.data.model_copy(update={"accounts": source.model_copy(update={"path": edited})})
    config = config.model_copy(update={"data": data})

    second = _run(config, bundle, tmp_path / "second.parquet")
    assert _counts(config) == (len(first) - 1, 1)
    after = _fingerprints(config)
    assert after.index[after != before_fp].tolist() == [changed]

    fresh = _run(
        config.model_copy(
            update={"history": config.history.model_copy(update={"reuse_reasons": False})}
        ),
        bundle,
        tmp_path / "fresh.parquet",
    )
    pd.testing.assert_frame_equal(second, fresh)
    old, new = (f.set_index("account_id").at[changed, "reasons"] for f in (first, second))
    assert np.asarray(old).tolist() != np.asarray(new).tolist()


def _other_models(bundle_dir: Path) -> Bundle:
    """The session's bundle with its conversion model cut to its first trees: other models,
    hence other SHAP values, under a new version."""
    bundle = Bundle.load(bundle_dir)
    model = bundle.models[CONVERSION]
    assert model.booster is not None
    model.booster = booster_from_text(model.booster.model_to_string(num_iteration=10))
    bundle.metadata["model_version"] = "test-2"
    return bundle


def test_other_models_explain_every_account(
    trained_bundle: TrainedBundle, tmp_path: Path, history_url: str
) -> None:
    config = _config(trained_bundle, tmp_path, history_url)
    first = _run(config, Bundle.load(trained_bundle.bundle_dir), tmp_path / "first.parquet")
    other = _other_models(trained_bundle.bundle_dir)
    assert other.explainer_key() != Bundle.load(trained_bundle.bundle_dir).explainer_key()

    second = _run(config, other, tmp_path / "second.parquet")
    assert _counts(config) == (0, len(first))
    again = _run(config, other, tmp_path / "again.parquet")
    assert _counts(config) == (len(first), 0)
    pd.testing.assert_frame_equal(again, second)
    assert not np.array_equal(first["p_convert"], second["p_convert"])


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    from tiering.cluster import connect

    with connect("local:2", memory_limit="1GiB") as c:
        yield c


def test_a_dask_run_reuses_what_a_single_process_run_stored(
    trained_bundle: TrainedBundle, tmp_path: Path, client: object
) -> None:
    from serving.distributed import score_accounts_distributed

    bundle = Bundle.load(trained_bundle.bundle_dir)
    config = _config(trained_bundle, tmp_path, f"sqlite:///{tmp_path / 'history.db'}")
    single = _run(config, bundle, tmp_path / "single.parquet")
    spread = score_accounts_distributed(
        config,
        bundle,
        client,  # type: ignore[arg-type]
        out=tmp_path / "dask",
        partition_size=70,
    )
    assert _counts(config) == (len(single), 0)
    pd.testing.assert_frame_equal(pd.read_parquet(spread.output), single)


def test_the_fingerprint_reads_what_the_models_read(trained_bundle: TrainedBundle) -> None:
    from features.build import build_features, scoring_requests
    from features.contract import load_tables

    bundle = Bundle.load(trained_bundle.bundle_dir)
    tables = load_tables(trained_bundle.config.data).tables
    requests = scoring_requests(tables.accounts, tables.end_of_data()).iloc[:3]
    rows = build_features(tables, requests, trained_bundle.config.features)
    numeric = next(c for c in bundle.feature_names if c not in bundle.categories)
    category = next(iter(bundle.categories))
    base = bundle.input_fingerprints(rows)
    assert len(set(base)) == 3

    alike = rows.copy()
    alike[numeric] = [0.0, np.nan, 1.0]
    twin = alike.copy()
    twin[numeric] = [-0.0, float("nan") * -1, 1.0]  # the same to the trees
    twin["not a model input"] = 1
    assert bundle.input_fingerprints(twin).tolist() == bundle.input_fingerprints(alike).tolist()

    unseen = rows.copy()
    unseen[category] = ["no such level", None, rows[category].iloc[2]]
    missing = unseen.copy()
    missing[category] = [None, "nor this one", rows[category].iloc[2]]
    assert bundle.input_fingerprints(unseen).tolist() == bundle.input_fingerprints(missing).tolist()

    moved = rows.copy()
    moved.loc[moved.index[1], numeric] = 1e9
    assert (bundle.input_fingerprints(moved) != base).tolist() == [False, True, False]
