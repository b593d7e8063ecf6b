"""Risks of the demo CRM generator: it must be reproducible, plausible for B2B, carry the dirt and
leakage traps it promises, never look past the data's end, and its truth must be a truth that
point-in-time features can approach (driven by pre-deal engagement, agreeing with the ICP)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from demo import DemoData, Format, generate, generator, read_truth, write_demo
from features.contract import LoadResult, load_tables
from features.icp import icp_fit
from tiering.config import Config, load_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"
N_ACCOUNTS = 800
OUTCOME_SYNONYMS = {"closed won": "won", "closed lost": "lost", "in progress": "open"}


@pytest.fixture(scope="module")
def data() -> DemoData:
    return generate(N_ACCOUNTS, seed=5, dirt_rate=0.05)


def _outcome(raw: pd.Series) -> pd.Series:
    folded = raw.str.strip().str.lower()
    return folded.replace(OUTCOME_SYNONYMS)


def _deals(data: DemoData) -> pd.DataFrame:
    """Unique deals with clean outcomes and their truth."""
    opp = data.raw["opportunities"].drop_duplicates()
    opp = opp.assign(outcome=_outcome(opp["outcome"]))
    return opp.merge(data.truth["opportunities"], on="opportunity_id", validate="one_to_one")


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_same_seed_writes_the_same_bytes(tmp_path: Path, fmt: Format) -> None:
    first = write_demo(tmp_path / "a", n_accounts=300, seed=11, fmt=fmt)
    write_demo(tmp_path / "b", n_accounts=300, seed=11, fmt=fmt)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 10 and set(first) == {
        "accounts",
        "opportunities",
        "activities",
        "opportunities_truth",
        "accounts_truth",
        "process_truth",
        "subscriptions",
        "usage",
        "tickets",
        "customers_truth",
    }
    assert a == b


def test_different_seed_gives_different_data() -> None:
    one, two = generate(300, seed=1), generate(300, seed=2)
    for table in ("accounts", "opportunities", "activities"):
        assert not one.raw[table].equals(two.raw[table]), table
    assert not one.truth["opportunities"].equals(two.truth["opportunities"])


def test_chunks_and_worker_processes_do_not_change_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks so that 400 accounts span three of them, as a million accounts span forty.
    monkeypatch.setattr(generator, "CHUNK_ACCOUNTS", 150)
    write_demo(tmp_path / "serial", n_accounts=400, seed=3, workers=1)
    write_demo(tmp_path / "parallel", n_accounts=400, seed=3, workers=2)
    assert _files(tmp_path / "serial") == _files(tmp_path / "parallel")

    accounts = pd.read_csv(tmp_path / "serial" / "accounts.csv").drop_duplicates()
    assert accounts["account_id"].is_unique and len(accounts) == 400
    truth = pd.read_csv(tmp_path / "serial" / "truth" / "opportunities_truth.csv")
    numbers = truth["opportunity_id"].str.removeprefix("O-").astype(int)
    assert (numbers.to_numpy() == np.arange(1, len(truth) + 1)).all()


def test_truth_files_exist_and_align_with_the_data(tmp_path: Path) -> None:
    paths = write_demo(tmp_path, n_accounts=300, seed=4)
    assert paths["opportunities_truth"] == tmp_path / "truth" / "opportunities_truth.csv"
    truth = read_truth(tmp_path / "truth")
    opportunities = pd.read_csv(paths["opportunities"], dtype=str)
    accounts = pd.read_csv(paths["accounts"], dtype=str)

    opp_truth = truth.opportunities
    assert list(opp_truth.columns) == ["opportunity_id", "true_p_win", "true_expected_amount"]
    assert set(opp_truth["opportunity_id"]) == set(opportunities["opportunity_id"])
    assert opp_truth["true_p_win"].between(0, 1, inclusive="neither").all()
    assert (opp_truth["true_expected_amount"] > 0).all()

    acc_truth = truth.accounts
    assert list(acc_truth.columns) == [
        "account_id",
        "as_of",
        "true_p_win",
        "true_deal_value",
        "true_expected_value",
    ]
    # every month's first day from 2023-10-01 to 2026-09-01, and the data's end
    snapshots = pd.DatetimeIndex(sorted(acc_truth["as_of"].unique()))
    assert len(snapshots) == 37
    assert snapshots[0] == pd.Timestamp("2023-10-01") and snapshots[-1] == pd.Timestamp(
        "2026-09-30"
    )
    assert (snapshots[:-1].day == 1).all()
    assert set(acc_truth["account_id"]) == set(accounts["account_id"])
    assert len(acc_truth) == 37 * 300
    np.testing.assert_allclose(
        acc_truth["true_expected_value"],
        acc_truth["true_p_win"] * acc_truth["true_deal_value"],
        rtol=1e-4,
        atol=0.01,
    )


def test_end_only_truth_keeps_just_the_end_date() -> None:
    data = generate(200, seed=4, truth_as_of="end")
    assert set(data.truth["accounts"]["as_of"]) == {data.end}
    assert len(data.truth["accounts"]) == 200


def test_win_rate_and_volumes_are_plausible_for_b2b(data: DemoData) -> None:
    deals = _deals(data)
    assert set(deals["outcome"]) == {"won", "lost", "open"}
    closed = deals[deals["outcome"] != "open"]
    win_rate = (closed["outcome"] == "won").mean()
    assert 0.15 <= win_rate <= 0.35
    # 15,000-25,000 closed deals for 5,000 accounts over three years
    assert 3.0 <= len(closed) / N_ACCOUNTS <= 5.0
    rows_per_account = len(data.raw["activities"]) / N_ACCOUNTS
    assert 100 <= rows_per_account <= 250
    # the truth is calibrated by construction: outcomes were drawn from it
    assert abs(closed["true_p_win"].mean() - win_rate) < 0.03


def test_truth_discriminates_about_as_well_as_promised(data: DemoData) -> None:
    closed = _deals(data).query("outcome != 'open'")
    auc = roc_auc_score(closed["outcome"] == "won", closed["true_p_win"])
    assert 0.74 <= auc <= 0.9


def _pre_deal_activity(data: DemoData, start_days: int, end_days: int) -> pd.DataFrame:
    """Per deal: activity in [created_at - start_days, created_at - end_days), by clean type."""
    deals = _deals(data)[["opportunity_id", "account_id", "created_at", "true_p_win"]]
    acts = data.raw["activities"].drop_duplicates()
    acts = acts.assign(type=acts["type"].str.strip().str.lower())
    pairs = deals.merge(acts, on="account_id")
    lag = (pairs["created_at"] - pairs["occurred_at"]).dt.days
    pairs = pairs[(lag <= start_days) & (lag > end_days)]
    counts = pairs.pivot_table(
        index="opportunity_id", columns="type", values="count", aggfunc="sum", fill_value=0
    )
    out = deals.set_index("opportunity_id").join(counts).fillna(0)
    out["total"] = out[list(counts.columns)].sum(axis=1)
    return out


def test_true_win_probability_rises_with_pre_deal_engagement(data: DemoData) -> None:
    recent = _pre_deal_activity(data, 90, 0)
    strong = recent["meeting"] + recent["intent_surge"]
    assert recent["true_p_win"].corr(strong, method="spearman") > 0.3
    quartile = pd.qcut(recent["total"].rank(method="first"), 4, labels=False)
    by_quartile = recent.groupby(quartile)["true_p_win"].mean()
    assert by_quartile.is_monotonic_increasing
    assert by_quartile.iloc[-1] > 2 * by_quartile.iloc[0]


def test_activity_rises_before_deals_are_created(data: DemoData) -> None:
    before = _pre_deal_activity(data, 90, 0)
    earlier = _pre_deal_activity(data, 270, 180)
    assert before["total"].mean() > 1.5 * earlier["total"].mean()


def test_nothing_happens_after_the_end_of_the_data(data: DemoData) -> None:
    assert data.end == pd.Timestamp("2026-09-30")
    acts, deals = data.raw["activities"], _deals(data)
    assert acts["occurred_at"].min() >= data.start
    assert acts["occurred_at"].max() <= data.end
    assert deals["created_at"].max() <= data.end
    assert deals["closed_at"].max() <= data.end
    open_deals = deals[deals["outcome"] == "open"]
    assert open_deals["closed_at"].isna().all() and open_deals["amount"].isna().all()
    closed = deals[deals["outcome"] != "open"]
    cycle = (closed["closed_at"] - closed["created_at"]).dt.days
    assert cycle.between(20, 180).all()


def test_leakage_traps_are_in_the_raw_columns(data: DemoData) -> None:
    deals = _deals(data)
    amount = pd.to_numeric(deals["amount"].str.replace(",", ""))
    lost, won = deals["outcome"] == "lost", deals["outcome"] == "won"
    assert (amount[lost] == 0).mean() > 0.6  # amount 0 on lost deals
    assert (amount[won] > 0).all()
    cycle = (deals["closed_at"] - deals["created_at"]).dt.days
    assert cycle[won].median() > cycle[lost].median()  # closed_at tells the outcome


def test_dirt_appears_at_the_configured_rate(data: DemoData) -> None:
    rate = 0.05
    accounts, opps, acts = (data.raw[t] for t in ("accounts", "opportunities", "activities"))
    for column in ("employees", "industry", "country", "annual_revenue", "founded_year"):
        assert abs(accounts[column].isna().mean() - rate) < 0.025, column
    industry = accounts["industry"].dropna()
    assert abs((industry != industry.str.strip().str.lower()).mean() - rate) < 0.025
    assert abs((~opps["outcome"].isin(["won", "lost", "open"])).mean() - rate) < 0.02
    assert {"Closed Won", "Closed Lost"} & set(opps["outcome"])
    assert opps["amount"].str.contains(",", na=False).any()
    assert accounts["annual_revenue"].str.contains(",", na=False).any()
    assert abs((~acts["type"].isin(generator.ACTIVITY_TYPES)).mean() - rate) < 0.01
    for table in (accounts, opps, acts):
        assert 0 < table.duplicated().sum() < rate * len(table)


def test_no_dirt_when_the_rate_is_zero() -> None:
    clean = generate(200, seed=9, dirt_rate=0.0, thousands_separators=False)
    accounts, opps = clean.raw["accounts"], clean.raw["opportunities"]
    assert not accounts["employees"].isna().any()
    assert set(opps["outcome"]) <= {"won", "lost", "open"}
    assert opps["amount"].dtype == float
    for table in clean.raw.values():
        assert not table.duplicated().any()


def test_bad_arguments_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_accounts"):
        generate(0)
    with pytest.raises(ValueError, match="dirt_rate"):
        generate(10, dirt_rate=0.9)
    with pytest.raises(ValueError, match="fmt"):
        write_demo(tmp_path, 10, fmt="xlsx")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, LoadResult]:
    """The demo written where configs/demo.toml expects it, relative to a copy of the config."""
    root = tmp_path_factory.mktemp("repo")
    write_demo(root / "data" / "demo", n_accounts=500, seed=6)
    (root / "configs").mkdir()
    shutil.copy(CONFIG, root / "configs" / "demo.toml")
    config = load_config(root / "configs" / "demo.toml")
    return config, load_tables(config.data)


def test_data_contract_accepts_the_demo_with_its_config(loaded: tuple[Config, LoadResult]) -> None:
    config, result = loaded
    tables = result.tables
    assert tables.accounts["account_id"].is_unique and len(tables.accounts) == 500
    assert tables.opportunities["opportunity_id"].is_unique
    assert set(tables.opportunities["outcome"]) == {"won", "lost", "open"}
    assert tables.activities is not None
    assert set(tables.activities["type"]) == set(generator.ACTIVITY_TYPES)
    assert tables.opportunities["amount"].dtype == float
    assert config.data.truth_dir is not None
    truth = read_truth(config.data.truth_dir)
    assert set(truth.opportunities["opportunity_id"]) == set(tables.opportunities["opportunity_id"])


def test_demo_icp_agrees_with_the_true_win_probability(loaded: tuple[Config, LoadResult]) -> None:
    config, result = loaded
    fit = icp_fit(result.tables.accounts, config.icp)["icp_fit"].to_numpy()
    assert config.data.truth_dir is not None
    truth = read_truth(config.data.truth_dir).accounts
    at_end = truth[truth["as_of"] == truth["as_of"].max()].set_index("account_id")
    p_win = at_end.loc[result.tables.accounts["account_id"], "true_p_win"].to_numpy()
    assert pd.Series(fit).corr(pd.Series(p_win), method="spearman") > 0.4
