"""Scale: one batch run of the whole account list in one process against the same run on a
Dask ``LocalCluster`` of two worker processes, with and without reasons, beside raw LightGBM
``predict`` / ``pred_contrib`` of the same rows; peak memory of the client and of each worker.

Setup (not timed): a 3,000-account demo trained with the demo config's settings, then a demo
CRM of ``BENCH_SCALE_ACCOUNTS`` accounts (default 1,000,000) written to a temporary folder and
scored with that bundle. The runs are timed one after another in the same process start, so
a neighbour's load on a shared machine hits them alike; the raw LightGBM figures are measured
on the first 50,000 accounts' feature rows and scaled to the list (rows/s).

Environment variables:
    BENCH_SCALE_ACCOUNTS  accounts in the scored list (default 1000000)
    BENCH_SCALE_PARTS     comma-separated subset of ``plain,reasons`` (default both)
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._util import demo_config, print_table

N_ACCOUNTS = int(os.environ.get("BENCH_SCALE_ACCOUNTS", "1000000"))
PARTS = [
    p.strip() for p in os.environ.get("BENCH_SCALE_PARTS", "plain,reasons").split(",") if p.strip()
]
N_RAW_ROWS = 50_000


def _peak_mib() -> float:
    """Peak resident memory of the calling process (a worker's, run there by ``client.run``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config_for(root: Path, n: int, seed: int) -> Any:
    from demo import write_demo

    paths = write_demo(root / "data", n_accounts=n, seed=seed, dirt_rate=0.0)
    return demo_config(root, paths)


def main() -> None:
    from distributed import Client, LocalCluster

    from benchmarks.bench_explain import trained_bundle
    from features.build import build_features, scoring_requests
    from features.contract import load_tables
    from serving.batch import score_accounts
    from serving.distributed import score_accounts_distributed

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        bundle, _ = trained_bundle(root / "train")
        start = time.perf_counter()
        config = _config_for(root / "list", N_ACCOUNTS, seed=3)
        history = config.history.model_copy(update={"enabled": False})
        config = config.model_copy(update={"history": history})
        generated = time.perf_counter() - start

        tables = load_tables(config.data).tables
        requests = scoring_requests(tables.accounts, tables.end_of_data()).iloc[:N_RAW_ROWS]
        matrix = bundle.model_matrix(build_features(tables, requests, config.features))
        del tables
        raw: dict[str, float] = {}
        for kind in ("raw_score", "pred_contrib"):
            start = time.perf_counter()
            for booster in (bundle.conversion.booster, bundle.revenue.booster):
                if booster is not None:
                    booster.predict(matrix, **{kind: True})
            raw[kind] = len(matrix) / (time.perf_counter() - start)

        rows: list[list[Any]] = []
        load = os.getloadavg()[0]
        for part in PARTS:
            reasons = part == "reasons"
            kind = "pred_contrib" if reasons else "raw_score"
            start = time.perf_counter()
            score_accounts(
                config,
                bundle,
                out=root / f"single-{part}.parquet",
                snapshot=root / "snap-single.parquet",
                reasons=reasons,
            )
            single = time.perf_counter() - start
            rows.append(
                [
                    "one process",
                    "yes" if reasons else "no",
                    f"{N_ACCOUNTS:,}",
                    single,
                    N_ACCOUNTS / single,
                    raw[kind],
                    f"{_peak_mib():,.0f} (process, setup included)",
                ]
            )
            with (
                LocalCluster(
                    n_workers=2,
                    threads_per_worker=1,
                    processes=True,
                    memory_limit="4GiB",
                    dashboard_address=None,
                ) as cluster,
                Client(cluster) as client,
            ):
                start = time.perf_counter()
                score_accounts_distributed(
                    config,
                    bundle,
                    client,
                    out=root / f"dask-{part}",
                    snapshot=root / "snap-dask.parquet",
                    reasons=reasons,
                )
                spread = time.perf_counter() - start
                peaks = client.run(_peak_mib)
            rows.append(
                [
                    "LocalCluster(2)",
                    "yes" if reasons else "no",
                    f"{N_ACCOUNTS:,}",
                    spread,
                    N_ACCOUNTS / spread,
                    raw[kind],
                    ", ".join(f"{v:,.0f}" for v in peaks.values())
                    + f" (workers); {_peak_mib():,.0f} (client)",
                ]
            )
        print_table(
            f"Batch scoring of {N_ACCOUNTS:,} demo accounts: one process vs a two-worker "
            f"LocalCluster (features + predictions + tiers [+ reasons] + writing; load average "
            f"{load:.1f} at start; demo data written in {generated:.0f} s, not timed)",
            [
                "run",
                "reasons",
                "accounts",
                "seconds",
                "accounts/s",
                "raw LightGBM rows/s (predict or pred_contrib, win + value, same rows)",
                "peak RSS MiB",
            ],
            rows,
        )
        print(f"raw rows/s on {len(matrix):,} rows: {np.round(list(raw.values()))}")


if __name__ == "__main__":
    main()
