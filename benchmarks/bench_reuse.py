"""Reasons reused from the tier history: a batch run of an unchanged account list whose SHAP
values the history kept, against the same run with ``[history] reuse_reasons = false``
(``tiering score --fresh-reasons``: TreeSHAP for every account), and against a run without a
history at all (no fingerprints, nothing stored).

Setup (not timed): a 3,000-account demo trained with the demo config's settings, then a demo
CRM of ``BENCH_REUSE_ACCOUNTS`` accounts (default 30,000) written to a temporary folder, with
a SQLite history beside it, and one run to fill the history. The timed runs are whole
``score_accounts`` calls on the same date (features, predictions, tiers, reasons, the three
output files and the history transaction), interleaved round by round so that a neighbour's
load on a shared machine hits them alike; the figures are medians over the rounds. Each run
is also split at its progress reports: building the features; ranking, tiers and reasons
(where TreeSHAP runs, and the scores files are written); the snapshot and the history
transaction.

Environment variables:
    BENCH_REUSE_ACCOUNTS  accounts in the scored list (default 30000)
    BENCH_REUSE_ROUNDS    rounds of the three runs (default 3)
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._util import demo_config, print_table

N_ACCOUNTS = int(os.environ.get("BENCH_REUSE_ACCOUNTS", "30000"))
ROUNDS = int(os.environ.get("BENCH_REUSE_ROUNDS", "3"))


def _with_history(config: Any, url: str, *, enabled: bool, reuse: bool) -> Any:
    history = config.history.model_copy(
        update={"url": url, "enabled": enabled, "reuse_reasons": reuse}
    )
    return config.model_copy(update={"history": history})


class Phases:
    """Seconds spent in each stage of one run, from its progress reports."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.last: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        # Only "write" counts files; a stage ends at its last report.
        self.last[stage if stage != "write" or done < 3 else "end"] = time.perf_counter()

    def split(self) -> tuple[float, float, float]:
        features, scored = self.last["features"], self.last["write"]
        return features - self.start, scored - features, self.last["end"] - scored


def main() -> None:
    from benchmarks.bench_explain import trained_bundle
    from demo import write_demo
    from serving.batch import score_accounts
    from serving.tier_changes import open_history

    with tempfile.TemporaryDirectory(prefix="bench-reuse-") as tmp:
        root = Path(tmp)
        bundle, _ = trained_bundle(root / "train")
        paths = write_demo(root / "list" / "data", n_accounts=N_ACCOUNTS, seed=3, dirt_rate=0.0)
        base = demo_config(root / "list", paths)
        url = f"sqlite:///{root / 'history.db'}"
        runs = {
            "reused": _with_history(base, url, enabled=True, reuse=True),
            "fresh": _with_history(base, url, enabled=True, reuse=False),
            "no history": _with_history(base, url, enabled=False, reuse=False),
        }
        history_config = runs["fresh"]
        # Fills the history: the first "reused" round then finds every account's values.
        score_accounts(history_config, bundle, out=root / "seed.parquet")

        seconds: dict[str, list[float]] = {name: [] for name in runs}
        phases: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runs}
        counts: dict[str, str] = {}
        load = os.getloadavg()[0]
        for _ in range(ROUNDS):
            for name, config in runs.items():
                progress = Phases()
                score_accounts(config, bundle, out=root / "tiers.parquet", progress=progress)
                seconds[name].append(time.perf_counter() - progress.start)
                phases[name].append(progress.split())
                if config.history.enabled:
                    run = open_history(config).runs().sort_values("created_at").iloc[-1]
                    counts[name] = (
                        f"{int(run['reasons_explained']):,} / {int(run['reasons_reused']):,}"
                    )
                else:
                    counts[name] = f"{N_ACCOUNTS:,} / -"

        fresh = statistics.median(seconds["fresh"])
        rows = [
            [
                name,
                counts[name],
                statistics.median(times),
                N_ACCOUNTS / statistics.median(times),
                f"{fresh / statistics.median(times):.2f}x",
                *(statistics.median(p[k] for p in phases[name]) for k in range(3)),
            ]
            for name, times in seconds.items()
        ]
        print_table(
            f"Batch run with reasons of {N_ACCOUNTS:,} unchanged demo accounts: SHAP values "
            f"reused from the tier history vs computed afresh (median of {ROUNDS} interleaved "
            f"rounds; load average {load:.1f} at start)",
            [
                "run",
                "explained / reused",
                "seconds",
                "accounts/s",
                "speed-up vs fresh",
                "of which features s",
                "tiers + reasons + scores files s",
                "snapshot + history s",
            ],
            rows,
        )


if __name__ == "__main__":
    main()
