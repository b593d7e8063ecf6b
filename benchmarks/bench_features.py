"""Point-in-time feature building: training (every closed deal as of its creation) and scoring
(every account as of one date), time and peak memory, each size in a fresh process.

The canonical tables are synthesised here with numpy (uniform dates over three years, a
skewed number of deals and activities per account), not with the demo generator, so that the
big sizes cost seconds to make and the measurement is of the feature builder alone.

Times are medians of three runs in the same process (requests included); peak memory is the
whole process's, input tables included ("MiB with input" is the peak before building).

``python -m benchmarks.bench_features`` runs the table; ``python -m benchmarks.bench_features
one KIND ACCOUNTS DEALS ACTIVITIES`` measures one case and prints its result as JSON.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd

from benchmarks._util import median_time, peak_rss_mib, print_table, run_isolated

START = np.datetime64("2023-01-01", "ns")
SPAN_DAYS = 3 * 365
DAY_NS = 86_400 * 10**9

REPEAT = 3
# (kind, accounts, deals (80 % of them closed), activity rows)
CASES = [
    ("train", 20_000, 25_000, 1_000_000),
    ("train", 50_000, 125_000, 5_000_000),
    ("score", 100_000, 100_000, 1_000_000),
    ("score", 1_000_000, 1_000_000, 5_000_000),
]


def synthesise(n_accounts: int, n_deals: int, n_activities: int, seed: int = 0):
    """Canonical tables of the given sizes (ids as strings, dtypes as the contract says)."""
    from features.tables import ACTIVITY_TYPES, Tables

    rng = np.random.default_rng(seed)
    ids = np.char.add("A-", np.arange(n_accounts).astype(str)).astype(object)
    industries = np.array(
        ["software", "fintech", "retail", "healthcare", "manufacturing"], dtype=object
    )
    regions = np.array(["na", "emea", "apac", "latam"], dtype=object)
    accounts = pd.DataFrame(
        {
            "account_id": ids,
            "industry": industries[rng.integers(0, len(industries), n_accounts)],
            "employees": np.round(rng.lognormal(5, 1.5, n_accounts)),
            "annual_revenue": rng.lognormal(16, 1.5, n_accounts),
            "region": regions[rng.integers(0, len(regions), n_accounts)],
            "country": regions[rng.integers(0, len(regions), n_accounts)],
            "founded_year": rng.integers(1950, 2022, n_accounts).astype(float),
            "tech_cloud": rng.random(n_accounts) < 0.5,
            "tech_crm": rng.random(n_accounts) < 0.4,
        }
    )
    # Skewed activity: a few accounts are busy, most are quiet.
    weight = rng.pareto(1.5, n_accounts) + 0.1
    weight /= weight.sum()

    deal_acc = rng.choice(n_accounts, n_deals, p=weight)
    created = START + (rng.random(n_deals) * SPAN_DAYS).astype(np.int64) * DAY_NS
    duration = (rng.gamma(2.0, 30.0, n_deals) + 1).astype(np.int64) * DAY_NS
    outcome = rng.choice(
        np.array(["won", "lost", "open"], dtype=object), n_deals, p=[0.3, 0.5, 0.2]
    )
    closed = np.where(outcome == "open", np.datetime64("NaT"), created + duration)
    opportunities = pd.DataFrame(
        {
            "opportunity_id": np.char.add("O-", np.arange(n_deals).astype(str)).astype(object),
            "account_id": ids[deal_acc],
            "created_at": created.astype("datetime64[ns]"),
            "closed_at": closed.astype("datetime64[ns]"),
            "outcome": outcome,
            "amount": np.where(outcome == "won", rng.lognormal(10, 1, n_deals), np.nan),
        }
    )
    types = np.array(ACTIVITY_TYPES, dtype=object)
    topics = np.array(["", "crm", "analytics", "security", "cloud"], dtype=object)
    act_type = rng.integers(0, len(types), n_activities)
    activities = pd.DataFrame(
        {
            "account_id": ids[rng.choice(n_accounts, n_activities, p=weight)],
            "occurred_at": (
                START + (rng.random(n_activities) * SPAN_DAYS * DAY_NS).astype(np.int64)
            ).astype("datetime64[ns]"),
            "type": types[act_type],
            "topic": np.where(
                types[act_type] == "intent_surge",
                topics[rng.integers(1, len(topics), n_activities)],
                "",
            ).astype(object),
            "count": rng.integers(1, 4, n_activities),
        }
    )
    return Tables(accounts, opportunities, activities)


def measure(kind: str, n_accounts: int, n_deals: int, n_activities: int) -> dict[str, float]:
    from features.build import build_features, scoring_requests, training_requests
    from features.config import FeatureConfig

    tables = synthesise(n_accounts, n_deals, n_activities)
    config = FeatureConfig(technographics=["tech_cloud", "tech_crm"])
    baseline = peak_rss_mib()

    def run() -> tuple[int, int]:
        if kind == "train":
            requests = training_requests(tables.opportunities)
        else:
            requests = scoring_requests(tables.accounts, tables.end_of_data())
        features = build_features(tables, requests, config)
        return len(requests), features.shape[1] - 2

    seconds, (n_requests, n_features) = median_time(run, repeat=REPEAT)
    return {
        "requests": n_requests,
        "features": n_features,
        "seconds": seconds,
        "peak_mib": peak_rss_mib(),
        "input_mib": baseline,
    }


def main() -> None:
    rows = []
    for kind, n_accounts, n_deals, n_activities in CASES:
        result = run_isolated(
            "benchmarks.bench_features",
            "one",
            kind,
            str(n_accounts),
            str(n_deals),
            str(n_activities),
        )
        rows.append(
            [
                kind,
                _short(result["requests"]),
                _short(n_accounts),
                _short(n_activities),
                result["features"],
                round(result["seconds"], 1),
                _short(result["requests"] / result["seconds"]),
                round(result["input_mib"]),
                round(result["peak_mib"]),
            ]
        )
    print_table(
        "Point-in-time feature building (train: closed deals as of creation; score: accounts as "
        "of one date)",
        [
            "case",
            "requests",
            "accounts",
            "activities",
            "features",
            "median s",
            "req/s",
            "MiB input",
            "MiB peak",
        ],
        rows,
    )


def _short(n: float) -> str:
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{suffix}"
    return f"{n:.0f}"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        kind, *sizes = sys.argv[2:]
        print(json.dumps(measure(kind, *map(int, sizes))))
    else:
        main()
