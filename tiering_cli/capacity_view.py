"""The owner and territory breakdown of a run's tiers, printed by `tiering score`."""

from __future__ import annotations

import pandas as pd
from rich.table import Table


def book_breakdown(scores: pd.DataFrame, books: pd.DataFrame | None) -> list[Table]:
    """Per territory: accounts and Tier 1 / 2 / 3; per owner: the spread of Tier 1 sizes."""
    if books is None or books.empty:
        return []
    frame = pd.DataFrame(
        {"tier": scores["tier"].to_numpy(), **{c: books[c].to_numpy() for c in books.columns}}
    )
    tables = []
    if "territory" in frame:
        counts = (
            frame.assign(territory=frame["territory"].fillna("(no territory)"))
            .groupby(["territory", "tier"])
            .size()
            .unstack(fill_value=0)
            .reindex(columns=[1, 2, 3], fill_value=0)
        )
        table = Table(title="Tiers by territory")
        for col in ("Territory", "Accounts", "Tier 1", "Tier 2", "Tier 3"):
            table.add_column(col, justify="left" if col == "Territory" else "right")
        for name, row in counts.iterrows():
            table.add_row(
                str(name), f"{int(row.sum()):,}", *(f"{int(row[t]):,}" for t in (1, 2, 3))
            )
        tables.append(table)
    if "owner" in frame:
        owners = frame.assign(owner=frame["owner"].fillna("(no owner)"))
        t1 = owners.groupby("owner")["tier"].apply(lambda t: int((t == 1).sum()))
        table = Table(title=f"Tier 1 per owner ({len(t1)} owners)")
        for col in ("Min", "Median", "Max", "Owners without Tier 1"):
            table.add_column(col, justify="right")
        table.add_row(
            str(int(t1.min())),
            f"{float(t1.median()):g}",
            str(int(t1.max())),
            str(int((t1 == 0).sum())),
        )
        tables.append(table)
    return tables
