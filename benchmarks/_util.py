"""Shared by the benchmarks: the machine description, medians, peak memory and table output."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"
console = Console(highlight=False)


def machine() -> str:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}; {os.cpu_count()} cores; {mem_gib:.0f} GiB; Python {platform.python_version()}"


def median_time(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Median wall time of `repeat` calls, and the last call's result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peak_rss_mib() -> float:
    """Peak resident memory of the calling process (a Dask worker's, run there by
    ``client.run``) since it started or since :func:`reset_peak_rss`: the kernel's VmHWM,
    which a process does not inherit from the one that spawned it (``ru_maxrss`` survives the
    exec)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> str:
    """Start the calling process's peak memory afresh (Linux's ``clear_refs``); returns the
    note a figure needs where the kernel did not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return " (setup included)"
    return ""


def run_isolated(module: str, *args: str) -> dict[str, Any]:
    """Run `python -m module args` in a fresh process and parse its last stdout line as JSON,
    so that each measurement's peak memory is its own."""
    out = subprocess.run(
        [sys.executable, "-m", module, *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=f"{title}\n[dim]{machine()}[/]")
    for col in columns:
        table.add_column(col, justify="right" if col != columns[0] else "left")
    for row in rows:
        table.add_row(*[f"{v:,.3g}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    # The title's start, and a digest of all of it: long titles stay within a file name.
    slug = "".join(c if c.isalnum() else "_" for c in title.lower()).strip("_")[:100]
    name = f"{slug.rstrip('_')}-{hashlib.sha1(title.encode()).hexdigest()[:8]}"
    (RESULTS / f"{name}.json").write_text(
        json.dumps(
            {
                "title": title,
                "machine": machine(),
                "columns": list(columns),
                "rows": [list(map(str, r)) for r in rows],
            },
            indent=2,
        )
    )


def demo_config(root: Path, paths: dict[str, Path]) -> Any:
    """The repository's demo config pointed at a demo export the benchmark wrote into ``root``
    (``paths`` as ``demo.write_demo`` returns them), with the account snapshot beside it."""
    from tiering.config import load_config

    base = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.toml")
    # Every table the demo config reads, pointed at the file the demo wrote for it.
    tables = {
        name: source.model_copy(update={"path": paths[name]})
        for name, source in base.data.sources().items()
        if name in paths
    }
    data = base.data.model_copy(update={**tables, "truth_dir": paths["accounts"].parent / "truth"})
    scoring = base.scoring.model_copy(update={"snapshot": root / "snapshot.parquet"})
    return base.model_copy(update={"data": data, "scoring": scoring})


def wait_precomputed(
    base: str, accounts: int, headers: dict[str, str], timeout_s: float = 300.0
) -> None:
    """Until the service at ``base`` answers every one of ``accounts`` snapshot accounts from
    its precomputed scores (``GET /model``), then as long again: each worker builds its own
    table, and /model answers from one of them."""
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        info = httpx.get(f"{base}/model", headers=headers, timeout=10).json()
        if info.get("precomputed_accounts", 0) >= accounts:
            time.sleep(time.monotonic() - started)
            return
        time.sleep(0.5)
    raise RuntimeError(f"the service did not precompute {accounts} accounts in {timeout_s} s")


def bentoml_serve_command(port: int) -> list[str]:
    """``bentoml serve`` of the service on 127.0.0.1:``port``, from this environment."""
    return [
        str(Path(sys.executable).parent / "bentoml"),
        "serve",
        "serving.service:TieringService",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
