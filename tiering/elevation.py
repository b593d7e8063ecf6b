"""Intent-based temporary elevation: an account whose engagement or intent in the last
``window_days`` rose far above its own history gets Tier 1 treatment for ``elevated_days``.
Pure functions of DataFrames; the history store keeps when each elevation started.

The signal
    Engagement of an account in a window = the counts of its activities (of ``types``, all by
    default) + the strengths of its intent signals (the optional intent-signal table:
    account_id, date, topic, strength). The last ``window_days`` before the as-of date are set
    against the ``history_windows`` windows of the same length before them:
    ``z = (recent - mean) / sqrt(max(variance, mean, 1))`` (a Poisson-like floor, so an
    account going from 0 to 2 visits is no "surge"). An account is a candidate when
    ``z >= min_z`` and ``recent >= min_recent``. The reason names the z-score, the counts and
    the topic seen most in the window.

Seats
    Elevations use the Tier 1 seats ``reserved_share`` keeps back from the policy in each
    owner's or territory's group (all of Tier 1 under the global policy): within a group the
    strongest signals (highest z) take the free reserved seats; an elevation still running
    holds its seat until it ends. Only accounts whose base tier is 2 or 3 are elevated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tiering.config import ElevationConfig

SIGNAL_COLUMNS = ["account_id", "recent", "mean", "z", "topic"]


def engagement_events(
    activities: pd.DataFrame | None,
    intent: pd.DataFrame | None,
    config: ElevationConfig,
) -> pd.DataFrame:
    """One frame of (account_id, when, weight, topic) from the activity table (counts) and
    the intent-signal table (strengths)."""
    parts = []
    if activities is not None and len(activities):
        acts = activities
        if config.activity_types:
            acts = acts[acts["type"].astype(str).isin(config.activity_types)]
        parts.append(
            pd.DataFrame(
                {
                    "account_id": acts["account_id"].astype(str).to_numpy(),
                    "when": pd.to_datetime(acts["occurred_at"]).to_numpy(),
                    "weight": pd.to_numeric(acts["count"], errors="coerce")
                    .fillna(1.0)
                    .to_numpy(dtype=float)
                    if "count" in acts
                    else np.ones(len(acts)),
                    "topic": acts["topic"].to_numpy(dtype=object)
                    if "topic" in acts
                    else np.full(len(acts), None, dtype=object),
                }
            )
        )
    if intent is not None and len(intent):
        parts.append(
            pd.DataFrame(
                {
                    "account_id": intent["account_id"].astype(str).to_numpy(),
                    "when": pd.to_datetime(intent["date"]).to_numpy(),
                    "weight": pd.to_numeric(intent["strength"], errors="coerce")
                    .fillna(0.0)
                    .to_numpy(dtype=float)
                    * config.intent_weight,
                    "topic": intent["topic"].to_numpy(dtype=object)
                    if "topic" in intent
                    else np.full(len(intent), None, dtype=object),
                }
            )
        )
    if not parts:
        return pd.DataFrame(columns=["account_id", "when", "weight", "topic"])
    return pd.concat(parts, ignore_index=True)


def intent_signal(
    events: pd.DataFrame, account_ids: pd.Series, as_of: pd.Timestamp, config: ElevationConfig
) -> pd.DataFrame:
    """Per account (same order as ``account_ids``): recent engagement, its own historical mean
    per window, the z-score and the top topic of the recent window. Only events before
    ``as_of`` count (point in time)."""
    as_of = pd.Timestamp(as_of).normalize()
    w = pd.Timedelta(days=config.window_days)
    k = config.history_windows
    start = as_of - w * (k + 1)
    ids = pd.Index(account_ids.astype(str))
    ev = events[(events["when"] < as_of) & (events["when"] >= start)]
    slot = ((as_of - pd.to_datetime(ev["when"])) // w).astype(int)  # 0 = the recent window
    table = (
        pd.DataFrame(
            {
                "account_id": ev["account_id"].to_numpy(),
                "slot": slot.to_numpy(),
                "weight": ev["weight"].to_numpy(),
            }
        )
        .groupby(["account_id", "slot"])["weight"]
        .sum()
        .unstack(fill_value=0)
        .reindex(index=ids, columns=range(k + 1), fill_value=0.0)
        .fillna(0.0)
    )
    recent = table[0].to_numpy(dtype=float)
    past = table[list(range(1, k + 1))].to_numpy(dtype=float)
    mean = past.mean(axis=1)
    var = past.var(axis=1)
    z = (recent - mean) / np.sqrt(np.maximum(np.maximum(var, mean), 1.0))
    recent_ev = ev[slot.to_numpy() == 0]
    topics = recent_ev.dropna(subset=["topic"])
    top = (
        topics.groupby(["account_id", "topic"])["weight"]
        .sum()
        .reset_index()
        .sort_values(["account_id", "weight", "topic"], ascending=[True, False, True])
        .drop_duplicates("account_id")
        .set_index("account_id")["topic"]
        if len(topics)
        else pd.Series(dtype=object)
    )
    return pd.DataFrame(
        {
            "account_id": ids.to_numpy(),
            "recent": recent,
            "mean": mean,
            "z": z,
            "topic": top.reindex(ids).to_numpy(dtype=object),
        }
    )


def signal_text(row: Mapping[str, object], config: ElevationConfig) -> str:
    topic = row.get("topic")
    about = f" on '{topic}'" if isinstance(topic, str) and topic else ""
    return (
        f"intent surge{about}: engagement {float(row['recent']):.0f} in the last "  # type: ignore[arg-type]
        f"{config.window_days} days vs {float(row['mean']):.1f} usual "  # type: ignore[arg-type]
        f"(z = {float(row['z']):.1f})"  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class Elevation:
    account_id: str
    started_on: pd.Timestamp
    until: pd.Timestamp
    base_tier: int
    signal: str
    score: float

    def describe(self) -> str:
        return (
            f"elevated to Tier 1 until {self.until.date().isoformat()} (base Tier "
            f"{self.base_tier}): {self.signal}"
        )


def select_elevations(
    signal: pd.DataFrame,
    base_tier: np.ndarray,
    group: np.ndarray,
    free_seats: Mapping[str, int],
    as_of: pd.Timestamp,
    config: ElevationConfig,
    *,
    running: set[str] | frozenset[str] = frozenset(),
) -> list[Elevation]:
    """New elevations: per group, the strongest candidates (base tier 2 or 3, ``z >=
    min_z``, ``recent >= min_recent``, not already elevated) up to its free reserved seats.
    Ties in z go to the input order."""
    z = signal["z"].to_numpy(dtype=float)
    recent = signal["recent"].to_numpy(dtype=float)
    ids = signal["account_id"].astype(str).to_numpy()
    candidate = (
        (base_tier >= 2)
        & (z >= config.min_z)
        & (recent >= config.min_recent)
        & ~np.isin(ids, list(running))
    )
    out: list[Elevation] = []
    until = pd.Timestamp(as_of).normalize() + pd.Timedelta(days=config.elevated_days)
    for key, seats in free_seats.items():
        if seats <= 0:
            continue
        idx = np.flatnonzero(candidate & (group == key))
        order = idx[np.lexsort((np.arange(idx.size), -z[idx]))][:seats]
        for i in order:
            row = signal.iloc[i]
            out.append(
                Elevation(
                    account_id=str(ids[i]),
                    started_on=pd.Timestamp(as_of).normalize(),
                    until=until,
                    base_tier=int(base_tier[i]),
                    signal=signal_text(row.to_dict(), config),
                    score=float(z[i]),
                )
            )
    return out
