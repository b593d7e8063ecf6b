"""`tiering report movement` and `tiering report performance` (the tier history read back) and
`tiering report stability` (the stability policy replayed over monthly runs)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tiering_cli.common import (
    CONFIG_OPTION,
    console,
    fail,
    known_errors,
    progress,
    read_config,
)
from tiering_cli.score_cmd import MODEL_OPTION, resolve_model

app = typer.Typer(
    help="Reports over the tier history (tier movement, per-tier performance and drift) and "
    "the stability policy's replay.",
    no_args_is_help=True,
)

OUT_OPTION = typer.Option(
    Path("outputs/reports"), "--out", "-o", help="Folder for the plots and tables."
)


@contextmanager
def _report_errors() -> Iterator[None]:
    from serving.history import HistoryError
    from serving.reports import ReportError

    with known_errors():
        try:
            yield
        except (HistoryError, ReportError) as exc:
            raise fail(str(exc)) from None


def _table(frame: Any, title: str, formats: dict[str, str] | None = None) -> Table:
    formats = formats or {}
    table = Table(title=title)
    table.add_column(str(frame.index.name or ""), justify="left")
    for col in frame.columns:
        table.add_column(str(col), justify="right")
    for idx, row in frame.iterrows():
        table.add_row(
            str(idx),
            *(formats.get(str(c), "{}").format(v) for c, v in row.items()),
        )
    return table


@app.command("movement")
def movement(
    config: Path = CONFIG_OPTION,
    since: str | None = typer.Option(
        None,
        "--since",
        help="Compare the latest run with the run on (or last before) this date, YYYY-MM-DD; "
        "default: the run before the latest.",
    ),
    out: Path = OUT_OPTION,
    top: int = typer.Option(10, "--top", min=1, help="Owners and territories to list."),
) -> None:
    """From-tier x to-tier matrix, moves by owner and territory, the top reasons for moves
    and the drivers that moved most; the plot as PNG and an HTML page."""
    import pandas as pd

    from serving.reports import movement as compute
    from serving.reports import write_movement
    from serving.tier_changes import open_history

    cfg = read_config(config)
    try:
        when = pd.Timestamp(since) if since else None
    except ValueError:
        raise fail(f"--since: not a date: {since!r} (use YYYY-MM-DD)") from None
    with _report_errors():
        m = compute(open_history(cfg), when)
        png, html = write_movement(m, out)
    matrix = m.matrix.copy()
    matrix.index = [str(i) for i in matrix.index]
    matrix.index.name = "from \\ to"
    console.print(f"[bold]Tier movement {m.start.date()} -> {m.end.date()}[/]")
    console.print(_table(matrix, "from-tier x to-tier"))
    console.print(
        f"accounts: {int(m.matrix.to_numpy().sum()):,}; dropped from the list: {m.dropped}"
    )
    console.print(_table(m.reasons, "Top reasons for moves", {"share": "{:.0%}"}))
    pct = {"share_moved": "{:.1%}"}
    console.print(_table(m.by_owner.head(top), "Moves by owner", pct))
    console.print(_table(m.by_territory.head(top), "Moves by territory", pct))
    console.print(f"plot: {png}\nHTML: {html}")


@app.command("performance")
def performance(
    config: Path = CONFIG_OPTION,
    horizon: int | None = typer.Option(
        None,
        "--horizon-days",
        min=1,
        help="Days after each run in which outcomes count; default: the model's horizon "
        "([training] horizon_days), the window its expected revenue speaks of.",
    ),
    psi_warning: float = typer.Option(
        0.2,
        "--psi-warning",
        min=0.0,
        help="PSI above which a feature or the score is flagged as drifted.",
    ),
    out: Path = OUT_OPTION,
    log: bool = typer.Option(True, "--log/--no-log", help="Log a monitoring run to MLflow."),
) -> None:
    """For every recorded run, what happened after it by tier: win rate, won revenue, deal
    size, cycle length, pipeline created, lift, predicted vs realised revenue; drift (PSI)
    of each feature and of the score between runs. Logged to MLflow as a monitoring run."""
    from features.contract import load_tables
    from serving.reports import log_performance
    from serving.reports import performance as compute
    from serving.tier_changes import open_history
    from tiering.store import resolve_uri
    from training.registry import artifact_root

    cfg = read_config(config)
    with _report_errors():
        store = open_history(cfg)
        tables = load_tables(cfg.data).tables
        if horizon is None:
            horizon = cfg.training.horizon_days
        perf = compute(
            store, tables.opportunities, horizon_days=horizon, end_of_data=tables.end_of_data()
        )
        drifted = drift_of_runs(cfg, store, psi_warning)
        run_id = (
            log_performance(
                perf,
                drifted,
                tracking_uri=resolve_uri(cfg.mlflow.tracking_uri)[0],
                experiment=f"{cfg.mlflow.experiment}-monitoring",
                out_dir=out,
                threshold=psi_warning,
                artifact_location=artifact_root(cfg.mlflow),
            )
            if log
            else None
        )
    shown = perf.set_index(["as_of", "tier"])[
        [
            "matured",
            "accounts",
            "win_rate",
            "won_revenue",
            "avg_deal_size",
            "cycle_days",
            "pipeline_deals",
            "lift",
            "predicted_revenue",
            "realised_revenue",
        ]
    ]
    shown.index = [f"{d} T{t}" for d, t in shown.index]
    shown.index.name = "run, tier"
    money = "${:,.0f}"
    console.print(
        _table(
            shown,
            f"Per-tier performance in the {horizon} days after each run",
            {
                "win_rate": "{:.1%}",
                "won_revenue": money,
                "avg_deal_size": money,
                "cycle_days": "{:.0f}",
                "lift": "{:.2f}",
                "predicted_revenue": money,
                "realised_revenue": money,
            },
        )
    )
    _book_views(store, tables, horizon)
    warned = drifted[drifted["warning"]] if len(drifted) else drifted
    console.print(
        f"drift: {len(warned)} of {len(drifted)} feature/score comparisons above PSI {psi_warning}"
        + (
            ""
            if warned.empty
            else ": " + ", ".join(f"{r.column} ({r.to}: {r.psi:.2f})" for r in warned.itertuples())
        )
    )
    if run_id is not None:
        console.print(f"MLflow monitoring run {run_id}; plots in {out}")


def _book_views(store: Any, tables: Any, horizon: int) -> None:
    """Overrides against what the model expected, and the territory and owner breakdown."""
    from serving.override_report import book_performance, override_outcomes

    end = tables.end_of_data()
    overridden = override_outcomes(
        store, tables.opportunities, horizon_days=horizon, end_of_data=end
    )
    if overridden.empty:
        console.print("overrides: none in force at any recorded run")
    else:
        console.print(
            _table(
                overridden.set_index(["as_of", "direction"]),
                f"Overridden accounts in the {horizon} days after each run: the model's "
                "expectation, what they realised, and their base-tier peers",
                {
                    "model_p_convert": "{:.1%}",
                    "realised_conversion": "{:.1%}",
                    "base_tier_peers_conversion": "{:.1%}",
                    "model_expected_revenue": "${:,.0f}",
                    "realised_revenue": "${:,.0f}",
                },
            )
        )
    for by in ("territory", "owner"):
        book = book_performance(
            store, tables.opportunities, by=by, horizon_days=horizon, end_of_data=end
        )
        if book.empty:
            continue
        wide = book.pivot_table(
            index=by, columns="tier", values=["conversion", "won_revenue"], fill_value=0
        )
        wide.columns = [f"T{col[1]} {str(col[0]).replace('_', ' ')}" for col in wide.columns]
        fmt = {c: ("{:.1%}" if "conversion" in c else "${:,.0f}") for c in wide.columns}
        console.print(
            _table(wide, f"By {by}, {horizon} days after the run of {book['as_of'].iloc[0]}", fmt)
        )


def drift_of_runs(cfg: Any, store: Any, threshold: float) -> Any:
    """PSI of every model feature and of priority between consecutive recorded runs."""
    from serving.reports import drift, run_features

    runs = store.runs()
    dates = list(runs["as_of"])
    snaps = run_features(cfg, dates)
    priorities = {
        d: store.rows(run_id=r, columns=["account_id", "priority"]).set_index("account_id")[
            "priority"
        ]
        for d, r in zip(runs["as_of"], runs["run_id"], strict=True)
    }
    joined = []
    for d, feats in snaps:
        joined.append(
            (
                d,
                feats.assign(
                    priority=feats["account_id"].astype(str).map(priorities[d]).to_numpy()
                ),
            )
        )
    skip = {"account_id", "as_of"}
    columns = [c for c in joined[0][1].columns if c not in skip] if joined else []
    return drift(joined, columns, threshold)


@app.command("stability")
def stability(
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
    from serving.replay import backtest as run_backtest
    from serving.replay import month_ends

    cfg = read_config(config)
    with known_errors():
        loaded = resolve_model(cfg, model)
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
