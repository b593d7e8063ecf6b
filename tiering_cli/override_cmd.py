"""`tiering override set|list|clear`: rep overrides of an account's tier, kept in the tier
history database; the next `tiering score` applies them after the policy."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer
from rich.table import Table

from tiering_cli.common import CONFIG_OPTION, console, fail, known_errors, read_config

app = typer.Typer(help="Rep overrides: set, list and clear an account's tier by hand.")


def _date(value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise fail(f"--until: {value!r} is not a date; use YYYY-MM-DD") from None


def _snapshot_ids(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    try:
        return [str(a) for a in pq.read_table(path, columns=["account_id"]).column(0).to_pylist()]
    except (OSError, ValueError, KeyError):
        return None


@app.command("set")
def set_(
    account_id: str = typer.Argument(..., help="The account's id, as in the account list."),
    tier: int = typer.Option(..., "--tier", help="The tier the account must hold: 1, 2 or 3."),
    reason: str = typer.Option("", "--reason", help="Why (required); shown in the history."),
    by: str = typer.Option("", "--by", help="Who sets it (required)."),
    until: str | None = typer.Option(
        None, "--until", help="Last day it holds (YYYY-MM-DD); default: until cleared."
    ),
    config: Path = CONFIG_OPTION,
) -> None:
    """Set an account's tier by hand. It applies after the policy at every batch run until it
    expires or is cleared, survives re-scoring and retraining, and counts against capacity:
    an override into Tier 1 takes a seat from the owner's lowest-priority Tier 1 account."""
    from serving.history import HistoryError
    from serving.override_api import known_account_ids
    from serving.overrides import OverrideError, set_override
    from serving.tier_changes import open_history

    cfg = read_config(config)
    day = _date(until)
    with known_errors():
        try:
            store = open_history(cfg)
            known = known_account_ids(_snapshot_ids(cfg.scoring.snapshot), store)
            done = set_override(
                store, account_id, tier=tier, reason=reason, by=by, until=day, known_ids=known
            )
        except (OverrideError, HistoryError) as exc:
            raise fail(str(exc)) from None
    console.print(f"{done.account_id}: {done.describe()} (applies from the next `tiering score`)")


@app.command("list")
def list_(config: Path = CONFIG_OPTION) -> None:
    """The overrides in force today."""
    from serving.history import HistoryError
    from serving.overrides import active_overrides
    from serving.tier_changes import open_history

    cfg = read_config(config)
    with known_errors():
        try:
            rows = active_overrides(open_history(cfg))
        except HistoryError as exc:
            raise fail(str(exc)) from None
    if not rows:
        console.print("no overrides in force")
        return
    table = Table(title=f"{len(rows)} overrides in force")
    for col in ("Account", "Tier", "Reason", "By", "Set on", "Until"):
        table.add_column(col, overflow="fold")
    for o in rows:
        table.add_row(
            o.account_id,
            str(o.tier),
            o.reason,
            o.set_by,
            o.set_at.date().isoformat(),
            "-" if o.until is None else o.until.isoformat(),
        )
    console.print(table)


@app.command("clear")
def clear(
    account_id: str = typer.Argument(..., help="The account's id."),
    by: str = typer.Option("", "--by", help="Who clears it (required)."),
    config: Path = CONFIG_OPTION,
) -> None:
    """Clear an account's override; at the next batch run it returns to the policy's tier."""
    from serving.history import HistoryError
    from serving.overrides import OverrideError, clear_override
    from serving.tier_changes import open_history

    cfg = read_config(config)
    with known_errors():
        try:
            done = clear_override(open_history(cfg), account_id, by=by)
        except (OverrideError, HistoryError) as exc:
            raise fail(str(exc)) from None
    console.print(f"{done.account_id}: cleared ({done.describe()})")
