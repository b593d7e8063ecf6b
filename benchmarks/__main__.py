"""`python -m benchmarks [NAME ...]`: run the named benchmarks (default: all), one after another."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(names: list[str]) -> None:
    found = sorted(
        m.name
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.startswith("bench_")
    )
    chosen = [n for n in found if not names or n.removeprefix("bench_") in names or n in names]
    if not chosen:
        sys.exit(f"no benchmark named {names}; have: {', '.join(found)}")
    for name in chosen:
        importlib.import_module(f"benchmarks.{name}").main()


if __name__ == "__main__":
    main(sys.argv[1:])
