"""The demo generator's ground truth: one reader for the files it writes beside the data.

The truth folder (``truth/`` beside the data, CSV or Parquet as the data was written):

- ``opportunities_truth``: opportunity_id, true_p_win, true_expected_amount (mean amount if won);
- ``accounts_truth``: account_id, as_of (each month's first day and the data's last day),
  true_p_win, true_deal_value, true_expected_value: a deal created that day;
- ``process_truth``: one row per account, the parameters of its deal and activity processes
  (``demo.generator.PROCESS_COLUMNS``), from which the expected won revenue in any horizon
  can be computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from demo.generator import PROCESS_COLUMNS

OPPORTUNITY_COLUMNS = ("opportunity_id", "true_p_win", "true_expected_amount")
ACCOUNT_COLUMNS = ("account_id", "as_of", "true_p_win", "true_deal_value", "true_expected_value")
FILES = {
    "opportunities": ("opportunities_truth", OPPORTUNITY_COLUMNS),
    "accounts": ("accounts_truth", ACCOUNT_COLUMNS),
    "process": ("process_truth", PROCESS_COLUMNS),
}


class TruthError(ValueError):
    """The demo ground truth is missing or does not line up with the data."""


@dataclass(frozen=True)
class Truth:
    """The generator's truth tables (columns in the module docstring); ``account_id`` and
    ``opportunity_id`` as strings, ``as_of`` as datetimes, whatever the file format."""

    opportunities: pd.DataFrame
    accounts: pd.DataFrame
    # None in a truth folder written before the generator wrote it
    process: pd.DataFrame | None

    @property
    def end(self) -> pd.Timestamp:
        """The data's last day (the last account snapshot)."""
        return pd.Timestamp(self.accounts["as_of"].max())


def read_truth(truth_dir: str | Path) -> Truth:
    """Read the truth the generator wrote into ``truth_dir``, as CSV or Parquet.

    When the folder holds both formats (the demo was written again in the other one), the
    format whose files were written last is read, so the truth matches the newest data.
    """
    folder = Path(truth_dir)
    how = "write it with `tiering demo-data --out <folder of the data>`"
    if not folder.is_dir():
        raise TruthError(f"demo truth: no folder {folder}; {how}")
    required = [stem for name, (stem, _) in FILES.items() if name != "process"]
    complete = {
        fmt: [folder / f"{stem}.{fmt}" for stem in required]
        for fmt in ("csv", "parquet")
        if all((folder / f"{stem}.{fmt}").is_file() for stem in required)
    }
    if not complete:
        missing = sorted(
            f"{stem}.csv/.parquet"
            for stem in required
            if not any((folder / f"{stem}.{fmt}").is_file() for fmt in ("csv", "parquet"))
        )
        found = sorted(p.name for p in folder.iterdir() if p.is_file())
        detail = f"missing {', '.join(missing)}" if missing else "CSV and Parquet files mixed"
        raise TruthError(
            f"demo truth in {folder}: {detail} (found: {', '.join(found) or 'nothing'}); {how}"
        )
    fmt = max(complete, key=lambda f: max(p.stat().st_mtime for p in complete[f]))
    frames = {
        name: _read(folder, stem, fmt, columns)
        for name, (stem, columns) in FILES.items()
        if (folder / f"{stem}.{fmt}").is_file()
    }
    return Truth(frames["opportunities"], frames["accounts"], frames.get("process"))


def _read(folder: Path, stem: str, fmt: str, columns: Sequence[str]) -> pd.DataFrame:
    path = folder / f"{stem}.{fmt}"
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype={"opportunity_id": "str", "account_id": "str"})
    except (OSError, ValueError) as error:
        raise TruthError(f"demo truth: cannot read {path}: {error}") from error
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TruthError(
            f"demo truth: {path} lacks column(s) {missing}; it was written by another version "
            "of the generator: write the demo again with `tiering demo-data`"
        )
    frame = frame[list(columns)]
    for key in ("opportunity_id", "account_id"):
        if key in frame:
            frame[key] = frame[key].astype("str")
    if "as_of" in frame:
        frame["as_of"] = pd.to_datetime(frame["as_of"]).astype("datetime64[ns]")
    if "true_icp_industry" in frame:
        frame["true_icp_industry"] = frame["true_icp_industry"].astype(bool)
    return frame
