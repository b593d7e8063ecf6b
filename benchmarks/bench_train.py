"""Training time on the demo's account snapshots and on 10x and 100x as many, and the share of it that
LightGBM's own ``lgb.train`` takes (the rest: encoding, calibration cross-validation, the value
model's comparison, the deal-win model is left out here, the baselines).

The bigger sizes resample the demo's snapshot feature matrix (train and calibration slices
separately, with replacement), so the models face the same signal at 10x / 100x the rows. Each
size runs in a fresh process (its own peak memory) under a time budget; a size that exceeds it
is reported as such instead of stalling the run. Medians of 3 runs at 1x, single runs above.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightgbm as lgb
import pandas as pd

from benchmarks._util import peak_rss_mib, print_table

SIZES = (1, 10, 100)
BUDGET_S = float(os.environ.get("BENCH_TRAIN_BUDGET_S", "300"))


def prepare(folder: Path) -> dict[str, Any]:
    """Demo CRM -> account snapshots split in time; written as Parquet for the measuring processes."""
    from demo import write_demo
    from features.build import (
        build_features,
        categorical_columns,
        feature_columns,
    )
    from features.contract import load_tables
    from tiering.config import load_config
    from training.snapshots import (
        horizon_labels,
        labelled_dates,
        snapshot_requests,
        split_snapshots,
    )

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.toml")
    demo = folder / "demo"
    write_demo(demo, n_accounts=5000, seed=7)
    sources = {
        t: getattr(config.data, t).model_copy(update={"path": demo / f"{t}.csv"})
        for t in config.data.sources()
    }
    tables = load_tables(config.data.model_copy(update=sources)).tables
    horizon = config.training.horizon_days
    dates = labelled_dates(
        tables.opportunities, tables.end_of_data(), horizon, config.training.snapshot_warmup_days
    )
    requests = snapshot_requests(tables.accounts["account_id"].astype(str), dates)
    features = build_features(tables, requests, config.features)
    names, categorical = feature_columns(features), categorical_columns(features, config.features)
    data = features.join(horizon_labels(tables.opportunities, requests, horizon))
    split = split_snapshots(data, dates, config.training.split, horizon)
    split.train.to_parquet(folder / "train.parquet")
    split.calibration.to_parquet(folder / "calibration.parquet")
    meta = {
        "names": names,
        "categorical": categorical,
        "training": config.training.model_dump(mode="json"),
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return meta


def measure(folder: Path, size: int, repeat: int) -> dict[str, Any]:
    """Fit everything ``repeat`` times on the size-x resampled slices (in this process)."""
    from tiering.config import TrainingConfig
    from training.fit import fit_models

    meta = json.loads((folder / "meta.json").read_text())
    config = TrainingConfig.model_validate(meta["training"])
    train = pd.read_parquet(folder / "train.parquet")
    cal = pd.read_parquet(folder / "calibration.parquet")
    if size > 1:
        train = train.sample(n=len(train) * size, replace=True, random_state=size).reset_index(
            drop=True
        )
        cal = cal.sample(n=len(cal) * size, replace=True, random_state=size + 1).reset_index(
            drop=True
        )

    lgb_seconds = 0.0
    original = lgb.train

    def timed_train(*args: Any, **kwargs: Any) -> lgb.Booster:
        nonlocal lgb_seconds
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            lgb_seconds += time.perf_counter() - start

    totals, shares, trees = [], [], 0
    lgb.train = timed_train  # training.fit calls lgb.train through the module
    try:
        for _ in range(repeat):
            lgb_seconds = 0.0
            start = time.perf_counter()
            models = fit_models(train, cal, meta["names"], meta["categorical"], config)
            total = time.perf_counter() - start
            totals.append(total)
            shares.append(lgb_seconds / total)
            trees = (
                models.conversion.booster.current_iteration() if models.conversion.booster else 0
            )
    finally:
        lgb.train = original
    order = sorted(range(repeat), key=lambda i: totals[i])
    mid = order[len(order) // 2]
    return {
        "deals": len(train) + len(cal),
        "seconds": totals[mid],
        "lgb_share": shares[mid],
        "win_trees": trees,
        "peak_mib": peak_rss_mib(),
    }


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        prepare(folder)
        print(f"demo features prepared in {time.perf_counter() - start:.0f} s")
        base = None
        for size in SIZES:
            repeat = 3 if size == 1 else 1
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.bench_train",
                str(folder),
                str(size),
                str(repeat),
            ]
            try:
                out = subprocess.run(
                    cmd, check=True, capture_output=True, text=True, timeout=BUDGET_S
                ).stdout
            except subprocess.TimeoutExpired:
                rows.append([f"{size}x", "-", f"> {BUDGET_S:.0f} (budget)", "-", "-", "-", "-"])
                continue
            result = json.loads(out.strip().splitlines()[-1])
            base = base or result["seconds"]
            rows.append(
                [
                    f"{size}x",
                    f"{result['deals']:,}",
                    result["seconds"],
                    result["seconds"] / base,
                    f"{result['lgb_share']:.0%}",
                    result["win_trees"],
                    f"{result['peak_mib']:,.0f}",
                ]
            )
    print_table(
        "Training time (fit_models: win + calibration + value models + baselines)",
        [
            "deals",
            "train+calibration deals",
            "seconds (median)",
            "vs 1x",
            "lgb.train share",
            "win trees",
            "peak MiB",
        ],
        rows,
    )


if __name__ == "__main__":
    if len(sys.argv) == 4:
        folder_arg, size_arg, repeat_arg = sys.argv[1:]
        print(json.dumps(measure(Path(folder_arg), int(size_arg), int(repeat_arg))))
    else:
        main()
