"""A backtest of the stability policy: monthly runs replayed over the data, with and without it.

Each run date's accounts are featured and tiered once (the same code as batch scoring, without
the reason texts); the policies then differ only in how they turn those base tiers into tiers,
so the comparison isolates the policy. For each setting:

- monthly Tier 1 churn: the share of one run's Tier 1 accounts that are not Tier 1 in the next
  run, averaged over consecutive runs; quarterly churn likewise between runs three apart;
- all-tier churn: the share of accounts whose tier changed between consecutive runs;
- revenue captured by Tier 1: won revenue closed between one run and the next by the accounts
  that run put in Tier 1, over all won revenue in those windows (summed over the replay).

One model scores every date (the bundle given); dates inside its training window flatter the
model's own figures, which is why only the difference between the two settings is the claim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tiering.bundle import Bundle
from tiering.config import Config, StabilityConfig
from tiering.stability import Previous, is_review, stabilise


@dataclass(frozen=True)
class RunTiers:
    """One replayed run: base tiers and what the policy needs, in account order."""

    as_of: pd.Timestamp
    account_id: np.ndarray
    priority: np.ndarray
    ceiling: np.ndarray
    base_tier: np.ndarray


@dataclass(frozen=True)
class BacktestResult:
    summary: pd.DataFrame
    """One row per setting: the figures above."""
    monthly: pd.DataFrame
    """One row per setting and run: Tier 1 churn into it, revenue captured after it."""
    dates: list[pd.Timestamp]


def month_ends(end: pd.Timestamp, months: int) -> list[pd.Timestamp]:
    """``months`` + 1 month ends up to the last full month before ``end`` that still leaves a
    month of outcomes after the last run."""
    last = (pd.Timestamp(end).normalize() + pd.offsets.MonthEnd(0)) - pd.offsets.MonthEnd(1)
    if last + pd.offsets.MonthEnd(1) > end:
        last = last - pd.offsets.MonthEnd(1)
    return [last - pd.offsets.MonthEnd(k) for k in range(months, -1, -1)]


def replay_runs(
    config: Config,
    bundle: Bundle,
    dates: Sequence[pd.Timestamp],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[RunTiers], pd.DataFrame]:
    """Base tiers of every date, and the won deals (account_id, closed_at, amount)."""
    from features.build import build_features, scoring_requests
    from features.contract import load_tables
    from serving.batch import tier_population

    tables = load_tables(config.data).tables
    runs = []
    for i, day in enumerate(dates):
        features = build_features(tables, scoring_requests(tables.accounts, day), config.features)
        population = tier_population(bundle, features, config.scoring.chunk_size)
        runs.append(
            RunTiers(
                as_of=pd.Timestamp(day),
                account_id=population.scores["account_id"].astype(str).to_numpy(),
                priority=population.scores["priority"].to_numpy(dtype=np.float64),
                ceiling=population.assignment.ceiling,
                base_tier=population.assignment.tier,
            )
        )
        if progress is not None:
            progress(i + 1, len(dates))
    opps = tables.opportunities
    won = opps[(opps["outcome"] == "won") & opps["closed_at"].notna()]
    return runs, won[["account_id", "closed_at", "amount"]].assign(
        account_id=lambda f: f["account_id"].astype(str)
    )


def apply_policy(runs: Sequence[RunTiers], stability: StabilityConfig) -> list[np.ndarray]:
    """The tiers of each run under ``stability``, each run following the one before."""
    out: list[np.ndarray] = []
    prev_frame: pd.DataFrame | None = None
    last_review: pd.Timestamp | None = None
    for run in runs:
        review = is_review(run.as_of, last_review, stability.review_months)
        stable = stabilise(
            run.priority,
            run.ceiling,
            run.base_tier,
            Previous.align(list(run.account_id), prev_frame),
            stability,
            review=review,
        )
        if stable.review:
            last_review = run.as_of
        out.append(stable.tier)
        prev_frame = pd.DataFrame(
            {
                "account_id": run.account_id,
                "tier": stable.tier,
                "ceiling": run.ceiling,
                "priority": run.priority,
            }
        )
    return out


def _churn(ids_a: np.ndarray, tier_a: np.ndarray, ids_b: np.ndarray, tier_b: np.ndarray) -> float:
    before = set(ids_a[tier_a == 1])
    if not before:
        return float("nan")
    return len(before - set(ids_b[tier_b == 1])) / len(before)


def _any_churn(
    ids_a: np.ndarray, tier_a: np.ndarray, ids_b: np.ndarray, tier_b: np.ndarray
) -> float:
    a = pd.Series(tier_a, index=ids_a)
    b = pd.Series(tier_b, index=ids_b)
    common = a.index.intersection(b.index)
    return float((a[common] != b[common]).mean()) if len(common) else float("nan")


def evaluate(
    runs: Sequence[RunTiers],
    won: pd.DataFrame,
    settings: dict[str, StabilityConfig],
    window_end: pd.Timestamp | None = None,
) -> BacktestResult:
    """The figures of each setting over the same replayed runs."""
    rows, monthly = [], []
    ends = [r.as_of for r in runs[1:]] + [
        window_end if window_end is not None else runs[-1].as_of + pd.offsets.MonthEnd(1)
    ]
    for name, stability in settings.items():
        tiers = apply_policy(runs, stability)
        captured = total = 0.0
        m_churn, any_churn = [], []
        for i, run in enumerate(runs):
            start, end = run.as_of, ends[i]
            deals = won[(won["closed_at"] > start) & (won["closed_at"] <= end)]
            t1 = set(run.account_id[tiers[i] == 1])
            got = float(deals.loc[deals["account_id"].isin(t1), "amount"].sum())
            captured += got
            total += float(deals["amount"].sum())
            churn = (
                _churn(runs[i - 1].account_id, tiers[i - 1], run.account_id, tiers[i])
                if i
                else float("nan")
            )
            if i:
                m_churn.append(churn)
                any_churn.append(
                    _any_churn(runs[i - 1].account_id, tiers[i - 1], run.account_id, tiers[i])
                )
            monthly.append(
                {
                    "setting": name,
                    "as_of": run.as_of.date().isoformat(),
                    "tier1_accounts": int((tiers[i] == 1).sum()),
                    "tier1_churn": churn,
                    "tier1_revenue_share": got / float(deals["amount"].sum())
                    if len(deals)
                    else float("nan"),
                }
            )
        q_churn = [
            _churn(runs[i - 3].account_id, tiers[i - 3], runs[i].account_id, tiers[i])
            for i in range(3, len(runs))
        ]
        rows.append(
            {
                "setting": name,
                "runs": len(runs),
                "tier1_monthly_churn": float(np.nanmean(m_churn)) if m_churn else float("nan"),
                "tier1_quarterly_churn": float(np.nanmean(q_churn)) if q_churn else float("nan"),
                "any_tier_monthly_churn": float(np.nanmean(any_churn))
                if any_churn
                else float("nan"),
                "tier1_revenue_captured": captured / total if total else float("nan"),
                "won_revenue": total,
            }
        )
    return BacktestResult(pd.DataFrame(rows), pd.DataFrame(monthly), [r.as_of for r in runs])


def backtest(
    config: Config,
    bundle: Bundle,
    dates: Sequence[pd.Timestamp],
    progress: Callable[[int, int], None] | None = None,
) -> BacktestResult:
    """The replay with the configured stability policy beside no policy at all."""
    runs, won = replay_runs(config, bundle, dates, progress)
    stable = config.stability.model_copy(update={"enabled": True})
    return evaluate(
        runs,
        won,
        {
            "without stability": stable.model_copy(update={"enabled": False}),
            "with stability": stable,
        },
    )
