"""Serving: batch throughput against LightGBM's own predict / pred_contrib on the same rows,
peak memory of a 1M-account batch, and online latency over HTTP against `mlflow models serve`
of the same registered model.

Setup (not timed): a 3,000-account demo CRM in a temporary folder, trained and registered in
a temporary MLflow store with the demo config's training settings, and one batch run that
writes the account snapshot the service reads.

Ratios to raw LightGBM are measured side by side: each repeat times the raw call and ours
back to back on the same rows, so a neighbour's load on a shared machine hits both alike. The
raw calls get the model matrix already built (LightGBM's fastest input), ours starts from
the feature rows.

Environment variables:
    BENCH_SERVING_PARTS   comma-separated subset of ``batch,memory,online`` (default: all)
    BENCH_SERVING_QUICK   ``1``: fewer rows and requests, no mlflow server (for iterating)
    BENCH_SERVING_1M_REASONS  ``1``: also measure 1M accounts with reasons (TreeSHAP of 1M
        accounts takes over ten minutes on two cores, so it is not part of the default run)
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._util import (
    bentoml_serve_command,
    demo_config,
    median_time,
    peak_rss_mib,
    print_table,
    run_isolated,
    wait_precomputed,
)

ROOT = Path(__file__).resolve().parents[1]
QUICK = os.environ.get("BENCH_SERVING_QUICK") == "1"
PARTS = {
    p.strip()
    for p in os.environ.get("BENCH_SERVING_PARTS", "batch,memory,online").split(",")
    if p.strip()
}
N_DEMO_ACCOUNTS = 3_000
N_BATCH_ROWS = 10_000 if QUICK else 50_000
N_REASON_ROWS = 1_000 if QUICK else 5_000
BATCH_REPEATS = 5 if QUICK else 7
REASON_REPEATS = 3
# (accounts, with reasons): reason texts are streamed to disk chunk by chunk, so their memory
# is bounded by the chunk size; two sizes with reasons show that it stays flat.
MEMORY_RUNS = (
    ((200_000, False), (20_000, True))
    if QUICK
    else (
        (1_000_000, False),
        (50_000, True),
        (100_000, True),
        *(((1_000_000, True),) if os.environ.get("BENCH_SERVING_1M_REASONS") == "1" else ()),
    )
)
N_LATENCY_REQUESTS = 100 if QUICK else 300
N_THROUGHPUT_REQUESTS = 10 if QUICK else 40
THROUGHPUT_BATCH = 100
API_KEY = "bench-key"


# --------------------------------------------------------------------------- setup


def _config(root: Path) -> Any:
    from demo import write_demo

    paths = write_demo(root / "data", n_accounts=N_DEMO_ACCOUNTS, seed=11, dirt_rate=0.02)
    config = demo_config(root, paths)
    mlflow = config.mlflow.model_copy(
        update={
            "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "artifact_location": str(root / "artifacts"),
        }
    )
    return config.model_copy(update={"mlflow": mlflow})


def _resample(features: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """n feature rows drawn from the snapshot, with fresh unique account ids."""
    rng = np.random.default_rng(seed)
    rows = features.iloc[rng.integers(0, len(features), n)].reset_index(drop=True)
    rows["account_id"] = [f"S-{i:07d}" for i in range(n)]
    return rows


# --------------------------------------------------------------------------- batch


def side_by_side(
    raw: Callable[[], Any], ours: Callable[[], Any], repeat: int
) -> tuple[float, float, float]:
    """Median seconds of ``raw`` and of ``ours``, timed back to back in each repeat, and the
    median of the per-repeat ratios raw / ours."""
    raw(), ours()  # warm-up: lazy imports, first allocations
    t_raw, t_ours = [], []
    for _ in range(repeat):
        t_raw.append(median_time(raw, repeat=1)[0])
        t_ours.append(median_time(ours, repeat=1)[0])
    ratio = statistics.median(r / o for r, o in zip(t_raw, t_ours, strict=True))
    return statistics.median(t_raw), statistics.median(t_ours), ratio


def batch_rows(bundle: Any, features: pd.DataFrame, chunk_size: int) -> list[list[Any]]:
    from serving.batch import score_population

    rows: list[list[Any]] = []
    for reasons, n in ((False, N_BATCH_ROWS), (True, N_REASON_ROWS)):
        sample = features.iloc[:n]
        matrix = bundle.model_matrix(sample)
        kind = {"pred_contrib": True} if reasons else {"raw_score": True}

        def raw(matrix: Any = matrix, kind: dict[str, bool] = kind) -> None:
            for booster in bundle.boosters():
                booster.predict(matrix, **kind)

        def ours(sample: pd.DataFrame = sample, reasons: bool = reasons) -> None:
            score_population(bundle, sample, chunk_size=chunk_size, reasons=reasons)

        t_raw, t_ours, ratio = side_by_side(raw, ours, REASON_REPEATS if reasons else BATCH_REPEATS)
        what = "pred_contrib" if reasons else "predict"
        label = "with reasons" if reasons else "no reasons"
        rows.append([f"LightGBM {what} (win + value), raw", f"{n:,}", n / t_raw, "", ""])
        rows.append(
            [
                f"batch scoring, {label}",
                f"{n:,}",
                n / t_ours,
                ratio,
                ">= 0.8" if reasons else ">= 0.5",
            ]
        )
    return rows


def memory_run(bundle_dir: str, snapshot: str, n: str, chunk_size: str, reasons: str) -> None:
    """In a fresh process: score n resampled accounts with reasons and write the scores and
    the CRM file as a batch run does; print the time and the peak RSS as JSON."""
    from serving.batch import read_snapshot, write_scores
    from tiering.bundle import Bundle

    bundle = Bundle.load(bundle_dir)
    features = _resample(read_snapshot(Path(snapshot)).features.reset_index(drop=True), int(n))
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        start = time.perf_counter()
        scores, _ = write_scores(
            bundle,
            features,
            Path(tmp) / "tiers.parquet",
            Path(tmp) / "crm.csv",
            like=Path("tiers.parquet"),
            chunk_size=int(chunk_size),
            reasons=reasons == "reasons",
        )
        seconds = time.perf_counter() - start
    print(json.dumps({"rows": len(scores), "seconds": seconds, "peak_mib": peak_rss_mib()}))


# --------------------------------------------------------------------------- online


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _server(command: list[str], env: dict[str, str], ready_url: str, log: Path) -> Iterator[None]:
    import httpx

    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
                try:
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready in 180 s: {log.read_text()[-2000:]}")
                time.sleep(0.5)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _latencies(post: Callable[[], Any], n: int) -> tuple[float, float]:
    for _ in range(10):  # warm-up: first requests pay for lazy imports and allocations
        post()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        post()
        times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _throughput(post: Callable[[], Any], n: int, batch: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        post()
    return n * batch / (time.perf_counter() - start)


def in_process_row(config: Any, model_uri: str, tracking_uri: str, account_id: str) -> list[Any]:
    """The service's scorer called directly: what a request costs before HTTP and BentoML."""
    from serving.model_loader import load_registered
    from serving.online import OnlineScorer
    from serving.schemas import AccountRequest

    scorer = OnlineScorer(
        load_registered(model_uri, tracking_uri),
        snapshot_path=config.scoring.snapshot,
        feature_config=config.features,
        max_accounts=1_000,
        top_reasons=config.scoring.top_reasons,
    )
    request = [AccountRequest(account_id=account_id)]
    p50, p99 = _latencies(
        lambda: scorer.score(request, reasons=True).model_dump_json(), N_LATENCY_REQUESTS
    )
    return [
        "in process (OnlineScorer.score + JSON), 1 account with reasons, computed",
        p50,
        p99,
        "",
        "",
    ]


def _bento_rows(
    client: Any, base: str, ids: list[str], answers: str, rows: list[list[Any]]
) -> float:
    """Latency of one account by id with and without reasons, and throughput of 100-account
    requests, against a running service; rows added to ``rows``, the throughput returned."""
    one = {"accounts": [{"account_id": ids[0]}], "reasons": True}
    p50, p99 = _latencies(
        lambda: client.post(f"{base}/score", json=one).raise_for_status(), N_LATENCY_REQUESTS
    )
    rows.append([f"BentoML /score, 1 account with reasons, {answers}", p50, p99, "", "p99 < 10 ms"])
    plain = {"accounts": [{"account_id": ids[0]}], "reasons": False}
    p50, p99 = _latencies(
        lambda: client.post(f"{base}/score", json=plain).raise_for_status(), N_LATENCY_REQUESTS
    )
    rows.append([f"BentoML /score, 1 account, no reasons, {answers}", p50, p99, "", ""])
    batch_body = {
        "accounts": [{"account_id": i} for i in ids[:THROUGHPUT_BATCH]],
        "reasons": False,
    }
    throughput = _throughput(
        lambda: client.post(f"{base}/score", json=batch_body).raise_for_status(),
        N_THROUGHPUT_REQUESTS,
        THROUGHPUT_BATCH,
    )
    rows.append(
        [
            f"BentoML /score, {THROUGHPUT_BATCH} accounts/request, no reasons, {answers}",
            "",
            "",
            throughput,
            "",
        ]
    )
    return throughput


def online_rows(
    config: Any, model_uri: str, tracking_uri: str, features: pd.DataFrame, workdir: Path
) -> list[list[Any]]:
    import httpx

    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_HOME": str(workdir / "bentoml"),
        "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "TIERING_MODEL_URI": model_uri,
        "TIERING_TRACKING_URI": tracking_uri,
        "TIERING_SNAPSHOT": str(config.scoring.snapshot),
        "TIERING_API_KEY": API_KEY,
    }
    ids = features["account_id"].astype(str).tolist()
    rows: list[list[Any]] = [in_process_row(config, model_uri, tracking_uri, ids[0])]

    for answers, settings in (
        ("precomputed", {}),
        ("computed", {"TIERING_PRECOMPUTE_MAX_ACCOUNTS": "0"}),
    ):
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        with (
            _server(
                bentoml_serve_command(port),
                {**env, **settings},
                f"{base}/readyz",
                workdir / "bentoml.log",
            ),
            httpx.Client(headers={"X-API-Key": API_KEY}, timeout=60) as client,
        ):
            if not settings:
                wait_precomputed(base, len(ids), {"X-API-Key": API_KEY})
            bento_tp = _bento_rows(client, base, ids, answers, rows)

    if QUICK:
        return rows
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    mlflow_cmd = [
        str(bin_dir / "mlflow"),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    payload_rows = features.assign(as_of=features["as_of"].astype(str))

    def split(frame: pd.DataFrame) -> dict[str, Any]:
        data = json.loads(frame.to_json(orient="split", index=False))
        return {"dataframe_split": {"columns": data["columns"], "data": data["data"]}}

    one_row = split(payload_rows.iloc[:1])
    many = split(payload_rows.iloc[:THROUGHPUT_BATCH])
    with (
        _server(mlflow_cmd, env, f"{base}/ping", workdir / "mlflow.log"),
        httpx.Client(timeout=60) as client,
    ):
        p50, p99 = _latencies(
            lambda: client.post(f"{base}/invocations", json=one_row).raise_for_status(),
            N_LATENCY_REQUESTS,
        )
        rows.append(["mlflow models serve /invocations, 1 account (no reasons)", p50, p99, "", ""])
        ml_tp = _throughput(
            lambda: client.post(f"{base}/invocations", json=many).raise_for_status(),
            N_THROUGHPUT_REQUESTS,
            THROUGHPUT_BATCH,
        )
        rows.append(
            [f"mlflow /invocations, {THROUGHPUT_BATCH} accounts/request", "", "", ml_tp, ""]
        )
    rows.append(["BentoML / mlflow throughput", "", "", bento_tp / ml_tp, ""])
    return rows


# --------------------------------------------------------------------------- main


def main() -> None:
    from serving.batch import score_accounts
    from serving.model_loader import load_registered
    from training.pipeline import train

    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        root = Path(tmp)
        config = _config(root)
        registered = train(config)
        model_uri = f"models:/{config.mlflow.registered_model}/{registered.version}"
        loaded = load_registered(model_uri, registered.tracking_uri)
        bundle = loaded.bundle
        bundle_dir = bundle.save(root / "bundle")
        result = score_accounts(config, bundle, out=root / "tiers.parquet")
        from serving.batch import read_snapshot

        snapshot = read_snapshot(result.snapshot).features.reset_index(drop=True)
        rows = _resample(snapshot, max(N_BATCH_ROWS, N_REASON_ROWS))
        if "batch" in PARTS:
            print_table(
                f"Batch scoring throughput against raw LightGBM on the same rows "
                f"({' + '.join(str(b.num_trees()) for b in bundle.boosters())} trees, "
                "medians, side by side)",
                ["path", "accounts", "accounts/s", "ratio to raw LightGBM", "target"],
                batch_rows(bundle, rows, config.scoring.chunk_size),
            )
        if "memory" in PARTS:
            print_table(
                "Batch scoring + writing peak memory (fresh process per run, resampled "
                "feature rows)",
                ["accounts", "reasons", "seconds", "accounts/s", "peak RSS MiB", "target"],
                memory_rows(bundle_dir, result.snapshot, config.scoring.chunk_size),
            )
        if "online" in PARTS:
            print_table(
                "Online serving over HTTP on loopback (sequential requests, keep-alive)",
                ["endpoint", "p50 ms", "p99 ms", "accounts/s", "target"],
                online_rows(config, model_uri, registered.tracking_uri, snapshot, root),
            )


def memory_rows(bundle_dir: Path, snapshot: Path, chunk_size: int) -> list[list[Any]]:
    out = []
    for n, reasons in MEMORY_RUNS:
        run = run_isolated(
            "benchmarks.bench_serving",
            "--memory",
            str(bundle_dir),
            str(snapshot),
            str(n),
            str(chunk_size),
            "reasons" if reasons else "plain",
        )
        out.append(
            [
                f"{n:,}",
                "yes" if reasons else "no",
                run["seconds"],
                n / run["seconds"],
                run["peak_mib"],
                "< 2,048 MiB at 1M",
            ]
        )
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--memory":
        memory_run(*sys.argv[2:7])
    else:
        main()
