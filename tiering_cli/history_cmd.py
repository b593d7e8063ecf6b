"""`tiering explain ACCOUNT_ID`: an account's tiers over time and why they changed."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from tiering_cli.common import CONFIG_OPTION, console, fail, known_errors, read_config


def explain(
    account_id: str = typer.Argument(..., help="The account's id, as in the account list."),
    config: Path = CONFIG_OPTION,
    last: int = typer.Option(12, "--last", min=1, help="Runs to show, newest last."),
) -> None:
    """An account's tier in every recorded run, and why it changed: the cause (review,
    dramatic change, gate, capacity, override), the priority against the cut-off, and the
    drivers whose contributions moved most."""
    from serving.account_history import account_timeline
    from serving.history import HistoryError
    from serving.tier_changes import open_history

    cfg = read_config(config)
    with known_errors():
        try:
            timeline = account_timeline(open_history(cfg), account_id)
        except HistoryError as exc:
            raise fail(str(exc)) from None
    if timeline is None:
        raise fail(
            f"account {account_id!r}: not in the tier history (run `tiering score` first, or "
            "check the id)"
        )
    table = Table(title=f"{account_id}: tiers over time")
    for col in ("As of", "Tier", "Base tier", "Priority", "Tier since", "Why it changed"):
        table.add_column(col, overflow="fold")
    for entry in timeline.entries[-last:]:
        table.add_row(
            entry.as_of,
            str(entry.tier),
            str(entry.base_tier),
            f"{entry.priority:.3f}",
            entry.tier_since,
            entry.change_reason or "-",
        )
    console.print(table)
    latest = timeline.entries[-1]
    console.print(f"now: Tier {latest.tier} since {latest.tier_since} — {latest.reason_summary}")
