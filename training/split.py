"""Time-based split of closed deals: train on the oldest, stop early and calibrate on the next
slice, report on the newest slice that nothing was fitted or tuned on.

Cuts fall on month starts so that a report can say "test: deals created 2026-01-01 to
2026-09-30" and so that the demo's monthly ground-truth snapshots line up with the test start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# The validate command checks the same cut-off before anyone trains, so it lives with the data.
from features.tables import maturity_cutoff
from tiering.config import SplitConfig

__all__ = ["SplitError", "TimeSplit", "maturity_cutoff", "time_split"]


class SplitError(ValueError):
    """The deals cannot be split into three non-empty time slices."""


@dataclass(frozen=True)
class TimeSplit:
    """Three slices of the same frame (rows keep their index) and the dates that cut them.

    train: created in [train_start, calibration_start); calibration: [calibration_start,
    test_start); test: [test_start, test_end] (test_end is the last creation date, inclusive).
    """

    train: pd.DataFrame
    calibration: pd.DataFrame
    test: pd.DataFrame
    train_start: pd.Timestamp
    calibration_start: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp

    def describe(self) -> pd.DataFrame:
        """One row per slice: dates, deals, won deals, win rate (what the CLI prints)."""
        rows = []
        ends = [self.calibration_start, self.test_start, self.test_end + pd.Timedelta(days=1)]
        starts = [self.train_start, self.calibration_start, self.test_start]
        for name, frame, start, end in zip(
            ("train", "calibration", "test"),
            (self.train, self.calibration, self.test),
            starts,
            ends,
            strict=True,
        ):
            won = int(frame["won"].sum()) if "won" in frame else 0
            rows.append(
                {
                    "slice": name,
                    "from": start.date().isoformat(),
                    "to": (end - pd.Timedelta(days=1)).date().isoformat(),
                    "deals": len(frame),
                    "won": won,
                    "win_rate": won / len(frame) if len(frame) else float("nan"),
                }
            )
        return pd.DataFrame(rows)


def _month_cut(dates: pd.Series, months: pd.DatetimeIndex, share_after: float) -> pd.Timestamp:
    """The month start whose share of deals created on or after it is closest to share_after."""
    values = dates.to_numpy(dtype="datetime64[ns]")
    sorted_dates = np.sort(values)
    after = 1.0 - np.searchsorted(
        sorted_dates, months.to_numpy(dtype="datetime64[ns]"), side="left"
    ) / len(values)
    return pd.Timestamp(months[int(np.argmin(np.abs(after - share_after)))])


def time_split(deals: pd.DataFrame, config: SplitConfig, date_column: str = "as_of") -> TimeSplit:
    """Split ``deals`` (one row per closed deal, ``date_column`` = its creation date) on month
    starts into train / calibration / test holding about 1 - c - t, c and t of the deals."""
    if date_column not in deals:
        raise SplitError(f"deals: no column {date_column!r} to split on")
    dates = pd.to_datetime(deals[date_column])
    if dates.isna().any():
        raise SplitError(f"deals.{date_column}: {int(dates.isna().sum())} missing dates")
    if len(deals) < 3:
        raise SplitError(
            f"deals: {len(deals)} closed deals, at least 3 are needed to split by time"
        )
    first, last = dates.min(), dates.max()
    # Candidate cuts: every month start after the first deal's month, up to the last deal.
    months = pd.date_range(
        first.to_period("M").to_timestamp() + pd.offsets.MonthBegin(1), last, freq="MS"
    )
    if len(months) < 2:
        raise SplitError(
            f"deals: created between {first.date()} and {last.date()}; a time split needs deals "
            "in at least three different months"
        )
    test_start = _month_cut(dates, months, config.test_share)
    earlier = months[months < test_start]
    if len(earlier) == 0:
        raise SplitError(
            f"deals: no month start before the test start {test_start.date()} to cut on"
        )
    calibration_start = _month_cut(dates, earlier, config.test_share + config.calibration_share)
    train_mask = dates < calibration_start
    cal_mask = (dates >= calibration_start) & (dates < test_start)
    test_mask = dates >= test_start
    split = TimeSplit(
        train=deals.loc[train_mask.to_numpy()],
        calibration=deals.loc[cal_mask.to_numpy()],
        test=deals.loc[test_mask.to_numpy()],
        train_start=pd.Timestamp(first).normalize(),
        calibration_start=calibration_start,
        test_start=test_start,
        test_end=pd.Timestamp(last).normalize(),
    )
    for name, frame in (
        ("train", split.train),
        ("calibration", split.calibration),
        ("test", split.test),
    ):
        if len(frame) == 0:
            raise SplitError(f"deals: the {name} slice is empty; too few months of closed deals")
    return split
