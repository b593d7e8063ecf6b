"""The rep pages' list queries on a tier history of 100,000 accounts (SQLite): one page of 50,
filtered, sorted and deep in the list, and the manager view's per-rep GROUP BY. The naive
way beside them: read the whole run into pandas and page there."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks._util import median_time, peak_rss_mib, print_table
from serving.history import HistoryStore, RunRecord

N_ACCOUNTS = 100_000


def _history(folder: Path, n: int) -> HistoryStore:
    rng = np.random.default_rng(7)
    store = HistoryStore(f"sqlite:///{folder / 'history.db'}")
    tiers = rng.choice([1, 2, 3], size=n, p=[0.2, 0.6, 0.2])
    p = rng.beta(1, 20, size=n)
    revenue = rng.lognormal(10, 1, size=n)
    rows = pd.DataFrame(
        {
            "account_id": [f"A-{i:07d}" for i in range(n)],
            "tier": tiers,
            "base_tier": tiers,
            "previous_tier": np.where(rng.random(n) < 0.9, tiers, np.minimum(tiers + 1, 3)),
            "ceiling": 1,
            "priority": rng.random(n),
            "owner": [f"Rep {i % 400:03d}" for i in range(n)],
            "territory": [f"T{i % 12}" for i in range(n)],
            "reason_summary": "Tier 2 — likely to buy in the next 6 months: 4 %",
            "figures": [
                {"p_convert": float(a), "expected_revenue": float(a * b), "icp_fit": 66.7}
                for a, b in zip(p, revenue, strict=True)
            ],
        }
    )
    store.record_run(
        RunRecord(as_of=pd.Timestamp("2026-06-30"), model_version="1", review=True, n_accounts=n),
        rows,
    )
    return store


def main() -> None:
    from serving.ui.queries import AccountFilter, account_page, latest_run, rep_loads

    with tempfile.TemporaryDirectory() as tmp:
        store = _history(Path(tmp), N_ACCOUNTS)
        run = latest_run(store)
        assert run is not None
        cases = {
            "page 1, by tier": AccountFilter(),
            "page 1, by expected revenue": AccountFilter(sort="expected_revenue", descending=True),
            "one rep, Tier 1": AccountFilter(owner="Rep 007", tier=1),
            "page 1,000, by P(convert)": AccountFilter(sort="p_convert", page=1000),
            "search 'A-00123'": AccountFilter(search="A-00123"),
        }
        rows = []
        for label, wanted in cases.items():
            seconds, page = median_time(lambda w=wanted: account_page(store, w), repeat=5)
            rows.append([label, f"{page.total:,}", len(page.rows), seconds * 1000])
        seconds, loads = median_time(lambda: rep_loads(store, run.run_id), repeat=3)
        rows.append(["manager view: per-rep counts", f"{N_ACCOUNTS:,}", len(loads), seconds * 1000])
        naive, _ = median_time(
            lambda: store.rows(run_id=run.run_id).sort_values("priority").head(50),
            repeat=3,
        )
        rows.append(["naive: whole run into pandas", f"{N_ACCOUNTS:,}", 50, naive * 1000])
        print_table(
            f"Rep pages on {N_ACCOUNTS:,} accounts (SQLite; median ms; peak RSS {peak_rss_mib():,.0f} MiB)",
            ["query", "matching", "rows shown", "ms"],
            rows,
        )


if __name__ == "__main__":
    main()
