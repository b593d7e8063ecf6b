"""Risks of the demo's ground truth: one reader must read what the generator wrote in either
format, or say what is missing; the horizon truth (expected won revenue in the next H days) must
agree with the revenue the demo then books, respond to what drives it, and rank accounts at
least as well as the deal-level truth it replaces as the ceiling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from demo import Truth, TruthError, horizon_truth, read_truth, write_demo
from features.contract import load_tables

from support import demo_data_config

H = 182
N_ACCOUNTS = 1500


# ------------------------------------------------------------------------------- the reader
def test_parquet_truth_reads_as_the_csv_truth_of_the_same_seed(tmp_path: Path) -> None:
    write_demo(tmp_path / "csv", n_accounts=300, seed=8, fmt="csv", workers=1)
    write_demo(tmp_path / "parquet", n_accounts=300, seed=8, fmt="parquet", workers=1)
    assert not list((tmp_path / "parquet" / "truth").glob("*.csv"))
    from_csv = read_truth(tmp_path / "csv" / "truth")
    from_parquet = read_truth(tmp_path / "parquet" / "truth")
    for name in ("opportunities", "accounts", "process"):
        csv_frame, parquet_frame = getattr(from_csv, name), getattr(from_parquet, name)
        assert len(csv_frame) > 0, name
        pd.testing.assert_frame_equal(parquet_frame, csv_frame, obj=name)
    assert from_parquet.end == pd.Timestamp("2026-09-30")


def test_missing_truth_names_the_folder_and_the_files(tmp_path: Path) -> None:
    with pytest.raises(TruthError, match="no folder") as error:
        read_truth(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(error.value)

    folder = tmp_path / "truth"
    folder.mkdir()
    (folder / "opportunities_truth.csv").write_text("opportunity_id,true_p_win\n")
    with pytest.raises(TruthError) as error:
        read_truth(folder)
    message = str(error.value)
    assert str(folder) in message and "accounts_truth.csv/.parquet" in message
    assert "opportunities_truth.csv" in message  # what it found
    assert "tiering demo-data" in message  # how to fix it


def test_truth_written_by_an_older_generator_is_named(tmp_path: Path) -> None:
    paths = write_demo(tmp_path, n_accounts=50, seed=2, workers=1)
    # before process_truth existed: the deal-level truth still reads, for training's report
    paths["process_truth"].unlink()
    older = read_truth(tmp_path / "truth")
    assert older.process is None and len(older.accounts) == 37 * 50
    frame = pd.read_csv(paths["accounts_truth"]).drop(columns="true_deal_value")
    frame.to_csv(paths["accounts_truth"], index=False)
    with pytest.raises(
        TruthError, match=r"accounts_truth\.csv lacks column\(s\) \['true_deal_value'\]"
    ):
        read_truth(tmp_path / "truth")


# --------------------------------------------------------------------------- horizon truth
@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Truth, pd.DataFrame]:
    """A demo loaded as the product loads it: its truth and its canonical opportunities."""
    folder = tmp_path_factory.mktemp("demo")
    config = demo_data_config(folder, n_accounts=N_ACCOUNTS, seed=2)
    return read_truth(folder / "truth"), load_tables(config.data).tables.opportunities


def _windows(truth: Truth) -> list[pd.Timestamp]:
    """Month starts whose whole window lies inside the data, after a first half-year of history."""
    last = truth.end + pd.Timedelta(days=1) - pd.Timedelta(days=H)
    return list(pd.date_range("2024-04-01", last, freq="MS"))


def test_expected_revenue_matches_what_the_demo_books(loaded: tuple[Truth, pd.DataFrame]) -> None:
    truth, opportunities = loaded
    dates = _windows(truth)
    assert len(dates) >= 20
    expected = horizon_truth(truth, opportunities, dates, H)
    assert len(expected) == len(dates) * N_ACCOUNTS
    assert expected["true_p_convert"].between(0, 1).all()
    assert (expected["true_expected_revenue"] >= 0).all()

    won = opportunities[opportunities["outcome"] == "won"]
    booked, converted, capture, deal_capture = [], [], [], []
    for date in dates:
        window = won[(won["closed_at"] >= date) & (won["closed_at"] < date + pd.Timedelta(days=H))]
        truth_now = expected[expected["as_of"] == date].set_index("account_id")
        real = window.groupby("account_id")["amount"].sum()
        real = real.reindex(truth_now.index, fill_value=0.0)
        booked.append((truth_now["true_expected_revenue"].sum(), real.sum()))
        converted.append((truth_now["true_p_convert"].mean(), (real > 0).mean()))
        top = N_ACCOUNTS // 10
        capture.append(
            real[truth_now["true_expected_revenue"].nlargest(top).index].sum() / real.sum()
        )
        snapshot = truth.accounts[truth.accounts["as_of"] == date].set_index("account_id")
        deal_capture.append(
            real[snapshot["true_expected_value"].nlargest(top).index].sum() / real.sum()
        )
    truth_sum, real_sum = np.sum(booked, axis=0)
    # heavy-tailed amounts: 1,500 accounts' overlapping windows still vary by several percent
    assert truth_sum / real_sum == pytest.approx(1.0, abs=0.15)
    p_convert, share_converted = np.mean(converted, axis=0)
    assert p_convert == pytest.approx(share_converted, abs=0.015)
    # the horizon truth knows who buys how often: it beats the deal-level truth as a ranking
    assert np.mean(capture) > np.mean(deal_capture)


def test_a_higher_deal_rate_or_an_open_deal_raises_the_truth(
    loaded: tuple[Truth, pd.DataFrame],
) -> None:
    truth, _ = loaded
    twin = truth.process.iloc[[0, 0, 0]].reset_index(drop=True)
    twin["account_id"] = ["A-slow", "A-fast", "A-open"]
    twin.loc[1, "true_deal_rate"] *= 2
    date = pd.Timestamp("2025-06-01")
    opportunities = pd.DataFrame(
        {
            "opportunity_id": ["O-open"],
            "account_id": ["A-open"],
            "created_at": [date - pd.Timedelta(days=40)],
            "closed_at": [pd.NaT],
            "outcome": ["open"],
            "amount": [np.nan],
        }
    )
    deal_truth = pd.DataFrame(
        {"opportunity_id": ["O-open"], "true_p_win": [0.4], "true_expected_amount": [50_000.0]}
    )
    same = Truth(deal_truth, truth.accounts, twin)
    out = horizon_truth(same, opportunities, date, H).set_index("account_id")
    slow, fast, with_open = (out.loc[a] for a in ("A-slow", "A-fast", "A-open"))
    assert fast["true_expected_revenue"] > 1.6 * slow["true_expected_revenue"]
    assert fast["true_p_convert"] > slow["true_p_convert"]
    # still open after 40 days makes a win likelier (wins take longer), and it closes in time
    extra = with_open["true_expected_revenue"] - slow["true_expected_revenue"]
    assert 0.4 * 50_000 < extra < 50_000
    assert with_open["true_p_convert"] > slow["true_p_convert"]

    longer = horizon_truth(same, opportunities, date, 2 * H).set_index("account_id")
    assert (longer["true_expected_revenue"] > out["true_expected_revenue"]).all()
    assert (longer["true_p_convert"] > out["true_p_convert"]).all()


def test_horizon_truth_is_reproducible_and_takes_any_date(
    loaded: tuple[Truth, pd.DataFrame],
) -> None:
    truth, opportunities = loaded
    mid_month = [pd.Timestamp("2025-12-17"), pd.Timestamp("2025-12-17 15:30")]
    first = horizon_truth(truth, opportunities, mid_month, H)
    assert set(first["as_of"]) == {pd.Timestamp("2025-12-17")}
    assert len(first) == N_ACCOUNTS
    pd.testing.assert_frame_equal(first, horizon_truth(truth, opportunities, mid_month, H))


def test_horizon_truth_refuses_what_it_cannot_know(loaded: tuple[Truth, pd.DataFrame]) -> None:
    truth, opportunities = loaded
    with pytest.raises(TruthError, match="after the data's end 2026-09-30"):
        horizon_truth(truth, opportunities, pd.Timestamp("2026-12-01"), H)
    older = Truth(truth.opportunities, truth.accounts, None)
    with pytest.raises(TruthError, match="no process_truth"):
        horizon_truth(older, opportunities, pd.Timestamp("2025-01-01"), H)
    strangers = opportunities.assign(account_id="A-999999")
    with pytest.raises(TruthError, match="different runs"):
        horizon_truth(truth, strangers, pd.Timestamp("2025-01-01"), H)
    with pytest.raises(ValueError, match="horizon_days"):
        horizon_truth(truth, opportunities, pd.Timestamp("2025-01-01"), 0)
