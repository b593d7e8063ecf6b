"""Risks of the demo's ground truth: one reader must read what the generator wrote in either
format, or say what is missing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from demo import TruthError, read_truth, write_demo


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
    frame = pd.read_csv(paths["accounts_truth"]).drop(columns="true_deal_value")
    frame.to_csv(paths["accounts_truth"], index=False)
    with pytest.raises(
        TruthError, match=r"accounts_truth\.csv lacks column\(s\) \['true_deal_value'\]"
    ):
        read_truth(tmp_path / "truth")
