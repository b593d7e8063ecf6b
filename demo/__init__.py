"""The demo CRM: a seeded synthetic export (accounts, opportunities, activities) and the
generator's ground truth beside it.

A data source, not a layer of the product: only the CLI (`tiering demo-data`), the tests, the
benchmarks and training's truth report import it; nothing under ``features``, ``tiering`` or
``serving`` does.
"""

from demo.generator import DemoData, Format, TruthAsOf, generate, write_demo
from demo.truth import HORIZON_DAYS, Truth, TruthError, horizon_truth, read_truth

__all__ = [
    "HORIZON_DAYS",
    "DemoData",
    "Format",
    "Truth",
    "TruthAsOf",
    "TruthError",
    "generate",
    "horizon_truth",
    "read_truth",
    "write_demo",
]
