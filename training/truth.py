"""The demo generator's ground truth, read only to report model / truth (never a feature)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from features.tables import Tables
from tiering.config import Config


def demo_truth(
    config: Config, tables: Tables, dates: pd.DatetimeIndex
) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The demo generator's truth, read only to report model / truth: expected revenue in H
    per account at ``dates``, and each deal's true P(win). (None, None) without a truth folder.
    """
    if config.data.truth_dir is None:
        return None, None
    from demo.truth import horizon_truth, read_truth

    truth = read_truth(Path(config.data.truth_dir))
    accounts = horizon_truth(truth, tables.opportunities, list(dates), config.training.horizon_days)
    return accounts, truth.opportunities
