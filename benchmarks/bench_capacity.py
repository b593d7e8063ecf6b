"""Capacity within owners and intent-based elevation on the demo, against naive baselines.

Run after ``tiering demo`` (5,000 accounts, seed 7), from the folder it ran in:
``python -m benchmarks.bench_capacity [CONFIG]``. It reads the champion from the config's
MLflow registry and prints three tables:

1. Tier 1 per owner (min / median / max) at the end of the data: the global policy vs
   ``within = "owner"`` (25 Tier 1 seats per rep).
2. Won revenue captured by Tier 1 in the following H days, at past month-ends whose windows
   have closed (medians over the dates): the model's priority globally and within owners, and
   each naive account ranking filling the same seats (globally, and each owner's seats) among
   the accounts the gates admit.
3. The elevation backtest: at the same dates, accounts whose engagement in the last 30 days
   surged (``[elevation]`` defaults) among base Tier 2 / 3 accounts, filling 10 % of Tier 1's
   seats by z-score; their win rate and won revenue in the following 90 days and H days,
   against their base-tier peers that were not elevated.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from benchmarks._util import print_table

DATES = 6
ELEVATION_WINDOW = 90


def main(config_path: str = "configs/demo.toml") -> None:
    from features.build import build_features, scoring_requests
    from features.contract import load_tables
    from serving.model_loader import champion_uri, load_model
    from tiering.capacity import assign_within, plan_capacity, reserved_seats
    from tiering.config import CapacityConfig, load_config
    from tiering.elevation import engagement_events, intent_signal, select_elevations
    from tiering.policy import tier_ceiling
    from tiering.store import open_store
    from training.evaluate import account_baselines, score_population
    from training.snapshots import horizon_labels

    config = load_config(config_path)
    registry = open_store(config.mlflow.tracking_uri)
    bundle = load_model(
        bundle_dir=None, model_uri=champion_uri(config.mlflow.registered_model), registry=registry
    ).bundle
    tables = load_tables(config.data).tables
    accounts = tables.accounts.drop_duplicates("account_id")
    owner_of = accounts.set_index(accounts["account_id"].astype(str))["owner"]
    end = tables.end_of_data()
    horizon = bundle.horizon_days
    cap = CapacityConfig(within="owner")
    policy = bundle.policy

    # 1. Tier 1 per owner at the end of the data.
    feats = build_features(tables, scoring_requests(tables.accounts, end), config.features)
    scored = score_population(bundle, feats, end)
    owners = owner_of.reindex(scored["account_id"].astype(str)).to_numpy()
    plan = plan_capacity(owners, None, cap, policy)
    assert plan is not None
    prio, fit, evid = (scored[c].to_numpy(dtype=float) for c in ("priority", "icp_fit", "evidence"))
    within = assign_within(prio, fit, evid, policy, plan).assignment.tier

    territory_of = accounts.set_index(accounts["account_id"].astype(str))["territory"]
    territories = territory_of.reindex(scored["account_id"].astype(str)).to_numpy()
    by_territory = plan_capacity(owners, territories, CapacityConfig(within="territory"), policy)
    assert by_territory is not None
    within_territory = assign_within(prio, fit, evid, policy, by_territory).assignment.tier

    def spread(tier: np.ndarray, keys: np.ndarray) -> list[str]:
        t1 = pd.Series(tier == 1).groupby(keys).sum()
        return [
            f"{int(t1.min())}",
            f"{float(t1.median()):g}",
            f"{int(t1.max())}",
            f"{int(t1.sum()):,}",
        ]

    rows = []
    for name, tier in (
        ("global (quantile 20 %)", scored["tier"].to_numpy()),
        ("within owner (25 per rep)", within),
        ("within territory (quantile 20 %)", within_territory),
    ):
        rows.append([name, "per owner", *spread(tier, owners)])
        rows.append([name, "per territory", *spread(tier, territories)])
    print_table(
        f"Tier 1 per owner and territory, demo as of {end.date()}: {len(scored):,} accounts, "
        f"{len(set(owners)):,} owners, {len(set(territories)):,} territories",
        ["policy", "group", "min", "median", "max", "Tier 1 total"],
        rows,
    )

    # 2 and 3. Past month-ends whose H-day windows have closed.
    last = (end - pd.Timedelta(days=horizon)).to_period("M").to_timestamp("M")
    dates = [last - pd.offsets.MonthEnd(i) for i in range(DATES)][::-1]
    events = engagement_events(tables.activities, None, config.elevation)
    capture_rows: dict[str, list[float]] = {}
    elev_rows: list[dict[str, float]] = []
    for when in dates:
        requests = scoring_requests(tables.accounts, when)
        rows = build_features(tables, requests, config.features)
        s = score_population(bundle, rows, when)
        ids = s["account_id"].astype(str)
        req = pd.DataFrame({"account_id": ids.to_numpy(), "as_of": when})
        label_h = horizon_labels(tables.opportunities, req, horizon)
        label_w = horizon_labels(tables.opportunities, req, ELEVATION_WINDOW)
        revenue = label_h["revenue"].to_numpy(dtype=float)
        own = owner_of.reindex(ids).to_numpy()
        p = plan_capacity(own, None, cap, policy)
        assert p is not None
        fit_, evid_ = s["icp_fit"].to_numpy(dtype=float), s["evidence"].to_numpy(dtype=float)
        ceiling = tier_ceiling(fit_, evid_, policy)
        rankings = {"model: priority": s["priority"].to_numpy(dtype=float)}
        base = {
            k: v
            for k, v in account_baselines(rows, _NoSegment()).items()
            if k != "segment conversion rate"
        }
        rankings.update({f"naive: {k}": v for k, v in base.items()})
        n1 = int((s["tier"] == 1).sum())
        total = revenue.sum()
        for name, score in rankings.items():
            score = np.where(np.isfinite(score), score, -1e300)
            # Global: the same seats among the gate-admitted accounts.
            order = np.argsort(-score, kind="stable")
            admitted = order[ceiling[order] == 1][:n1]
            capture_rows.setdefault(f"{name} | global", []).append(revenue[admitted].sum() / total)
            # Within owner: each owner's seats filled by this ranking (percentile keeps ties).
            pct = pd.Series(score).rank(pct=True, method="first").to_numpy()
            tiers = assign_within(pct, fit_, evid_, policy, p).assignment.tier
            capture_rows.setdefault(f"{name} | within owner", []).append(
                revenue[tiers == 1].sum() / total
            )
        # Elevation on the global policy's base tiers, 10 % of Tier 1's seats.
        sig = intent_signal(events, ids, when, config.elevation)
        seats = reserved_seats(n1, config.elevation.reserved_share)
        base_tier = s["tier"].to_numpy()
        chosen = select_elevations(
            sig,
            base_tier,
            np.full(len(ids), "all", object),
            {"all": seats},
            when,
            config.elevation,
        )
        picked = np.isin(ids.to_numpy(), [e.account_id for e in chosen])
        for level in (2, 3):
            el = picked & (base_tier == level)
            peers = ~picked & (base_tier == level)
            elev_rows.append(
                {
                    "date": when.value,
                    "base": level,
                    "elevated": int(el.sum()),
                    "peers": int(peers.sum()),
                    "win_w_el": float(label_w["converted"].to_numpy()[el].mean())
                    if el.any()
                    else np.nan,
                    "win_w_peer": float(label_w["converted"].to_numpy()[peers].mean()),
                    "rev_w_el": float(label_w["revenue"].to_numpy()[el].mean())
                    if el.any()
                    else np.nan,
                    "rev_w_peer": float(label_w["revenue"].to_numpy()[peers].mean()),
                    "win_h_el": float(label_h["converted"].to_numpy()[el].mean())
                    if el.any()
                    else np.nan,
                    "win_h_peer": float(label_h["converted"].to_numpy()[peers].mean()),
                    "rev_h_el": float(revenue[el].mean()) if el.any() else np.nan,
                    "rev_h_peer": float(revenue[peers].mean()),
                }
            )
        print(
            f"  {when.date()}: Tier 1 {n1}, elevated {int(picked.sum())} of {seats} reserved seats"
        )
    print_table(
        f"Won revenue in the following {horizon} days captured by Tier 1 (median over "
        f"{len(dates)} month-ends {dates[0].date()} .. {dates[-1].date()})",
        ["ranking", "seats", "captured (median)", "min", "max"],
        [
            [*name.split(" | "), f"{np.median(v):.1%}", f"{np.min(v):.1%}", f"{np.max(v):.1%}"]
            for name, v in capture_rows.items()
        ],
    )
    e = pd.DataFrame(elev_rows)
    out = []
    for level, g in e.groupby("base"):
        n = g["elevated"].sum()
        w = g["elevated"].to_numpy()
        pw = g["peers"].to_numpy()

        def pooled(col: str, weights: np.ndarray, g: pd.DataFrame = g) -> float:
            return _pooled(g[col].to_numpy(dtype=float), weights)

        out.append(
            [
                f"base Tier {level}",
                f"{int(n):,}",
                f"{pooled('win_w_el', w):.1%} vs {pooled('win_w_peer', pw):.1%}",
                f"${pooled('rev_w_el', w):,.0f} vs ${pooled('rev_w_peer', pw):,.0f}",
                f"{pooled('win_h_el', w):.1%} vs {pooled('win_h_peer', pw):.1%}",
                f"${pooled('rev_h_el', w):,.0f} vs ${pooled('rev_h_peer', pw):,.0f}",
            ]
        )
    print_table(
        f"Elevation backtest (z >= {config.elevation.min_z:g}, recent >= "
        f"{config.elevation.min_recent:g} in {config.elevation.window_days} days), pooled "
        "over the dates",
        [
            "accounts",
            "elevated",
            f"win {ELEVATION_WINDOW}d: elevated vs peers",
            f"revenue {ELEVATION_WINDOW}d (mean)",
            f"win {horizon}d",
            f"revenue {horizon}d (mean)",
        ],
        out,
    )


def _pooled(values: np.ndarray, weights: np.ndarray) -> float:
    """Weighted mean over the dates (each date's mean weighted by its accounts)."""
    ok = np.isfinite(values) & (weights > 0)
    return float((values[ok] * weights[ok]).sum() / weights[ok].sum()) if ok.any() else np.nan


class _NoSegment:
    """The segment-rate baseline needs a fitted segment model; the others need none."""

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        return np.zeros(len(features))


if __name__ == "__main__":
    main(*sys.argv[1:2])
