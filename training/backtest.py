"""Check a model as a user would: tier the account list as of a past date, then compare with
the won revenue the following horizon actually brought, beside the naive account rankings.

The tiers are what `tiering score --as-of DATE` gives (the same scoring core, the policy run
over the whole list as of that date); the naive rankings use only what was known at the date;
the segment conversion rate is learnt from the snapshots whose label windows had closed by then.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from features.build import build_features
from features.tables import Tables
from tiering.bundle import Bundle
from tiering.config import Config
from training.evaluate import WindowEvaluation, evaluate_window
from training.fit import SegmentWinRate
from training.snapshots import horizon_labels, labelled_dates, snapshot_requests
from training.truth import demo_truth


class BacktestError(ValueError):
    """A date that cannot be checked (its horizon runs past the data, or nothing before it)."""


@dataclass(frozen=True)
class Backtest:
    as_of: pd.Timestamp
    horizon_days: int
    accounts: int
    won_revenue: float
    evaluation: WindowEvaluation


def backtest(config: Config, bundle: Bundle, as_of: str | pd.Timestamp, tables: Tables) -> Backtest:
    """The bundle's tiers as of ``as_of`` against the revenue won in the next ``H`` days."""
    try:
        when = pd.Timestamp(as_of).normalize()
    except (TypeError, ValueError):
        raise BacktestError(f"as_of: not a date: {as_of!r} (use YYYY-MM-DD)") from None
    horizon = bundle.horizon_days
    end = tables.end_of_data()
    if when + pd.Timedelta(days=horizon) > end + pd.Timedelta(days=1):
        raise BacktestError(
            f"as_of {when.date()}: its {horizon}-day window runs past the end of the data "
            f"({end.date()}); choose a date on or before "
            f"{(end + pd.Timedelta(days=1) - pd.Timedelta(days=horizon)).date()}"
        )
    ids = tables.accounts["account_id"].astype(str)
    requests = snapshot_requests(ids, pd.DatetimeIndex([when]))
    features = build_features(tables, requests, config.features)
    test = features.join(horizon_labels(tables.opportunities, requests, horizon))

    past = labelled_dates(tables.opportunities, end, horizon, config.training.snapshot_warmup_days)
    past = past[past + pd.Timedelta(days=horizon) <= when]
    if len(past) == 0:
        raise BacktestError(
            f"as_of {when.date()}: no earlier snapshot whose {horizon}-day window had closed by "
            "then, so the segment baseline has nothing to learn from; choose a later date"
        )
    past_requests = snapshot_requests(ids, past)
    # The segments are firmographics (as of the export), so the date's rows carry them.
    segments = pd.concat([features] * len(past), ignore_index=True)
    won = horizon_labels(tables.opportunities, past_requests, horizon)["converted"].to_numpy()
    segment = SegmentWinRate().fit(segments, won)
    truth, _ = demo_truth(config, tables, pd.DatetimeIndex([when]))
    evaluation = evaluate_window(bundle, test, segment, truth=truth)
    return Backtest(
        as_of=when,
        horizon_days=horizon,
        accounts=len(test),
        won_revenue=float(test["revenue"].sum()),
        evaluation=evaluation,
    )
