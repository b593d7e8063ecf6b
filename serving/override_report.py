"""The performance report's views of overrides and of owners' and territories' books.

``override_outcomes``: after each run, the accounts an override held away from the policy's
tier, set against what the model expected of them (its P(convert) and expected revenue) and
against their base-tier peers (what the model's tier predicted): do overrides win more or
less than the model expected? ``book_performance``: per territory (or owner) and tier, the
accounts, conversion and won revenue after the newest run whose window has closed.
"""

from __future__ import annotations

import pandas as pd

from serving.history import HistoryStore
from serving.overrides import all_overrides


def _naive(values: pd.Series) -> pd.Series:
    """Timestamps without a time zone (SQLite returns naive ones, PostgreSQL aware ones)."""
    stamps = pd.to_datetime(values, utc=True)
    return stamps.dt.tz_localize(None)


def _outcomes(
    opportunities: pd.DataFrame, ids: pd.Series, start: pd.Timestamp, days: int
) -> pd.DataFrame:
    """converted (0/1) and won revenue per account, deals won in (start, start + days]."""
    end = start + pd.Timedelta(days=days)
    won = opportunities[
        (opportunities["outcome"] == "won")
        & (opportunities["closed_at"] > start)
        & (opportunities["closed_at"] <= end)
    ]
    revenue = won.groupby(won["account_id"].astype(str))["amount"].sum()
    got = revenue.reindex(ids.astype(str)).fillna(0.0)
    return pd.DataFrame(
        {
            "converted": (ids.astype(str).isin(won["account_id"].astype(str)))
            .astype(int)
            .to_numpy(),
            "won_revenue": got.to_numpy(),
        }
    )


def override_outcomes(
    store: HistoryStore,
    opportunities: pd.DataFrame,
    *,
    horizon_days: int,
    end_of_data: pd.Timestamp,
) -> pd.DataFrame:
    """One row per run and direction (up / down) with overridden accounts: accounts, the
    model's mean P(convert) and expected revenue for them, what they realised, and what
    their base-tier peers (same base tier, no override) realised."""
    overrides = all_overrides(store)
    runs = store.runs()
    if overrides.empty or runs.empty:
        return pd.DataFrame()
    opps = opportunities.assign(account_id=opportunities["account_id"].astype(str))
    out = []
    for as_of, run_id, created in zip(
        runs["as_of"], runs["run_id"], runs["created_at"], strict=True
    ):
        start = pd.Timestamp(as_of)
        made = _naive(pd.Series([created])).iloc[0]
        set_at = _naive(overrides["set_at"])
        cleared = _naive(overrides["cleared_at"])
        until = pd.to_datetime(overrides["until"])
        live = (
            (set_at <= made)
            & (cleared.isna() | (cleared > made))
            & (until.isna() | (until >= start))
        )
        ids = set(overrides.loc[live, "account_id"].astype(str))
        if not ids:
            continue
        rows = store.rows(
            run_id=str(run_id), columns=["account_id", "tier", "base_tier", "figures"]
        )
        rows["account_id"] = rows["account_id"].astype(str)
        res = _outcomes(opps, rows["account_id"], start, horizon_days)
        rows = pd.concat([rows.reset_index(drop=True), res], axis=1)
        rows["p_convert"] = rows["figures"].map(lambda f: (f or {}).get("p_convert"))
        rows["expected_revenue"] = rows["figures"].map(lambda f: (f or {}).get("expected_revenue"))
        held = rows["account_id"].isin(ids) & (rows["tier"] != rows["base_tier"])
        for direction, mask in (
            ("up", held & (rows["tier"] < rows["base_tier"])),
            ("down", held & (rows["tier"] > rows["base_tier"])),
        ):
            if not mask.any():
                continue
            mine = rows[mask]
            peers = rows[~rows["account_id"].isin(ids) & rows["base_tier"].isin(mine["base_tier"])]
            out.append(
                {
                    "as_of": start.date().isoformat(),
                    "direction": direction,
                    "matured": bool(start + pd.Timedelta(days=horizon_days) <= end_of_data),
                    "accounts": int(mask.sum()),
                    "model_p_convert": float(mine["p_convert"].astype(float).mean()),
                    "realised_conversion": float(mine["converted"].mean()),
                    "base_tier_peers_conversion": float(peers["converted"].mean())
                    if len(peers)
                    else float("nan"),
                    "model_expected_revenue": float(mine["expected_revenue"].astype(float).sum()),
                    "realised_revenue": float(mine["won_revenue"].sum()),
                }
            )
    return pd.DataFrame(out)


def book_performance(
    store: HistoryStore,
    opportunities: pd.DataFrame,
    *,
    by: str,
    horizon_days: int,
    end_of_data: pd.Timestamp,
) -> pd.DataFrame:
    """Per ``by`` (owner or territory) and tier, after the newest run whose window closed:
    accounts, conversion and won revenue (empty when no run has matured)."""
    runs = store.runs()
    matured = runs[runs["as_of"] + pd.Timedelta(days=horizon_days) <= end_of_data]
    if matured.empty:
        return pd.DataFrame()
    run = matured.iloc[-1]
    rows = store.rows(run_id=str(run["run_id"]), columns=["account_id", "tier", by])
    res = _outcomes(
        opportunities, rows["account_id"].astype(str), pd.Timestamp(run["as_of"]), horizon_days
    )
    rows = pd.concat([rows.reset_index(drop=True), res], axis=1)
    rows[by] = rows[by].fillna(f"(no {by})")
    table = rows.groupby([by, "tier"]).agg(
        accounts=("account_id", "size"),
        conversion=("converted", "mean"),
        won_revenue=("won_revenue", "sum"),
    )
    return table.reset_index().assign(as_of=pd.Timestamp(run["as_of"]).date().isoformat())
