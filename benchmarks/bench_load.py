"""The service under load, on loopback only.

Setup (not timed): a small demo CRM in a temporary folder, a bundle from the training
pipeline, one batch run for the account snapshot, then a real ``bentoml serve`` of the service
on a free 127.0.0.1 port with an API key, once per setting of ``SINGLE_ACCOUNT_SERVERS``: the
default (answers by id scored ahead for the snapshot, ``serving.precomputed``, measured once
every worker has them), and computed per request with adaptive batching and without.

One account by id with reasons per request (what a CRM page or a routing service sends), for
each server:

1. Low load: one client, requests back to back: p50/p99 of one account with reasons.
2. Open loop at ``BENCH_LOAD_RATE`` requests/s (default 200) for ``BENCH_LOAD_RATE_SECONDS``
   (default 30; 300 is the five-minute run): requests start on a fixed schedule whatever the
   answers do, as independent callers would. Reported: offered and served requests/s, errors
   (anything but 200), p50/p95/p99, and the mean number of requests each model call answered
   (from the service's ``tiering_batch_size`` histogram).

Then, computed per request with batching, 100-account requests:

3. Capacity: closed loop, two clients per worker, each sending
   100-account requests back to back for ``BENCH_LOAD_SECONDS`` (default 20): answered
   requests/s.
4. Open loop at 1x and 3x that rate, each phase bounded in time and count. A client gives up
   after ``CLIENT_TIMEOUT_S`` (and disconnects, as a real caller does). What the service must
   show: at 3x, goodput stays >= 80 % of capacity and every rejection is a 503 within a second.

The load comes from one asyncio process with aiohttp (a fraction of httpx's CPU per request,
which matters on a machine whose cores the server shares) over at most ``CONNECTIONS``
keep-alive connections, as a caller's connection pool would: a request that finds every
connection busy waits for one (the 100-account phases allow ``OVERLOAD_CONNECTIONS``, more
than the service holds at once, so that its shedding shows). Latency is counted from the moment
the schedule sent the request, so that wait is part of it (no coordinated omission), and the
client's own CPU seconds are printed beside each phase: the load generator shares the server's
two cores.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from benchmarks._util import bentoml_serve_command, demo_config, print_table, wait_precomputed

SECONDS = float(os.environ.get("BENCH_LOAD_SECONDS", "20"))
RATE = float(os.environ.get("BENCH_LOAD_RATE", "200"))
RATE_SECONDS = float(os.environ.get("BENCH_LOAD_RATE_SECONDS", "30"))
LOW_LOAD_REQUESTS = 1_000
ACCOUNTS_PER_REQUEST = 100
CLIENT_TIMEOUT_S = 10.0
MAX_REQUESTS_PER_PHASE = 5_000
CONNECTIONS = 64
# The 100-account phases: more connections than the service takes requests at once.
OVERLOAD_CONNECTIONS = 1_024
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
    client_cpu_s: float = 0.0

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


def _start(
    bundle: Path, snapshot: Path, port: int, log: Path, **settings: str
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **settings,
        "BENTOML_DO_NOT_TRACK": "true",
        "TIERING_BUNDLE_DIR": str(bundle),
        "TIERING_SNAPSHOT": str(snapshot),
        "TIERING_API_KEY": API_KEY,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    env.pop("TIERING_CONFIG", None)
    server = subprocess.Popen(
        bentoml_serve_command(port),
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


def _one_account(ids: list[str], k: int) -> dict[str, Any]:
    return {"accounts": [{"account_id": ids[k % len(ids)]}], "reasons": True}


def _body(ids: list[str], k: int) -> dict[str, Any]:
    start = (k * ACCOUNTS_PER_REQUEST) % max(1, len(ids) - ACCOUNTS_PER_REQUEST)
    accounts = [{"account_id": a} for a in ids[start : start + ACCOUNTS_PER_REQUEST]]
    return {"accounts": accounts, "reasons": True}


def _session(base: str, connections: int = CONNECTIONS) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=base,
        headers={"X-API-Key": API_KEY},
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S),
    )


async def _one(
    client: aiohttp.ClientSession,
    body: dict[str, Any],
    phase: Phase,
    scheduled: float | None = None,
) -> None:
    """One request; its latency from ``scheduled`` (perf_counter), else from now."""
    started = time.perf_counter() if scheduled is None else scheduled
    try:
        async with client.post("/score", json=body) as response:
            await response.read()
            status = str(response.status)
    except TimeoutError:
        status = "client gave up"
    except aiohttp.ClientError as exc:
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
    async with _session(base, clients) as client:

        async def worker(w: int) -> None:
            k = w
            while time.monotonic() < deadline:
                await _one(client, _body(ids, k), phase)
                k += clients

        await asyncio.gather(*(worker(w) for w in range(clients)))
    return phase.statuses["200"] / SECONDS


async def _open_loop(
    base: str,
    ids: list[str],
    name: str,
    rps: float,
    seconds: float = SECONDS,
    body: Callable[[list[str], int], dict[str, Any]] = _body,
    cap: int = MAX_REQUESTS_PER_PHASE,
    connections: int = CONNECTIONS,
) -> Phase:
    n = min(cap, int(rps * seconds))
    phase = Phase(name, rps, n / rps)
    cpu = time.process_time()
    async with _session(base, connections) as client:
        start = time.perf_counter()
        # Only the requests in flight are kept: holding every finished task made the client's
        # garbage collections scan tens of thousands of them, and its pauses counted as the
        # service's latency.
        pending: set[asyncio.Future[None]] = set()
        for k in range(n):
            due = start + k / rps
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(_one(client, body(ids, k), phase, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
    phase.client_cpu_s = time.process_time() - cpu
    return phase


async def _low_load(base: str, ids: list[str]) -> list[float]:
    """Latencies of one client sending one account with reasons at a time."""
    phase = Phase("low load", 0.0, 0.0)
    async with _session(base, 1) as client:
        for k in range(LOW_LOAD_REQUESTS):
            await _one(client, _one_account(ids, k), phase)
    return phase.ok_latency


def _mean_batch(base: str) -> tuple[float, float]:
    """Model calls of /score so far and the requests they answered, from /metrics."""
    text = httpx.get(f"{base}/metrics", headers={"X-API-Key": API_KEY}, timeout=10).text
    totals = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for key in totals:
            if line.startswith(f"tiering_batch_size_{key}{{") and 'endpoint="score"' in line:
                totals[key] += float(line.rsplit(" ", 1)[1])
    return totals["count"], totals["sum"]


# The servers of the single-account table: answers by id scored ahead for the snapshot (the
# default), then computed per request with and without batching.
SINGLE_ACCOUNT_SERVERS: list[tuple[str, dict[str, str]]] = [
    ("precomputed by id (default)", {}),
    ("computed, batching", {"TIERING_PRECOMPUTE_MAX_ACCOUNTS": "0"}),
    (
        "computed, no batching",
        {"TIERING_PRECOMPUTE_MAX_ACCOUNTS": "0", "TIERING_BATCHING": "false"},
    ),
]


def _single_account_rows(root: Path, bundle: Path, snapshot: Path, ids: list[str]) -> list[Any]:
    """Low load and the open-loop rate, one server per setting of SINGLE_ACCOUNT_SERVERS."""
    from serving.settings import workers_from_env

    rows: list[Any] = []
    for k, (mode, settings) in enumerate(SINGLE_ACCOUNT_SERVERS):
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        log = root / f"server-{k}.log"
        server = _start(bundle, snapshot, port, log, **settings)
        precomputed = "TIERING_PRECOMPUTE_MAX_ACCOUNTS" not in settings
        try:
            if precomputed:
                wait_precomputed(base, len(ids), {"X-API-Key": API_KEY})
            asyncio.run(_open_loop(base, ids, "warm-up", 20.0, seconds=3.0, body=_one_account))
            low = _low_load(base, ids)
            latencies = asyncio.run(low)
            calls_before, answered_before = _mean_batch(base)
            phase = asyncio.run(
                _open_loop(
                    base,
                    ids,
                    f"{RATE:.0f}/s",
                    RATE,
                    seconds=RATE_SECONDS,
                    body=_one_account,
                    cap=int(RATE * RATE_SECONDS),
                )
            )
            calls, answered = _mean_batch(base)
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
        rows.append(
            [
                mode,
                "low load, 1 client",
                "-",
                "-",
                "-",
                _ms(latencies, 0.5),
                "-",
                _ms(latencies, 0.99),
                "no model call" if precomputed else "1.0",
                "-",
                "-",
            ]
        )
        errors = sum(v for k, v in phase.statuses.items() if k != "200")
        calls -= calls_before
        merged = f"{(answered - answered_before) / calls:.1f}" if calls else "no model call"
        rows.append(
            [
                mode,
                f"open loop {RATE_SECONDS:.0f} s",
                f"{phase.offered_rps:.0f}",
                f"{phase.statuses['200'] / phase.seconds:.1f}",
                str(errors),
                _ms(phase.ok_latency, 0.5),
                _ms(phase.ok_latency, 0.95),
                _ms(phase.ok_latency, 0.99),
                merged,
                ", ".join(f"{k}: {v}" for k, v in sorted(phase.statuses.items()) if k != "200")
                or "none",
                f"{phase.client_cpu_s / phase.seconds:.0%}",
            ]
        )
    print_table(
        f"One account with reasons per request, {workers_from_env()} workers, "
        f"load average before: {os.getloadavg()[0]:.1f}",
        [
            "server",
            "phase",
            "offered req/s",
            "served req/s",
            "errors",
            "p50",
            "p95",
            "p99",
            "requests per model call",
            "errors by kind",
            "load client CPU (of a core)",
        ],
        rows,
    )
    return rows


def main() -> None:
    from serving.settings import DEFAULT_MAX_CONCURRENCY, workers_from_env

    clients = DEFAULT_MAX_CONCURRENCY * workers_from_env()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        root = Path(tmp)
        bundle, snapshot, ids = _deployment(root)
        _single_account_rows(root, bundle, snapshot, ids)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        # Computed per request: 100 accounts by id would otherwise be looked up, not scored.
        server = _start(
            bundle, snapshot, port, root / "server.log", TIERING_PRECOMPUTE_MAX_ACCOUNTS="0"
        )
        try:
            capacity = asyncio.run(_closed_loop(base, ids, clients))
            # Callers that do not wait for a free connection: what the service sheds is seen.
            phases = [
                asyncio.run(
                    _open_loop(
                        base, ids, f"{x}x capacity", x * capacity, connections=OVERLOAD_CONNECTIONS
                    )
                )
                for x in (1, 3)
            ]
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    rows = [["capacity (closed loop)", "-", f"{capacity:.1f}", "100%", "", "", "", "", ""]]
    rows += [p.row(capacity) for p in phases]
    print_table(
        f"Service under load on loopback: {ACCOUNTS_PER_REQUEST}-account requests with reasons, "
        f"{SECONDS:.0f} s per phase, computed per request with batching, "
        f"{clients} clients for capacity",
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
        + ("yes" if verdict else "NO")
    )


if __name__ == "__main__":
    main()
