"""Exact reasons: the compiled TreeSHAP kernel (``tiering.treeshap``) against LightGBM's own
``pred_contrib`` on the project's models and the same rows, one thread each.

Setup (not timed): a 3,000-account demo CRM, trained with the demo config's training settings
(the models ``make demo`` deploys), its account snapshot resampled to ``BENCH_EXPLAIN_ROWS``
feature rows (default 100,000).

Each repeat times ``pred_contrib`` and ours back to back on the same rows, so a neighbour's
load on a shared machine hits both alike; the ratio is the median of the per-repeat ratios.
The largest absolute difference from ``pred_contrib`` over every row and column is printed
beside it (the tests hold it under 1e-5).

Environment variables:
    BENCH_EXPLAIN_ROWS     rows explained per repeat (default 100000)
    BENCH_EXPLAIN_REPEATS  repeats (default 3)
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._util import demo_config, print_table

N_DEMO_ACCOUNTS = 3_000
N_ROWS = int(os.environ.get("BENCH_EXPLAIN_ROWS", "100000"))
REPEATS = int(os.environ.get("BENCH_EXPLAIN_REPEATS", "3"))


def trained_bundle(root: Path) -> tuple[Any, pd.DataFrame]:
    """The demo config's models on a 3,000-account demo, and the accounts' feature rows."""
    from demo import write_demo
    from features.build import build_features, scoring_requests
    from features.contract import load_tables
    from training.pipeline import fit_and_evaluate

    paths = write_demo(root / "data", n_accounts=N_DEMO_ACCOUNTS, seed=11, dirt_rate=0.02)
    config = demo_config(root, paths)
    bundle = fit_and_evaluate(config).bundle
    tables = load_tables(config.data).tables
    requests = scoring_requests(tables.accounts, tables.end_of_data())
    return bundle, build_features(tables, requests, config.features)


def resample(features: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = features.iloc[rng.integers(0, len(features), n)].reset_index(drop=True)
    rows["account_id"] = [f"S-{i:07d}" for i in range(n)]
    return rows


def model_shape(booster: Any) -> str:
    from tiering.treeshap import compile_booster

    dump = booster.dump_model()
    trees = dump["tree_info"]
    leaves = [t["num_leaves"] for t in trees]
    categorical = sum('"=="' in str(t) or "'=='" in str(t) for t in trees)
    compiled = compile_booster(booster)
    depth = "" if compiled is None else f", {compiled.mean_path_features:.1f} features/path"
    return (
        f"{len(trees)} trees, {np.mean(leaves):.0f} leaves avg{depth}, "
        f"{categorical} with categorical splits"
    )


def explainer_rows(bundle: Any, rows: pd.DataFrame) -> list[list[Any]]:
    from tiering.treeshap import compile_booster

    matrix = np.ascontiguousarray(bundle.model_matrix(rows), dtype=np.float64)
    out: list[list[Any]] = []
    # The two models whose contributions become the reasons.
    for name in ("conversion", "revenue"):
        booster = bundle.models[name].booster
        if booster is None:
            continue
        start = time.perf_counter()
        compiled = compile_booster(booster)
        compile_s = time.perf_counter() - start
        if compiled is None:
            out.append([name, model_shape(booster), "", "", "", "pred_contrib fallback", ""])
            continue
        compiled.contributions(matrix[:10])  # the kernel's one-off compilation
        t_lgb, t_ours, ratios = [], [], []
        diff = 0.0
        for _ in range(REPEATS):
            start = time.perf_counter()
            ref = booster.predict(matrix, pred_contrib=True, num_threads=1)
            t_lgb.append(time.perf_counter() - start)
            start = time.perf_counter()
            ours = compiled.contributions(matrix)
            t_ours.append(time.perf_counter() - start)
            ratios.append(t_lgb[-1] / t_ours[-1])
            diff = max(diff, float(np.abs(ours - ref).max()))
        out.append(
            [
                name,
                model_shape(booster),
                len(matrix) / float(np.median(t_lgb)),
                len(matrix) / float(np.median(t_ours)),
                float(np.median(ratios)),
                f"{diff:.1e}",
                f"{compile_s:.2f}",
            ]
        )
    return out


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-explain-") as tmp:
        bundle, features = trained_bundle(Path(tmp))
        rows = resample(features, N_ROWS)
        load = os.getloadavg()[0]
        print_table(
            f"Exact TreeSHAP, {N_ROWS:,} rows, one thread: tiering.treeshap vs "
            f"LightGBM pred_contrib (medians of {REPEATS}, side by side; load average "
            f"{load:.1f} at start)",
            [
                "model",
                "shape",
                "pred_contrib rows/s",
                "tiering.treeshap rows/s",
                "ratio",
                "max |diff|",
                "compile s",
            ],
            explainer_rows(bundle, rows),
        )


if __name__ == "__main__":
    main()
