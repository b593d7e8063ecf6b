"""`tiering explain ACCOUNT_ID` (an account's tiers over time and why they changed) and
`tiering backtest` (the stability policy replayed over monthly runs)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from tiering_cli.common import CONFIG_OPTION, console, fail, known_errors, progress, read_config
from tiering_cli.score_cmd import MODEL_OPTION


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


def backtest(
    config: Path = CONFIG_OPTION,
    model: str = MODEL_OPTION,
    months: int = typer.Option(
        12, "--months", min=3, help="Monthly transitions to replay (runs = months + 1)."
    ),
    end: str | None = typer.Option(
        None,
        "--end",
        help="Last date with outcomes, YYYY-MM-DD; default: the end of the data. The last run "
        "is the month end a full month before it.",
    ),
) -> None:
    """Replay monthly runs with and without the configured stability policy and print Tier 1
    churn (monthly, quarterly), all-tier churn and the revenue Tier 1 captured."""
    import pandas as pd

    from features.contract import load_tables
    from serving.backtest import backtest as run_backtest
    from serving.backtest import month_ends
    from serving.model_loader import ModelNotFoundError
    from tiering_cli.score_cmd import _load_model

    cfg = read_config(config)
    with known_errors():
        try:
            loaded = _load_model(cfg, model)
        except ModelNotFoundError as exc:
            raise fail(str(exc)) from None
        try:
            last = pd.Timestamp(end) if end else load_tables(cfg.data).tables.end_of_data()
        except ValueError:
            raise fail(f"--end: not a date: {end!r} (use YYYY-MM-DD)") from None
        dates = month_ends(last, months)
        with progress() as bar:
            task = bar.add_task("Replaying runs", total=len(dates))
            result = run_backtest(
                cfg, loaded.bundle, dates, lambda done, _: bar.update(task, completed=done)
            )
    s = cfg.stability
    table = Table(
        title=f"Stability backtest: {len(dates)} monthly runs {dates[0].date()} .. "
        f"{dates[-1].date()} (model {loaded.version}; review every {s.review_months} months, "
        f"review margin {s.review_margin}, change margin {s.change_margin})"
    )
    for col in (
        "Setting",
        "Tier 1 monthly churn",
        "Tier 1 quarterly churn",
        "Any-tier monthly churn",
        "Revenue captured by Tier 1",
    ):
        table.add_column(col, justify="left" if col == "Setting" else "right")
    for row in result.summary.itertuples():
        table.add_row(
            str(row.setting),
            f"{row.tier1_monthly_churn:.1%}",
            f"{row.tier1_quarterly_churn:.1%}",
            f"{row.any_tier_monthly_churn:.1%}",
            f"{row.tier1_revenue_captured:.1%}",
        )
    console.print(table)
    base, stable = result.summary.iloc[0], result.summary.iloc[1]
    console.print(
        f"revenue captured by Tier 1: {100 * (stable.tier1_revenue_captured - base.tier1_revenue_captured):+.2f} "
        f"points with stability; won revenue in the windows ${base.won_revenue:,.0f}"
    )
