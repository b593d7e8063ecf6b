"""`tiering icp ...`: the Ideal Customer Profile seen from the deal history."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import typer
from rich.table import Table

from tiering_cli.common import CONFIG_OPTION, console, fail, known_errors, read_config

app = typer.Typer(no_args_is_help=True)


@app.callback()
def icp() -> None:
    """The Ideal Customer Profile: what the won/lost history says it should be."""


_EVIDENCE_STYLE = {
    "wins more": "bold green",
    "wins less": "red",
    "weak (overlaps average)": "dim",
    "weak (could be chance)": "yellow",
    "too few deals": "dim",
    "too few accounts": "dim",
}


@app.command("suggest")
def suggest(
    config: Path = CONFIG_OPTION,
    min_deals: int = typer.Option(
        30, "--min-deals", min=1, help="Closed deals a segment needs before its win rate counts."
    ),
    min_accounts: int = typer.Option(
        5,
        "--min-accounts",
        min=1,
        help="Distinct accounts a segment needs: many deals of one account are its habits.",
    ),
) -> None:
    """Propose an ICP from history: win rate (with a Wilson 95 % interval) and median won deal
    size by industry, size band and region, how many deals and accounts support each, and a
    one-line verdict that says so when the evidence for an ICP is weak."""
    from features.contract import load_tables
    from features.icp import icp_verdict, suggest_icp

    cfg = read_config(config)
    with known_errors():
        tables = load_tables(cfg.data).tables
    try:
        suggestion = suggest_icp(tables, min_deals=min_deals, min_accounts=min_accounts)
    except ValueError as exc:  # e.g. no closed deals: a fact about the data, not a crash
        raise fail(str(exc)) from None
    overall = suggestion.attrs["overall_win_rate"]
    table = Table(
        title=f"Win rate by segment ({suggestion.attrs['overall_deals']:,} closed deals, "
        f"{overall:.0%} won overall)"
    )
    for name in ("dimension", "segment"):
        table.add_column(name)
    for name in ("deals", "accounts", "win rate", "95 % interval", "median won deal"):
        table.add_column(name, justify="right")
    table.add_column("evidence")
    for row in suggestion.to_dict("records"):
        style = _EVIDENCE_STYLE.get(row["evidence"], "")
        median = row["median_won_amount"]
        table.add_row(
            str(row["dimension"]),
            str(row["segment"]),
            f"{row['deals']:,}",
            f"{row['accounts']:,}",
            f"{row['win_rate']:.0%}",
            f"{row['ci_low']:.0%}-{row['ci_high']:.0%}",
            "-" if pd.isna(median) else f"{median:,.0f}",
            f"[{style}]{row['evidence']}[/]" if style else str(row["evidence"]),
        )
    console.print(table)
    console.print(icp_verdict(suggestion))
