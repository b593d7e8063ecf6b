"""Serving: batch throughput against LightGBM's own predict / pred_contrib on the same rows,
peak memory of a 1M-account batch, and online latency over HTTP against `mlflow models serve`
of the same registered model.

Setup (not timed): a 3,000-account demo CRM in a temporary folder, trained and registered in
a temporary MLflow store with the demo config's training settings, and one batch run that
writes the account snapshot the service reads.
"""

from __future__ import annotations

import json
import os
import socket
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

from benchmarks._util import median_time, peak_rss_mib, print_table, run_isolated

ROOT = Path(__file__).resolve().parents[1]
N_DEMO_ACCOUNTS = 3_000
N_BATCH_ROWS = 20_000
# (accounts, with reasons): reason texts are streamed to disk chunk by chunk, so their memory
# is bounded by the chunk size; 1M with reasons would take minutes of text formatting alone.
MEMORY_RUNS = ((1_000_000, False), (50_000, True), (150_000, True))
N_LATENCY_REQUESTS = 300
N_THROUGHPUT_REQUESTS = 40
THROUGHPUT_BATCH = 100
API_KEY = "bench-key"


# --------------------------------------------------------------------------- setup


def _config(root: Path) -> Any:
    from features.demo import write_demo
    from tiering.config import load_config

    base = load_config(ROOT / "configs" / "demo.toml")
    paths = write_demo(root / "data", n_accounts=N_DEMO_ACCOUNTS, seed=11, dirt_rate=0.02)
    data = base.data.model_copy(
        update={
            "accounts": base.data.accounts.model_copy(update={"path": paths["accounts"]}),
            "opportunities": base.data.opportunities.model_copy(
                update={"path": paths["opportunities"]}
            ),
            "activities": base.data.activities.model_copy(update={"path": paths["activities"]})
            if base.data.activities is not None
            else None,
            "truth_dir": root / "data" / "truth",
        }
    )
    mlflow = base.mlflow.model_copy(
        update={
            "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "artifact_location": str(root / "artifacts"),
        }
    )
    scoring = base.scoring.model_copy(update={"snapshot": root / "snapshot.parquet"})
    return base.model_copy(update={"data": data, "mlflow": mlflow, "scoring": scoring})


def _resample(features: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """n feature rows drawn from the snapshot, with fresh unique account ids."""
    rng = np.random.default_rng(seed)
    rows = features.iloc[rng.integers(0, len(features), n)].reset_index(drop=True)
    rows["account_id"] = [f"S-{i:07d}" for i in range(n)]
    return rows


# --------------------------------------------------------------------------- batch


def batch_rows(bundle: Any, features: pd.DataFrame, chunk_size: int) -> list[list[Any]]:
    from serving.batch import score_population

    encoded = bundle.encode(features)
    n = len(features)

    def raw_predict() -> None:
        bundle.win_model.predict(encoded, raw_score=True)
        bundle.value_model.predict(encoded, raw_score=True)

    def raw_contrib() -> None:
        bundle.win_model.predict(encoded, pred_contrib=True)
        bundle.value_model.predict(encoded, pred_contrib=True)

    def ours(reasons: bool) -> Callable[[], Any]:
        return lambda: score_population(bundle, features, chunk_size=chunk_size, reasons=reasons)

    t_predict, _ = median_time(raw_predict)
    t_contrib, _ = median_time(raw_contrib)
    t_plain, _ = median_time(ours(False))
    t_reasons, _ = median_time(ours(True), repeat=1 if n > 50_000 else 3)
    return [
        ["LightGBM predict (win + value), raw", n / t_predict, "", ""],
        ["batch scoring, no reasons", n / t_plain, t_predict / t_plain, ">= 0.5"],
        ["LightGBM pred_contrib (win + value), raw", n / t_contrib, "", ""],
        ["batch scoring with reasons", n / t_reasons, t_contrib / t_reasons, ">= 0.8"],
    ]


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
    rows: list[list[Any]] = []

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    bentoml_cmd = [
        str(bin_dir / "bentoml"),
        "serve",
        "serving.service:TieringService",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with (
        _server(bentoml_cmd, env, f"{base}/readyz", workdir / "bentoml.log"),
        httpx.Client(headers={"X-API-Key": API_KEY}, timeout=60) as client,
    ):
        one = {"accounts": [{"account_id": ids[0]}], "reasons": True}
        p50, p99 = _latencies(
            lambda: client.post(f"{base}/score", json=one).raise_for_status(), N_LATENCY_REQUESTS
        )
        rows.append(["BentoML /score, 1 account with reasons", p50, p99, "", "p99 < 20 ms"])
        plain = {"accounts": [{"account_id": ids[0]}], "reasons": False}
        p50, p99 = _latencies(
            lambda: client.post(f"{base}/score", json=plain).raise_for_status(), N_LATENCY_REQUESTS
        )
        rows.append(["BentoML /score, 1 account, no reasons", p50, p99, "", ""])
        batch_body = {
            "accounts": [{"account_id": i} for i in ids[:THROUGHPUT_BATCH]],
            "reasons": False,
        }
        bento_tp = _throughput(
            lambda: client.post(f"{base}/score", json=batch_body).raise_for_status(),
            N_THROUGHPUT_REQUESTS,
            THROUGHPUT_BATCH,
        )
        rows.append(
            [
                f"BentoML /score, {THROUGHPUT_BATCH} accounts/request, no reasons",
                "",
                "",
                bento_tp,
                "",
            ]
        )

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
        rows = _resample(snapshot, N_BATCH_ROWS)
        print_table(
            f"Batch scoring throughput, {N_BATCH_ROWS:,} accounts "
            f"({bundle.win_model.num_trees()} + {bundle.value_model.num_trees()} trees)",
            ["path", "accounts/s", "ratio to raw LightGBM", "target"],
            batch_rows(bundle, rows, config.scoring.chunk_size),
        )
        memory_rows = []
        for n, reasons in MEMORY_RUNS:
            run = run_isolated(
                "benchmarks.bench_serving",
                "--memory",
                str(bundle_dir),
                str(result.snapshot),
                str(n),
                str(config.scoring.chunk_size),
                "reasons" if reasons else "plain",
            )
            memory_rows.append(
                [
                    f"{n:,}",
                    "yes" if reasons else "no",
                    run["seconds"],
                    n / run["seconds"],
                    run["peak_mib"],
                    "< 2,048 MiB at 1M",
                ]
            )
        print_table(
            "Batch scoring + writing peak memory (fresh process per run, resampled feature rows)",
            ["accounts", "reasons", "seconds", "accounts/s", "peak RSS MiB", "target"],
            memory_rows,
        )
        print_table(
            "Online serving over HTTP on loopback (sequential requests, keep-alive)",
            ["endpoint", "p50 ms", "p99 ms", "accounts/s", "target"],
            online_rows(config, model_uri, registered.tracking_uri, snapshot, root),
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--memory":
        memory_run(*sys.argv[2:7])
    else:
        main()
