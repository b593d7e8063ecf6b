"""`tiering backtest`: the champion's tiers as of a past date against what the next horizon
brought, beside the naive account rankings."""

from __future__ import annotations

from pathlib import Path

import typer

from tiering_cli.common import CONFIG_OPTION, console, fail, known_errors, read_config
from tiering_cli.model_cmd import capture_table
from tiering_cli.score_cmd import MODEL_OPTION, resolve_model


def backtest(
    as_of: list[str] = typer.Option(
        ...,
        "--as-of",
        help="A past date YYYY-MM-DD whose horizon has ended; repeat for several dates.",
    ),
    config: Path = CONFIG_OPTION,
    model: str = MODEL_OPTION,
) -> None:
    """Tier the account list as of each past date (what `tiering score --as-of DATE` gives)
    and show the share of the next horizon's won revenue that the top 5 / 10 / 20 % of
    accounts and Tier 1 booked, for the model and for each naive account ranking."""
    from features.contract import load_tables
    from training.backtest import BacktestError
    from training.backtest import backtest as run_backtest

    cfg = read_config(config)
    with known_errors():
        loaded = resolve_model(cfg, model)
        tables = load_tables(cfg.data).tables
        for date in as_of:
            try:
                result = run_backtest(cfg, loaded.bundle, date, tables)
            except BacktestError as exc:
                raise fail(str(exc)) from None
            console.print(
                f"model [bold]{loaded.version}[/] as of {result.as_of.date()}: "
                f"{result.accounts:,} accounts, ${result.won_revenue:,.0f} won in the next "
                f"{result.horizon_days} days"
            )
            console.print(capture_table(result.evaluation.capture))
