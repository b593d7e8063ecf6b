"""The data-quality report of a loaded export: what is there, what is missing, what was
cleaned on the way in. ``quality_report`` computes it as data (tests and notebooks read
it); ``render_quality`` prints it with rich for ``tiering validate``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from features.config import FeatureConfig, IcpConfig, LeakageConfig
from features.contract import CleaningReport, Problem
from features.tables import Tables

MIN_SLICES = 3
"""Train, calibration and test: at least one monthly snapshot each."""
DAYS_PER_MONTH = 30.4375

DATE_COLUMNS = {
    "opportunities": ("created_at", "closed_at"),
    "activities": ("occurred_at",),
}


@dataclass(frozen=True)
class QualityReport:
    """rows: rows per table. deals: won, lost, open, win_rate (won / closed), median won amount.
    date_ranges: table, column, first, last, missing. missingness: table, column, missing, share.
    cleaning: the CleaningReport as a frame. orphans: name -> count (accounts without deals, ...)
    with a few example ids in ``orphan_examples``. deals_per_account: mean, median, p90, max over
    accounts with at least one deal. consequences: what the export lacks and what the models do
    about it (the loader's notes)."""

    rows: dict[str, int]
    deals: dict[str, float]
    date_ranges: pd.DataFrame
    missingness: pd.DataFrame
    cleaning: pd.DataFrame
    orphans: dict[str, int]
    orphan_examples: dict[str, list[str]]
    deals_per_account: dict[str, float]
    consequences: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (dates as ISO strings)."""
        ranges = self.date_ranges.assign(
            first=self.date_ranges["first"].astype(str), last=self.date_ranges["last"].astype(str)
        )
        return {
            "rows": self.rows,
            "deals": self.deals,
            "date_ranges": ranges.to_dict("records"),
            "missingness": self.missingness.to_dict("records"),
            "cleaning": self.cleaning.to_dict("records"),
            "orphans": self.orphans,
            "orphan_examples": self.orphan_examples,
            "deals_per_account": self.deals_per_account,
            "consequences": list(self.consequences),
        }


def quality_report(tables: Tables, cleaning: CleaningReport | None = None) -> QualityReport:
    frames = _frames(tables)
    opportunities = tables.opportunities
    outcomes = opportunities["outcome"].value_counts()
    won, lost = int(outcomes.get("won", 0)), int(outcomes.get("lost", 0))
    deals: dict[str, float] = {
        "won": won,
        "lost": lost,
        "open": int(outcomes.get("open", 0)),
        "win_rate": won / (won + lost) if won + lost else float("nan"),
    }
    if "amount" in opportunities:
        won_amounts = opportunities.loc[opportunities["outcome"] == "won", "amount"]
        deals["median_won_amount"] = (
            float(won_amounts.median()) if len(won_amounts) else float("nan")
        )

    ranges = [
        {
            "table": table,
            "column": column,
            "first": frames[table][column].min(),
            "last": frames[table][column].max(),
            "missing": int(frames[table][column].isna().sum()),
        }
        for table, columns in DATE_COLUMNS.items()
        if table in frames
        for column in columns
        if column in frames[table]
    ]
    missing = [
        {
            "table": table,
            "column": column,
            "missing": int(frame[column].isna().sum()),
            "share": float(frame[column].isna().mean()) if len(frame) else 0.0,
        }
        for table, frame in frames.items()
        for column in frame.columns
    ]

    account_ids = tables.accounts["account_id"]
    with_deals = set(opportunities["account_id"])
    orphans = {"accounts without deals": account_ids[~account_ids.isin(with_deals)]}
    if tables.activities is not None:
        active = set(tables.activities["account_id"])
        orphans["accounts without activities"] = account_ids[~account_ids.isin(active)]
        orphans["accounts with activities but no deals"] = account_ids[
            account_ids.isin(active) & ~account_ids.isin(with_deals)
        ]
    per_account = opportunities.groupby("account_id").size()
    return QualityReport(
        rows={table: len(frame) for table, frame in frames.items()},
        deals=deals,
        date_ranges=pd.DataFrame(ranges, columns=["table", "column", "first", "last", "missing"]),
        missingness=pd.DataFrame(missing, columns=["table", "column", "missing", "share"]),
        cleaning=(cleaning or CleaningReport()).to_frame(),
        orphans={name: len(ids) for name, ids in orphans.items()},
        orphan_examples={name: [str(i) for i in ids.head(3)] for name, ids in orphans.items()},
        deals_per_account={
            "mean": float(per_account.mean()) if len(per_account) else 0.0,
            "median": float(per_account.median()) if len(per_account) else 0.0,
            "p90": float(per_account.quantile(0.9)) if len(per_account) else 0.0,
            "max": float(per_account.max()) if len(per_account) else 0.0,
        },
        consequences=list(cleaning.notes) if cleaning is not None else [],
    )


def _frames(tables: Tables) -> dict[str, pd.DataFrame]:
    frames = {"accounts": tables.accounts, "opportunities": tables.opportunities}
    if tables.activities is not None:
        frames["activities"] = tables.activities
    return frames


def render_quality(report: QualityReport, console: Console) -> None:
    """Print the report as a few compact tables (missingness only for columns with gaps)."""
    summary = Table(title="Data", show_header=True, header_style="bold")
    summary.add_column("table")
    summary.add_column("rows", justify="right")
    for table, rows in report.rows.items():
        summary.add_row(table, f"{rows:,}")
    console.print(summary)

    deals = report.deals
    closed = deals["won"] + deals["lost"]
    line = (
        f"Deals: {int(deals['won']):,} won, {int(deals['lost']):,} lost, "
        f"{int(deals['open']):,} open; win rate {deals['win_rate']:.1%} of {int(closed):,} closed"
    )
    if "median_won_amount" in deals and pd.notna(deals["median_won_amount"]):
        line += f"; median won amount {deals['median_won_amount']:,.0f}"
    console.print(line)
    per = report.deals_per_account
    console.print(
        f"Deals per account (accounts with deals): mean {per['mean']:.1f}, "
        f"median {per['median']:.0f}, p90 {per['p90']:.0f}, max {per['max']:.0f}"
    )

    if len(report.date_ranges):
        dates = Table(title="Date ranges", header_style="bold")
        for column in ("table", "column", "first", "last", "empty"):
            dates.add_column(column, justify="right" if column == "empty" else "left")
        for row in report.date_ranges.itertuples(index=False):
            dates.add_row(
                str(row.table), str(row.column), _day(row.first), _day(row.last), f"{row.missing:,}"
            )
        console.print(dates)

    gaps = report.missingness[report.missingness["missing"] > 0]
    if len(gaps):
        missing = Table(title="Missing values", header_style="bold")
        for column in ("table", "column", "missing", "share"):
            missing.add_column(
                column, justify="right" if column in ("missing", "share") else "left"
            )
        for row in gaps.itertuples(index=False):
            missing.add_row(
                str(row.table), escape(str(row.column)), f"{row.missing:,}", f"{row.share:.1%}"
            )
        console.print(missing)
    else:
        console.print("Missing values: none")

    if len(report.cleaning):
        cleaning = Table(title="Cleaning applied", header_style="bold")
        for column in ("table", "column", "step", "rows", "examples"):
            cleaning.add_column(column, justify="right" if column == "rows" else "left")
        for row in report.cleaning.itertuples(index=False):
            cleaning.add_row(
                str(row.table),
                escape(str(row.column)),
                str(row.step),
                f"{row.rows:,}",
                escape(str(row.examples)),
            )
        console.print(cleaning)
    else:
        console.print("Cleaning applied: none")

    for name, count in report.orphans.items():
        examples = report.orphan_examples.get(name) or []
        shown = f" (e.g. {escape(', '.join(examples))})" if count and examples else ""
        console.print(f"Orphans: {count:,} {name}{shown}")
    for note in report.consequences:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)


def _day(value: Any) -> str:
    return "" if pd.isna(value) else pd.Timestamp(value).strftime("%Y-%m-%d")


def training_problems(
    tables: Tables,
    icp: IcpConfig,
    features: FeatureConfig | None = None,
    leakage: LeakageConfig | None = None,
    post_outcome: list[str] | None = None,
    horizon_days: int | None = None,
    warmup_days: int = 0,
) -> list[Problem]:
    """What ``train`` would refuse later, found before it runs: ICP criteria on columns the
    export lacks, only one outcome among closed deals, (given the training ``horizon_days``)
    too few monthly snapshots for the time split, and (given ``features`` and ``leakage``) the
    leakage audit of the features training would build."""
    problems = []
    accounts = tables.accounts
    for criterion in icp.criteria:
        if criterion.column not in accounts.columns:
            problems.append(
                Problem(
                    "icp",
                    criterion.column,
                    f"criterion {criterion.label!r} uses a column the accounts do not have; map "
                    "the column under 'columns' or remove the criterion from [[icp.criteria]]",
                )
            )
    opps = tables.opportunities
    outcomes = set(opps["outcome"].dropna())
    for outcome in ("won", "lost"):
        if outcome not in outcomes:
            problems.append(
                Problem(
                    "opportunities",
                    "outcome",
                    f"no {outcome} deals: the win model learns from won and lost deals (check "
                    "labels.outcome in the config)",
                )
            )
    if not problems and horizon_days is not None:
        problems.extend(_snapshot_problems(tables, horizon_days, warmup_days))
    if not problems and features is not None and leakage is not None:
        problems.extend(_leakage_problems(tables, features, leakage, post_outcome or []))
    return problems


def _leakage_problems(
    tables: Tables, features: FeatureConfig, leakage: LeakageConfig, post_outcome: list[str]
) -> list[Problem]:
    """The audit training runs before fitting, on the same point-in-time features."""
    from features.build import build_features, training_requests
    from features.leakage import audit

    requests = training_requests(tables.opportunities)
    frame = build_features(tables, requests, features)
    report = audit(frame, requests["won"].to_numpy(), None, leakage, post_outcome)
    return [
        Problem(
            "features",
            None,
            f"leakage audit would refuse training: {problem} (remove the feature, or allow it "
            "under [leakage.allow] with the reason it is known before a deal is created)",
        )
        for problem in report.problems
    ]


def _snapshot_problems(tables: Tables, horizon_days: int, warmup_days: int) -> list[Problem]:
    """Training takes a snapshot of every account on each month start from the first deal plus
    the warm-up until the last date whose label window (``horizon_days``) ends inside the data,
    and keeps a gap of the horizon before calibration and before test (training.snapshots)."""
    created = tables.opportunities["created_at"].dropna()
    if created.empty:
        return []
    end = tables.end_of_data()
    first = (created.min() + pd.Timedelta(days=warmup_days)).normalize()
    last = end + pd.Timedelta(days=1) - pd.Timedelta(days=horizon_days)
    start = first.to_period("M").to_timestamp()
    if start < first:
        start = start + pd.offsets.MonthBegin(1)
    months = len(pd.date_range(start, last, freq="MS"))
    gap = int(np.ceil(horizon_days / DAYS_PER_MONTH))
    need = MIN_SLICES + 2 * gap
    if months >= need:
        return []
    return [
        Problem(
            "opportunities",
            "created_at",
            f"deals from {created.min():%Y-%m-%d} to {end:%Y-%m-%d} give {months} monthly "
            f"snapshots with a label window of {horizon_days} days; training needs at least "
            f"{need} (three slices and two gaps of {gap} months): set a shorter "
            "[training] horizon_days, or export more history",
        )
    ]
