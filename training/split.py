"""What the time split of training shares with the rest of the project: its error, and the
maturity cut-off that leaves right-censored deals out (the deal-win model's rows).

The account snapshots are cut by ``training.snapshots.split_snapshots``.
"""

from __future__ import annotations

# The validate command checks the same cut-off before anyone trains, so it lives with the data.
from features.tables import maturity_cutoff

__all__ = ["SplitError", "maturity_cutoff"]


class SplitError(ValueError):
    """The data cannot be split into three non-empty time slices."""
