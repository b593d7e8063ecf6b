"""The conversion booster fitted on a LocalCluster(2) by ``tiering train --cluster``'s path
(``training.distributed.fit_on_cluster``: pilot, lightgbm.dask, early stopping after the fact)
beside the single-process fit every other training uses (``lgb.train`` with early stopping), on
the same rows: seconds, trees, and the calibration slice's log loss and ROC-AUC.

The rows are the demo's account snapshots (``bench_train.prepare``), resampled to
``BENCH_DASK_TRAIN_SIZES`` times as many (default ``1,10``). The cluster fit's pilot sample is a
quarter of the training rows (``[training] cluster_pilot_rows``; the default of 200,000 would
leave the smaller sets in process). Each fit runs ``BENCH_DASK_TRAIN_REPEATS`` times (default
3), alternating, and the table shows medians; the cluster is started before the clock.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

from benchmarks._util import print_table

SIZES = tuple(int(s) for s in os.environ.get("BENCH_DASK_TRAIN_SIZES", "1,10").split(","))
REPEATS = int(os.environ.get("BENCH_DASK_TRAIN_REPEATS", "3"))


def _slices(folder: Path, size: int) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]:
    from tiering.bundle import encode_features
    from training.fit import freeze_categories

    meta = json.loads((folder / "meta.json").read_text())
    train = pd.read_parquet(folder / "train.parquet")
    cal = pd.read_parquet(folder / "calibration.parquet")
    if size > 1:
        train = train.sample(n=len(train) * size, replace=True, random_state=size)
        cal = cal.sample(n=len(cal) * size, replace=True, random_state=size + 1)
    names = meta["names"]
    categories = freeze_categories(train, [c for c in meta["categorical"] if c in names])
    x_train = encode_features(train.reset_index(drop=True), names, categories)
    x_cal = encode_features(cal.reset_index(drop=True), names, categories)
    return (
        x_train,
        train["converted"].to_numpy(dtype=int),
        x_cal,
        cal["converted"].to_numpy(dtype=int),
    )


def _scores(y: np.ndarray, booster: Any, x: pd.DataFrame) -> tuple[float, float]:
    p = np.clip(np.asarray(booster.predict(x), dtype=float), 1e-15, 1 - 1e-15)
    return float(log_loss(y, p)), float(roc_auc_score(y, p))


def main() -> None:
    from benchmarks.bench_train import prepare
    from tiering.cluster import connect
    from tiering.config import TrainingConfig
    from training.distributed import fit_on_cluster
    from training.fit import _train_booster, lgb_params

    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-dask-train-") as tmp,
        connect("local:2") as client,
    ):
        folder = Path(tmp)
        meta = prepare(folder)
        demo = TrainingConfig.model_validate(meta["training"])
        for size in SIZES:
            x_train, y_train, x_cal, y_cal = _slices(folder, size)
            config = demo.model_copy(
                update={"n_jobs": 2, "cluster_pilot_rows": max(1, len(x_train) // 4)}
            )
            params = lgb_params(config, "binary", metric="binary_logloss")
            runs: dict[str, list[tuple[float, Any]]] = {"in process": [], "cluster": []}
            for _ in range(REPEATS):
                start = time.perf_counter()
                booster = _train_booster(params, x_train, y_train, x_cal, y_cal, config)
                runs["in process"].append((time.perf_counter() - start, booster))
                start = time.perf_counter()
                fit = fit_on_cluster(client, params, x_train, y_train, x_cal, y_cal, config)
                runs["cluster"].append((time.perf_counter() - start, fit.booster))
            single = statistics.median(s for s, _ in runs["in process"])
            for name, label in (
                ("in process", "lgb.train, 2 threads, early stopping"),
                ("cluster", "pilot + lightgbm.dask on LocalCluster(2) + early stopping after"),
            ):
                seconds = statistics.median(s for s, _ in runs[name])
                booster = runs[name][-1][1]
                loss, auc = _scores(y_cal, booster, x_cal)
                rows.append(
                    [
                        f"{size}x ({len(x_train):,} rows)",
                        label,
                        seconds,
                        single / seconds,
                        booster.current_iteration(),
                        f"{loss:.4f}",
                        f"{auc:.4f}",
                    ]
                )
    print_table(
        "Conversion booster fitted on Dask beside the single-process fit, on the demo's "
        f"snapshots; medians of {REPEATS} (load average {os.getloadavg()[0]:.1f} at the end)",
        [
            "rows",
            "fit",
            "seconds",
            "speed vs in process",
            "trees",
            "calibration log loss",
            "calibration ROC-AUC",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
