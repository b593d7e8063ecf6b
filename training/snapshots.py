"""Account snapshots: every account of the list at regular as-of dates, labelled with what it
booked in the horizon that follows.

What is ranked is the revenue an account will bring within the horizon H, so the model learns
from the same question asked in the past: "as of the first of this month, did the account book
a won deal within the next H days, and for how much?". Every account is asked at every date,
whether or not it ever had a deal, so the model learns how often accounts buy at all, not only
how deals that were opened end.

Labels
    A won deal is *booked* at its close date (its creation date where the export has no close
    date). ``converted`` = at least one won deal booked in ``[as_of, as_of + H)``; ``revenue`` =
    the sum of their amounts (missing amounts count 0; ``won_deals`` counts them all).

Split (by as-of date, with a gap of H)
    Snapshots overlap in time: the label window of a snapshot taken on 1 March reaches into
    September. A split by row would let the model see September's outcomes in training and be
    tested on them. So the slices are cut on as-of dates, and between two slices a gap of H is
    left out: every train snapshot's label window ends before the first calibration snapshot,
    and every calibration window ends before the first test snapshot. The newest snapshots whose
    windows would run past the end of the data are not labelled at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tiering.config import SplitConfig
from training.split import SplitError

_DAY = pd.Timedelta(days=1)


def booked_at(opportunities: pd.DataFrame) -> pd.Series:
    """When each deal's outcome was booked: its close date, else its creation date."""
    created = pd.to_datetime(opportunities["created_at"])
    if "closed_at" not in opportunities:
        return created
    closed = pd.to_datetime(opportunities["closed_at"])
    return closed.where(closed.notna(), created)


def labelled_dates(
    opportunities: pd.DataFrame, end: pd.Timestamp, horizon_days: int, warmup_days: int
) -> pd.DatetimeIndex:
    """Month starts from the first deal plus the warm-up through the last date whose label
    window still ends inside the data (``as_of + H <= end + 1 day``)."""
    created = pd.to_datetime(opportunities["created_at"]).dropna()
    if created.empty:
        raise SplitError("opportunities: no deal with a creation date to take snapshots from")
    first = (created.min() + pd.Timedelta(days=warmup_days)).normalize()
    last = pd.Timestamp(end).normalize() + _DAY - pd.Timedelta(days=horizon_days)
    start = first.to_period("M").to_timestamp()
    if start < first:
        start = start + pd.offsets.MonthBegin(1)
    return pd.date_range(start, last, freq="MS")


def snapshot_requests(account_ids: pd.Series | np.ndarray, dates: pd.DatetimeIndex) -> pd.DataFrame:
    """Every account at every date: ``account_id``, ``as_of``, date-major (so a date is a slice)."""
    ids = np.asarray(account_ids, dtype=object)
    return pd.DataFrame(
        {
            "account_id": np.tile(ids, len(dates)),
            "as_of": np.repeat(dates.to_numpy(dtype="datetime64[ns]"), len(ids)),
        }
    )


def horizon_labels(
    opportunities: pd.DataFrame, requests: pd.DataFrame, horizon_days: int
) -> pd.DataFrame:
    """``converted`` (0/1), ``revenue`` and ``won_deals`` booked in ``[as_of, as_of + H)`` for
    each request (same index)."""
    won = opportunities[opportunities["outcome"] == "won"]
    when = booked_at(won).to_numpy(dtype="datetime64[ns]")
    amount = (
        pd.to_numeric(won["amount"], errors="coerce").fillna(0.0).to_numpy(dtype=float)
        if "amount" in won
        else np.zeros(len(won))
    )
    keep = ~np.isnat(when)
    codes, uniques = pd.factorize(
        pd.concat([won["account_id"].astype(str), requests["account_id"].astype(str)]),
        sort=False,
    )
    deal_acc, req_acc = codes[: len(won)][keep], codes[len(won) :]
    when, amount = when[keep].astype(np.int64), amount[keep]
    stride = np.int64(2) ** 62 // np.int64(max(len(uniques), 1))
    # Pack (account, time) into one sortable key; times are shifted to be non-negative.
    base = min(when.min() if len(when) else 0, requests["as_of"].min().value)
    scale = np.int64(86_400 * 10**9)  # days resolve every window boundary used here
    key = deal_acc.astype(np.int64) * stride + (when - base) // scale
    order = np.argsort(key, kind="stable")
    key, amount = key[order], amount[order]
    cum = np.r_[0.0, np.cumsum(amount)]
    start_day = (
        pd.to_datetime(requests["as_of"]).to_numpy("datetime64[ns]").astype(np.int64) - base
    ) // scale
    lo = np.searchsorted(key, req_acc.astype(np.int64) * stride + start_day, "left")
    hi = np.searchsorted(key, req_acc.astype(np.int64) * stride + start_day + horizon_days, "left")
    count = hi - lo
    return pd.DataFrame(
        {
            "converted": (count > 0).astype(np.int64),
            "revenue": cum[hi] - cum[lo],
            "won_deals": count.astype(np.int64),
        },
        index=requests.index,
    )


@dataclass(frozen=True)
class SnapshotSplit:
    """Train / calibration / test snapshots, cut on as-of dates with a gap of H between slices."""

    train: pd.DataFrame
    calibration: pd.DataFrame
    test: pd.DataFrame
    horizon_days: int
    train_dates: pd.DatetimeIndex
    calibration_dates: pd.DatetimeIndex
    test_dates: pd.DatetimeIndex

    @property
    def test_start(self) -> pd.Timestamp:
        return pd.Timestamp(self.test_dates[0])

    def describe(self) -> pd.DataFrame:
        rows = []
        for name, frame, dates in (
            ("train", self.train, self.train_dates),
            ("calibration", self.calibration, self.calibration_dates),
            ("test", self.test, self.test_dates),
        ):
            rows.append(
                {
                    "slice": name,
                    "first_as_of": dates[0].date().isoformat(),
                    "last_as_of": dates[-1].date().isoformat(),
                    "snapshots": len(dates),
                    "rows": len(frame),
                    "conversion_rate": float(frame["converted"].mean()) if len(frame) else np.nan,
                    "label_windows_end": (dates[-1] + pd.Timedelta(days=self.horizon_days))
                    .date()
                    .isoformat(),
                }
            )
        return pd.DataFrame(rows)


def split_snapshots(
    snapshots: pd.DataFrame, dates: pd.DatetimeIndex, config: SplitConfig, horizon_days: int
) -> SnapshotSplit:
    """Cut the labelled dates into train / gap / calibration / gap / test.

    The test slice takes about ``test_share`` of the usable dates (at least one), calibration
    about ``calibration_share`` (at least one), train the rest; each gap is the dates whose
    label window would reach the next slice's first date.
    """
    horizon = pd.Timedelta(days=horizon_days)
    dates = pd.DatetimeIndex(sorted(dates))
    gap = int(np.ceil(horizon_days / 30.4375))  # monthly dates a gap of H removes
    usable = len(dates) - 2 * gap
    need = 3
    if usable < need:
        raise SplitError(
            f"snapshots: {len(dates)} monthly as-of dates with a label window of {horizon_days} "
            f"days; the split needs at least {need + 2 * gap} (two gaps of {gap} months and "
            "three slices). Use a shorter [training] horizon_days or more history."
        )
    n_test = max(1, round(config.test_share * usable))
    n_cal = max(1, round(config.calibration_share * usable))
    n_train = usable - n_test - n_cal
    if n_train < 1:
        n_train, n_cal = 1, usable - n_test - 1
    test_dates = dates[-n_test:]
    cal_dates = dates[dates + horizon <= test_dates[0]][-n_cal:]
    train_dates = dates[dates + horizon <= cal_dates[0]]
    when = pd.to_datetime(snapshots["as_of"])
    split = SnapshotSplit(
        train=snapshots[when.isin(train_dates).to_numpy()],
        calibration=snapshots[when.isin(cal_dates).to_numpy()],
        test=snapshots[when.isin(test_dates).to_numpy()],
        horizon_days=horizon_days,
        train_dates=train_dates,
        calibration_dates=cal_dates,
        test_dates=test_dates,
    )
    return split
