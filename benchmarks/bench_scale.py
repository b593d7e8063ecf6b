"""Scale: one batch run of the whole account list in one process against the same run on a
Dask ``LocalCluster`` of two worker processes, with and without reasons, beside raw LightGBM
``predict`` / ``pred_contrib`` of the same rows; peak memory of the client and of each worker.
Then the out-of-core runs: a partitioned Parquet export scored with and without reasons on the
``LocalCluster(2)``, each worker reading only its own parts; and where a worker's time goes,
step by step on one part, beside LightGBM's ``predict`` and ``pred_contrib`` of its rows.

Setup (not timed): a 3,000-account demo trained with the demo config's settings, then a demo
CRM of ``BENCH_SCALE_ACCOUNTS`` accounts (default 1,000,000) written to a temporary folder and
scored with that bundle. The runs are timed one after another in the same process start, so
a neighbour's load on a shared machine hits them alike; the raw LightGBM figures are measured
on the first 50,000 accounts' feature rows and scaled to the list (rows/s).

The partitioned export is generated once into ``$BENCH_DATA_DIR`` (default: the system's
temporary folder), ``demo-parts-N-seed3/``, and reused by later runs; its generation time is
printed when it is written.

Environment variables:
    BENCH_SCALE_ACCOUNTS  accounts in the scored list (default 1000000)
    BENCH_SCALE_PARTS     comma-separated subset of ``plain,reasons,partitioned,stages``
                          (default all)
    BENCH_PART_ACCOUNTS   accounts per part of the partitioned export (default 50000)
    BENCH_DATA_DIR        where the partitioned export is kept
    BENCH_OUT_OF_CORE_REASONS  ``no,yes`` (default): the partitioned runs, without and with
                          reasons (``no`` alone for the 10M-account run)
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._util import demo_config, peak_rss_mib, print_table, reset_peak_rss

N_ACCOUNTS = int(os.environ.get("BENCH_SCALE_ACCOUNTS", "1000000"))
PARTS = [
    p.strip()
    for p in os.environ.get("BENCH_SCALE_PARTS", "plain,reasons,partitioned,stages").split(",")
    if p.strip()
]
PART_ACCOUNTS = int(os.environ.get("BENCH_PART_ACCOUNTS", "50000"))
OUT_OF_CORE_REASONS = [
    r.strip() == "yes" for r in os.environ.get("BENCH_OUT_OF_CORE_REASONS", "no,yes").split(",")
]
N_RAW_ROWS = 50_000


def _config_for(root: Path, n: int, seed: int) -> Any:
    from demo import write_demo

    paths = write_demo(root / "data", n_accounts=n, seed=seed, dirt_rate=0.0)
    return demo_config(root, paths)


def _partitioned_export(n: int, seed: int = 3) -> tuple[Path, float | None]:
    """The partitioned demo export of ``n`` accounts, written once (the seconds it took, or
    None when an earlier run wrote it)."""
    from demo import write_demo

    root = Path(os.environ.get("BENCH_DATA_DIR", tempfile.gettempdir()))
    folder = root / f"demo-parts-{n}-seed{seed}-by{PART_ACCOUNTS}"
    done = folder / ".complete"
    if done.exists():
        return folder, None
    start = time.perf_counter()
    write_demo(
        folder,
        n_accounts=n,
        seed=seed,
        dirt_rate=0.0,
        fmt="parquet",
        truth_as_of="end",
        part_accounts=PART_ACCOUNTS,
    )
    seconds = time.perf_counter() - start
    done.write_text(f"{seconds:.1f}\n")
    return folder, seconds


def _on_local_cluster(
    config: Any,
    bundle: Any,
    *,
    out: Path,
    snapshot: Path,
    reasons: bool,
) -> tuple[float, dict[str, float], dict[str, tuple[float, float]]]:
    """One scoring run on a fresh LocalCluster(2) with 4 GiB per worker: its seconds, each
    worker's peak RSS (MiB), and per kind of task the workers' compute seconds and when the
    last one ended (seconds from the run's start, :func:`_phases`)."""
    from distributed import Client, LocalCluster, get_task_stream

    from serving.distributed import score_accounts_distributed

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
        started = time.time()
        start = time.perf_counter()
        with get_task_stream(client) as stream:
            score_accounts_distributed(
                config, bundle, client, out=out, snapshot=snapshot, reasons=reasons
            )
        seconds = time.perf_counter() - start
        peaks: dict[str, float] = client.run(peak_rss_mib)
    return seconds, peaks, _phases(stream.data, started)


def _phases(tasks: list[dict[str, Any]], started: float) -> dict[str, tuple[float, float]]:
    """Per kind of task (its key's name): the workers' compute seconds and when the last one
    ended, in seconds from ``started``."""
    from dask.utils import key_split

    phases: dict[str, tuple[float, float]] = {}
    for task in tasks:
        name = key_split(task["key"])
        for span in task["startstops"]:
            if span["action"] == "compute":
                busy, end = phases.get(name, (0.0, 0.0))
                phases[name] = (
                    busy + span["stop"] - span["start"],
                    max(end, span["stop"] - started),
                )
    return phases


def _out_of_core(bundle: Any, root: Path) -> None:
    """A partitioned export scored without and with reasons on LocalCluster(2): the client
    never loads a table, each worker reads one part at a time."""

    folder, generated = _partitioned_export(N_ACCOUNTS)
    config = _parts_config(root, folder)
    size = sum(f.stat().st_size for f in folder.rglob("*.parquet") if "truth" not in f.parts)
    n_parts = len(list((folder / "accounts").glob("part-*.parquet")))
    load = os.getloadavg()[0]
    rows = []
    timelines: list[tuple[bool, float, int, dict[str, tuple[float, float]]]] = []
    for reasons in OUT_OF_CORE_REASONS:
        note = reset_peak_rss()
        seconds, peaks, phases = _on_local_cluster(
            config,
            bundle,
            out=root / f"dask-partitioned-{reasons}",
            snapshot=root / "snap-partitioned.parquet",
            reasons=reasons,
        )
        timelines.append((reasons, seconds, len(peaks), phases))
        rows.append(
            [
                "yes" if reasons else "no",
                f"{N_ACCOUNTS:,}",
                seconds,
                N_ACCOUNTS / seconds,
                ", ".join(f"{v:,.0f}" for v in peaks.values()),
                f"{peak_rss_mib():,.0f}{note}",
            ]
        )
    print_table(
        f"Out of core: a partitioned Parquet export of {N_ACCOUNTS:,} demo accounts "
        f"({n_parts} parts of {PART_ACCOUNTS:,}, {size / 2**30:.2f} GiB of tables) scored "
        f"on LocalCluster(2), memory_limit 4 GiB per worker (load average "
        f"{load:.1f} at start; "
        + (f"export written in {generated:.0f} s, not timed)" if generated else "export reused)"),
        [
            "reasons",
            "accounts",
            "seconds",
            "accounts/s",
            "peak RSS MiB per worker",
            "client peak RSS MiB",
        ],
        rows,
    )
    for reasons, seconds, workers, phases in timelines:
        busy = sum(b for b, _ in phases.values())
        print_table(
            f"Where the cluster's time goes, {'with' if reasons else 'without'} reasons: the "
            f"workers' compute seconds per kind of task ({busy:.0f} s of {workers * seconds:.0f} "
            f"worker-seconds in a {seconds:.0f} s run; the rest is the client's reading of "
            "the results, its writing of the CRM rows and the snapshot, and waiting). "
            "read_part: read, check and featurise a part; rank: predictions, ICP fit and "
            "priority; reasons: the global tiers applied, reasons phrased, the part written",
            ["task", "worker seconds", "share of the busy time", "last one ended at s"],
            [
                [name, b, f"{b / busy:.0%}", end]
                for name, (b, end) in sorted(phases.items(), key=lambda kv: kv[1][1])
                if b >= 0.005 * busy
            ],
        )


def _parts_config(root: Path, folder: Path) -> Any:
    names = ("accounts", "opportunities", "activities", "subscriptions", "usage", "tickets")
    config = demo_config(root, {name: folder / name for name in names})
    history = config.history.model_copy(update={"enabled": False})
    return config.model_copy(update={"history": history})


def _where_time_goes(bundle: Any, root: Path) -> None:
    """Each step of a worker's run on one part of the partitioned export, in one process,
    medians of 3, beside LightGBM's own ``predict`` and ``pred_contrib`` of the same rows; and
    what each step comes to for the whole list on two workers."""
    from features.build import build_features, scoring_requests
    from features.contract import export_parts, load_part
    from tiering.scoring import score

    folder, _ = _partitioned_export(N_ACCOUNTS)
    config = _parts_config(root, folder)
    part = (export_parts(config.data) or [""])[0]
    steps: dict[str, list[float]] = {}

    def timed(name: str, run: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = run(*args, **kwargs)
        steps.setdefault(name, []).append(time.perf_counter() - start)
        return result

    def lightgbm(matrix: Any, **kind: bool) -> None:
        for booster in (bundle.conversion.booster, bundle.revenue.booster):
            if booster is not None:
                booster.predict(matrix, **kind)

    shap_step = "exact SHAP values, both models (tiering.treeshap)"
    contrib_step = "LightGBM pred_contrib, both models (reference)"
    for _ in range(3):
        loaded = timed("read and check the part (data contract)", load_part, config.data, part)
        tables = loaded.tables
        requests = scoring_requests(tables.accounts, tables.end_of_data())
        features = timed("features", build_features, tables, requests, config.features)
        del tables, loaded
        timed("predictions and tiers", score, bundle, features, reasons=False)
        shap = timed(shap_step, bundle.contributions, features)
        timed(
            "predictions, tiers and reasons from those SHAP values",
            score,
            bundle,
            features,
            reasons=True,
            contributions=shap,
        )
        matrix = bundle.model_matrix(features)
        timed("LightGBM predict, both models (reference)", lightgbm, matrix, raw_score=True)
        timed(contrib_step, lightgbm, matrix, pred_contrib=True)
    n = len(features)
    medians = {name: float(np.median(times)) for name, times in steps.items()}
    rows = [
        [name, seconds, n / seconds, seconds * N_ACCOUNTS / n / 2]
        for name, seconds in medians.items()
    ]
    shap_rate = n / medians[shap_step]
    contrib_rate = n / medians[contrib_step]
    print_table(
        f"Where the time goes: one part of {n:,} accounts in one process (medians of 3; "
        f"load average {os.getloadavg()[0]:.1f}); exact SHAP {shap_rate / contrib_rate:.1f}x "
        "LightGBM's pred_contrib on the same rows",
        ["step", "seconds", "accounts/s", f"seconds for {N_ACCOUNTS:,} on 2 workers"],
        rows,
    )


def main() -> None:

    from benchmarks.bench_explain import trained_bundle
    from features.build import build_features, scoring_requests
    from features.contract import load_tables
    from serving.batch import score_accounts

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        bundle, _ = trained_bundle(root / "train")
        if "stages" in PARTS:
            _where_time_goes(bundle, root)
        if "partitioned" in PARTS:
            _out_of_core(bundle, root)
        in_memory = [part for part in PARTS if part in ("plain", "reasons")]
        if not in_memory:
            return
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
        for part in in_memory:
            reasons = part == "reasons"
            kind = "pred_contrib" if reasons else "raw_score"
            note = reset_peak_rss()
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
                    f"{peak_rss_mib():,.0f} (process){note}",
                ]
            )
            note = reset_peak_rss()
            spread, peaks, _ = _on_local_cluster(
                config,
                bundle,
                out=root / f"dask-{part}",
                snapshot=root / "snap-dask.parquet",
                reasons=reasons,
            )
            rows.append(
                [
                    "LocalCluster(2)",
                    "yes" if reasons else "no",
                    f"{N_ACCOUNTS:,}",
                    spread,
                    N_ACCOUNTS / spread,
                    raw[kind],
                    ", ".join(f"{v:,.0f}" for v in peaks.values())
                    + f" (workers); {peak_rss_mib():,.0f} (client){note}",
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
