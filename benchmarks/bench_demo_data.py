"""Demo CRM generator: time and peak memory to generate and write 10k, 100k and 1M accounts.

Each size runs in a fresh process (`run_isolated`) so that its peak memory is its own; the
chunk workers' peak is reported beside the parent's. The big sizes write Parquet; the 1M
account truth keeps only the end-date snapshot (37 monthly snapshots of a million accounts
are 37M rows that no test needs).

`python -m benchmarks demo_data`, or one measurement:
`python -m benchmarks.bench_demo_data ACCOUNTS FMT TRUTH_AS_OF`.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks._util import peak_rss_mib, print_table, run_isolated

# accounts, format, account-truth snapshots, repeats (median time)
CASES = (
    (10_000, "csv", "monthly", 3),
    (100_000, "parquet", "monthly", 1),
    (1_000_000, "parquet", "end", 1),
)


def _rows(path: Path) -> int:
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    with path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 24), b"")) - 1


def measure(n_accounts: int, fmt: str, truth_as_of: str) -> dict[str, float | int]:
    from demo import write_demo

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = write_demo(tmp, n_accounts=n_accounts, fmt=fmt, truth_as_of=truth_as_of)  # type: ignore[arg-type]
        seconds = time.perf_counter() - start
        rows = {name: _rows(path) for name, path in paths.items()}
        size_mib = sum(p.stat().st_size for p in paths.values()) / 2**20
    workers_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "seconds": seconds,
        "peak_mib": peak_rss_mib(),
        "workers_peak_mib": workers_mib,
        "size_mib": size_mib,
        **rows,
    }


def main() -> None:
    table = []
    for n_accounts, fmt, truth_as_of, repeats in CASES:
        runs = [
            run_isolated("benchmarks.bench_demo_data", str(n_accounts), fmt, truth_as_of)
            for _ in range(repeats)
        ]
        last = runs[-1]
        table.append(
            [
                f"{n_accounts:,}",
                f"{fmt}/{truth_as_of}",
                statistics.median(r["seconds"] for r in runs),
                max(r["peak_mib"] for r in runs),
                max(r["workers_peak_mib"] for r in runs),
                f"{last['opportunities']:,}",
                f"{last['activities']:,}",
                f"{last['accounts_truth']:,}",
                last["size_mib"],
            ]
        )
    print_table(
        "Demo CRM generator (write_demo, 2 worker processes)",
        [
            "accounts",
            "output",
            "s",
            "MiB parent",
            "MiB worker",
            "deals",
            "activity rows",
            "truth rows",
            "MiB out",
        ],
        table,
    )


if __name__ == "__main__":
    if len(sys.argv) == 4:
        print(json.dumps(measure(int(sys.argv[1]), sys.argv[2], sys.argv[3])))
    else:
        main()
