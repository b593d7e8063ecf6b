"""The service under load, on loopback only: goodput, latency and rejections at 1x and 3x its
capacity.

Setup (not timed): a small demo CRM in a temporary folder, a bundle from the training
pipeline, one batch run for the account snapshot, then a real ``bentoml serve`` of the service
on a free 127.0.0.1 port with an API key.

1. Capacity: closed loop, as many clients as the service admits at once, each sending
   100-account requests back to back for ``BENCH_LOAD_SECONDS``: answered requests/s.
2. Open loop at 1x and 3x that rate (requests start on a fixed schedule whatever the answers
   do, as independent callers would), each phase bounded in time and count. A client gives up
   after ``CLIENT_TIMEOUT_S`` (and disconnects, as a real caller does).

Reported per phase: offered and served requests/s, goodput as a share of capacity, p50/p99
latency of the answered requests, how many got 503 and how fast (the slowest 503), and any
other outcome. What the service must show: at 3x, goodput stays >= 80 % of capacity and every
rejection is a 503 within a second.

Environment variables: ``BENCH_LOAD_SECONDS`` (default 20) per phase.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks._util import demo_config, print_table

SECONDS = float(os.environ.get("BENCH_LOAD_SECONDS", "20"))
ACCOUNTS_PER_REQUEST = 100
CLIENT_TIMEOUT_S = 10.0
MAX_REQUESTS_PER_PHASE = 5_000
API_KEY = "bench-load-key"
N_DEMO_ACCOUNTS = 1_500


@dataclass
class Phase:
    name: str
    offered_rps: float
    seconds: float
    statuses: Counter[str] = field(default_factory=Counter)
    ok_latency: list[float] = field(default_factory=list)
    rejected_latency: list[float] = field(default_factory=list)

    def row(self, capacity: float) -> list[Any]:
        served = self.statuses["200"] / self.seconds
        others = {k: v for k, v in self.statuses.items() if k not in ("200", "503")}
        return [
            self.name,
            f"{self.offered_rps:.1f}",
            f"{served:.1f}",
            f"{served / capacity:.0%}" if capacity else "-",
            _ms(self.ok_latency, 0.5),
            _ms(self.ok_latency, 0.99),
            str(self.statuses["503"]),
            _ms(self.rejected_latency, 1.0),
            ", ".join(f"{k}: {v}" for k, v in sorted(others.items())) or "none",
        ]


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:,.0f} ms"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _deployment(root: Path) -> tuple[Path, Path, list[str]]:
    """A bundle folder, its account snapshot and the account ids."""
    from demo import write_demo
    from serving.batch import score_accounts
    from tiering.bundle import Bundle
    from training.pipeline import fit_and_evaluate

    paths = write_demo(root / "data", n_accounts=N_DEMO_ACCOUNTS, seed=7, workers=1)
    config = demo_config(root, paths)
    config = config.model_copy(
        update={"training": config.training.model_copy(update={"n_jobs": 2})}
    )
    bundle = fit_and_evaluate(config).bundle
    bundle.metadata["model_version"] = "bench"
    folder = bundle.save(root / "bundle")
    result = score_accounts(config, Bundle.load(folder), out=root / "tiers.parquet")
    return folder, result.snapshot, result.scores["account_id"].astype(str).tolist()


def _start(bundle: Path, snapshot: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BENTOML_DO_NOT_TRACK": "true",
        "TIERING_BUNDLE_DIR": str(bundle),
        "TIERING_SNAPSHOT": str(snapshot),
        "TIERING_API_KEY": API_KEY,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    env.pop("TIERING_CONFIG", None)
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "bentoml"),
            "serve",
            "serving.service:TieringService",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise RuntimeError("server not ready in 180 s")


def _body(ids: list[str], k: int) -> dict[str, Any]:
    start = (k * ACCOUNTS_PER_REQUEST) % max(1, len(ids) - ACCOUNTS_PER_REQUEST)
    accounts = [{"account_id": a} for a in ids[start : start + ACCOUNTS_PER_REQUEST]]
    return {"accounts": accounts, "reasons": True}


async def _one(client: httpx.AsyncClient, body: dict[str, Any], phase: Phase) -> None:
    started = time.perf_counter()
    try:
        response = await client.post("/score", json=body, timeout=CLIENT_TIMEOUT_S)
        status = str(response.status_code)
    except httpx.TimeoutException:
        status = "client gave up"
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    elapsed = time.perf_counter() - started
    phase.statuses[status] += 1
    if status == "200":
        phase.ok_latency.append(elapsed)
    elif status == "503":
        phase.rejected_latency.append(elapsed)


async def _closed_loop(base: str, ids: list[str], clients: int) -> float:
    phase = Phase("capacity", 0.0, SECONDS)
    deadline = time.monotonic() + SECONDS
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(
        base_url=base, headers={"X-API-Key": API_KEY}, limits=limits
    ) as client:

        async def worker(w: int) -> None:
            k = w
            while time.monotonic() < deadline:
                await _one(client, _body(ids, k), phase)
                k += clients

        await asyncio.gather(*(worker(w) for w in range(clients)))
    return phase.statuses["200"] / SECONDS


async def _open_loop(base: str, ids: list[str], name: str, rps: float) -> Phase:
    n = min(MAX_REQUESTS_PER_PHASE, int(rps * SECONDS))
    phase = Phase(name, rps, n / rps)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=50)
    async with httpx.AsyncClient(
        base_url=base, headers={"X-API-Key": API_KEY}, limits=limits
    ) as client:
        start = time.perf_counter()
        tasks = []
        for k in range(n):
            delay = start + k / rps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(_one(client, _body(ids, k), phase)))
        await asyncio.gather(*tasks)
    return phase


def main() -> None:
    from serving.settings import DEFAULT_MAX_CONCURRENCY

    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        root = Path(tmp)
        bundle, snapshot, ids = _deployment(root)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        server = _start(bundle, snapshot, port, root / "server.log")
        try:
            capacity = asyncio.run(_closed_loop(base, ids, DEFAULT_MAX_CONCURRENCY))
            phases = [
                asyncio.run(_open_loop(base, ids, f"{x}x capacity", x * capacity)) for x in (1, 3)
            ]
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    rows = [["capacity (closed loop)", "-", f"{capacity:.1f}", "100%", "", "", "", "", ""]]
    rows += [p.row(capacity) for p in phases]
    print_table(
        f"Service under load on loopback: {ACCOUNTS_PER_REQUEST}-account requests with reasons, "
        f"{SECONDS:.0f} s per phase, 1 worker, max {DEFAULT_MAX_CONCURRENCY} in flight",
        [
            "phase",
            "offered req/s",
            "served req/s",
            "goodput / capacity",
            "p50",
            "p99",
            "503s",
            "slowest 503",
            "other outcomes",
        ],
        rows,
    )
    three = phases[-1]
    verdict = (
        three.statuses["200"] / three.seconds >= 0.8 * capacity
        and (not three.rejected_latency or max(three.rejected_latency) < 1.0)
        and not {k for k in three.statuses if k not in ("200", "503")}
    )
    print(
        "at 3x: goodput >= 80 % of capacity and every rejection a 503 within 1 s: "
        + ("yes" if verdict else "NO"),
        statistics.median(three.ok_latency) if three.ok_latency else "",
    )


if __name__ == "__main__":
    main()
