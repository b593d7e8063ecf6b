"""Batch runs against the tier history: each run is recorded, tiers hold between reviews with
exact sizes, every tier change names its cause in the scores file, the CRM write-back and the
store, and a rerun of a date replaces it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.batch import crm_path, score_accounts
from serving.tier_changes import describe_run, open_history
from tiering.bundle import Bundle
from tiering.config import Config, HistoryConfig, StabilityConfig
from tiering.stability import CHANGE_CODES

from support import TrainedBundle

MONTH_ENDS = ["2026-03-31", "2026-04-30", "2026-05-31", "2026-06-30"]


@pytest.fixture(scope="module")
def trained(
    trained_bundle: TrainedBundle, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Config, Path]:
    config = trained_bundle.config_writing_to(tmp_path_factory.mktemp("history-batch"))
    return config, trained_bundle.bundle_dir


def _with_history(config: Config, folder: Path, **stability: object) -> Config:
    return config.model_copy(
        update={
            "history": HistoryConfig(url=f"sqlite:///{folder / 'history.db'}"),
            "stability": StabilityConfig(**stability),  # type: ignore[arg-type]
            "scoring": config.scoring.model_copy(update={"snapshot": folder / "snap.parquet"}),
        }
    )


def _replay(config: Config, bundle: Bundle, folder: Path) -> list[pd.DataFrame]:
    out = []
    for day in MONTH_ENDS:
        result = score_accounts(config, bundle, as_of=day, out=folder / f"tiers_{day}.parquet")
        out.append(pd.read_parquet(result.output))
    return out


@pytest.mark.parametrize("enabled", [True, False])
def test_every_run_is_recorded_and_every_change_names_its_cause(
    trained: tuple[Config, Path], tmp_path: Path, enabled: bool
) -> None:
    config, bundle_dir = trained
    config = _with_history(config, tmp_path, enabled=enabled)
    bundle = Bundle.load(bundle_dir)
    runs = _replay(config, bundle, tmp_path)

    store = open_history(config)
    recorded = store.runs()
    assert recorded["as_of"].dt.strftime("%Y-%m-%d").tolist() == MONTH_ENDS
    # Quarterly reviews: the first run, then the run that opens the next quarter (31 March
    # opens Q2, 30 June opens Q3).
    assert recorded["review"].tolist() == [True, False, False, True]
    moves = 0
    for before, after in zip(runs, runs[1:], strict=False):
        b = before.set_index("account_id")
        a = after.set_index("account_id")
        # Sizes are exactly those of the tier policy alone.
        assert (
            np.bincount(a["tier"], minlength=4).tolist()
            == np.bincount(a["base_tier"], minlength=4).tolist()
        )
        changed = a["tier"] != b["tier"].reindex(a.index)
        moves += int(changed.sum())
        assert (a.loc[changed, "change_reason"].str.len() > 0).all()
        assert (a.loc[~changed, "change_reason"].fillna("") == "").all()
        assert (a["previous_tier"] == b["tier"].reindex(a.index)).all()
        assert (a.loc[changed, "tier_since"] == after["tier_since"].max()).all()
    assert moves > 0
    if not enabled:
        for frame in runs:
            assert (frame["tier"] == frame["base_tier"]).all()

    last = store.rows(run_id=str(recorded["run_id"].iloc[-1]))
    assert len(last) == len(runs[-1])
    assert set(last["change_code"]) - {""} <= set(CHANGE_CODES)
    assert {"p_convert", "expected_revenue", "icp_fit"} <= set(last["figures"].iloc[0])
    assert last["drivers"].map(len).gt(0).any()
    assert last["owner"].notna().any() and last["territory"].notna().any()
    crm = pd.read_csv(crm_path(tmp_path / f"tiers_{MONTH_ENDS[-1]}.parquet"))
    assert {"previous_tier", "tier_since", "change_reason"} <= set(crm.columns)
    moved = crm[crm["change_reason"].notna()]
    assert len(moved) == int((runs[-1]["change_reason"] != "").sum())
    assert moved["change_reason"].str.contains("Tier").all()


def test_stability_holds_tier1_between_reviews(
    trained: tuple[Config, Path], tmp_path: Path
) -> None:
    config, bundle_dir = trained
    bundle = Bundle.load(bundle_dir)
    churn = {}
    for enabled in (False, True):
        folder = tmp_path / str(enabled)
        runs = _replay(_with_history(config, folder, enabled=enabled), bundle, folder)
        # April and May are between reviews.
        left = 0
        for before, after in zip(runs[:2], runs[1:3], strict=True):
            t1 = set(before.loc[before["tier"] == 1, "account_id"])
            left += len(t1 - set(after.loc[after["tier"] == 1, "account_id"]))
        churn[enabled] = left
    assert churn[True] < churn[False]


def test_a_rerun_replaces_the_date_and_compares_with_the_run_before(
    trained: tuple[Config, Path], tmp_path: Path
) -> None:
    config, bundle_dir = trained
    config = _with_history(config, tmp_path)
    bundle = Bundle.load(bundle_dir)
    first = score_accounts(config, bundle, as_of=MONTH_ENDS[0], out=tmp_path / "a.parquet")
    score_accounts(config, bundle, as_of=MONTH_ENDS[1], out=tmp_path / "b.parquet")
    again = score_accounts(config, bundle, as_of=MONTH_ENDS[1], out=tmp_path / "c.parquet")
    store = open_history(config)
    assert len(store.runs()) == 2
    assert len(store.rows()) == 2 * len(first.scores)
    b = pd.read_parquet(tmp_path / "b.parquet")
    c = pd.read_parquet(tmp_path / "c.parquet")
    assert b["tier"].tolist() == c["tier"].tolist()
    assert b["previous_tier"].tolist() == c["previous_tier"].tolist()
    assert again.scores["tier"].tolist() == c["tier"].tolist()


def test_the_run_line_tells_first_tiers_from_changes(
    trained: tuple[Config, Path], tmp_path: Path
) -> None:
    """The first run tiers every account for the first time: none of them changed tier. The
    next run counts only real moves."""
    config, bundle_dir = trained
    config = _with_history(config, tmp_path)
    bundle = Bundle.load(bundle_dir)
    first = score_accounts(config, bundle, as_of=MONTH_ENDS[0], out=tmp_path / "a.parquet")
    n = len(first.scores)
    line = describe_run(config, pd.Timestamp(MONTH_ENDS[0]))
    assert f"0 accounts changed tier, {n:,} tiered for the first time" in line
    score_accounts(config, bundle, as_of=MONTH_ENDS[1], out=tmp_path / "b.parquet")
    second = pd.read_parquet(tmp_path / "b.parquet")
    moved = int((second["change_reason"].fillna("") != "").sum())
    line = describe_run(config, pd.Timestamp(MONTH_ENDS[1]))
    assert f"{moved:,} accounts changed tier, " in line
    assert "for the first time" not in line
