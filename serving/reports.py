"""Reports over the tier history: tier movement between runs, and per-tier performance after
each run with drift between runs (logged to MLflow as a monitoring run).

Computation is separate from drawing and writing: ``movement`` and ``performance`` return
frames; ``write_movement`` and ``log_performance`` make the plots and files.
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.history import HistoryStore
from tiering.stability import driver_shift

FROM_NEW = "new"
PREDICTED_REVENUE_FIGURES = ("expected_revenue",)
"""The figure that says what revenue the model expects of an account, first one present."""
PSI_WARNING = 0.2
"""A population stability index above this flags a feature or the score as drifted (the
usual rule of thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 significant)."""


class ReportError(ValueError):
    """Not enough history for the report; the message says what to run first."""


# ------------------------------------------------------------------------------ movement
@dataclass(frozen=True)
class Movement:
    start: pd.Timestamp
    end: pd.Timestamp
    matrix: pd.DataFrame
    """Rows: tier at ``start`` (1, 2, 3 or "new"); columns: tier at ``end``; sums to the
    accounts of the ``end`` run."""
    by_owner: pd.DataFrame
    by_territory: pd.DataFrame
    reasons: pd.DataFrame
    """Causes of every move in the runs after ``start`` up to ``end``, most frequent first."""
    drivers: pd.DataFrame
    """The drivers that moved most for accounts whose tier differs between start and end."""
    dropped: int
    """Accounts of the ``start`` run missing from the ``end`` run."""


def movement(store: HistoryStore, since: pd.Timestamp | None = None) -> Movement:
    """Tier movement from the run at (or last before) ``since`` to the latest run; by default
    from the run before the latest."""
    runs = store.runs()
    if len(runs) < 2:
        raise ReportError(
            f"the tier history holds {len(runs)} run(s); movement needs two (run `tiering score` "
            "on two dates)"
        )
    dates = list(runs["as_of"])
    end = dates[-1]
    if since is None:
        start = dates[-2]
    else:
        before = [d for d in dates if d <= since]
        start = before[-1] if before else dates[0]
        if start == end:
            raise ReportError(f"--since {since.date()}: no run after it to compare with")
    run_of = dict(zip(runs["as_of"], runs["run_id"], strict=True))
    cols = ["account_id", "tier", "owner", "territory", "drivers"]
    a = store.rows(run_id=run_of[start], columns=cols).set_index("account_id")
    b = store.rows(run_id=run_of[end], columns=cols).set_index("account_id")
    from_tier = a["tier"].reindex(b.index).astype(object).where(lambda s: s.notna(), FROM_NEW)
    from_tier = from_tier.map(lambda t: t if t == FROM_NEW else int(t))
    matrix = pd.crosstab(from_tier.rename("from tier"), b["tier"].rename("to tier"))
    order = [t for t in (1, 2, 3, FROM_NEW) if t in matrix.index]
    matrix = matrix.reindex(index=order, columns=[1, 2, 3], fill_value=0)
    moved = (from_tier != FROM_NEW) & (from_tier != b["tier"])
    frame = pd.DataFrame(
        {
            "moved": moved,
            "up": moved & (from_tier.where(moved, 0).astype(int) > b["tier"]),
            "owner": b["owner"].fillna("(no owner)"),
            "territory": b["territory"].fillna("(no territory)"),
        }
    )

    def by(key: str) -> pd.DataFrame:
        g = frame.groupby(key)
        out = pd.DataFrame(
            {
                "accounts": g.size(),
                "moved": g["moved"].sum(),
                "up": g["up"].sum(),
            }
        )
        out["down"] = out["moved"] - out["up"]
        out["share_moved"] = out["moved"] / out["accounts"]
        return out.sort_values(["moved", "accounts"], ascending=False)

    window = store.rows(since=start, columns=["as_of", "change_code", "change_reason"])
    window = window[(window["as_of"] > start) & (window["change_code"] != "")]
    counts = window["change_code"].value_counts()
    examples = window.groupby("change_code")["change_reason"].first()
    reasons = pd.DataFrame(
        {"moves": counts, "share": counts / max(int(counts.sum()), 1), "example": examples}
    ).sort_values("moves", ascending=False)
    shifted: Counter[str] = Counter()
    for acc in b.index[moved.to_numpy()]:
        for label, _ in driver_shift(a["drivers"].get(acc), b["drivers"].get(acc), top=1):
            shifted[label] += 1
    drivers = pd.DataFrame(shifted.most_common(10), columns=["driver", "moved accounts"])
    return Movement(
        start=start,
        end=end,
        matrix=matrix,
        by_owner=by("owner"),
        by_territory=by("territory"),
        reasons=reasons,
        drivers=drivers,
        dropped=int((~a.index.isin(b.index)).sum()),
    )


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def movement_figure(m: Movement) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    values = m.matrix.to_numpy()
    axes[0].imshow(values, cmap="Blues")
    axes[0].set_xticks(range(values.shape[1]), [f"Tier {t}" for t in m.matrix.columns])
    axes[0].set_yticks(
        range(values.shape[0]), [t if t == FROM_NEW else f"Tier {t}" for t in m.matrix.index]
    )
    for (i, j), v in np.ndenumerate(values):
        axes[0].text(j, i, f"{v:,}", ha="center", va="center", color="black")
    axes[0].set_xlabel(f"tier on {m.end.date()}")
    axes[0].set_ylabel(f"tier on {m.start.date()}")
    axes[0].set_title("Tier movement")
    top = m.reasons.head(8)
    axes[1].barh([str(i) for i in top.index][::-1], list(top["moves"])[::-1], color="#7570b3")
    axes[1].set_title("Why tiers changed (moves in the window)")
    fig.tight_layout()
    return fig


def write_movement(m: Movement, out_dir: Path) -> tuple[Path, Path]:
    """The plot as PNG, and an HTML page with the plot and every table."""
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig = movement_figure(m)
    png = _png(fig)
    plt.close(fig)
    png_path = out_dir / "movement.png"
    png_path.write_bytes(png)
    html_path = out_dir / "movement.html"
    img = base64.b64encode(png).decode("ascii")
    sections = [
        ("Tier movement matrix", m.matrix),
        ("Top reasons for moves", m.reasons),
        ("Drivers that moved most", m.drivers),
        ("Moves by owner", m.by_owner),
        ("Moves by territory", m.by_territory),
    ]
    body = "".join(
        f"<h2>{title}</h2>{frame.to_html(float_format='{:.3f}'.format)}"
        for title, frame in sections
    )
    html_path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>Tier movement</title></head>"
        f"<body><h1>Tier movement {m.start.date()} to {m.end.date()}</h1>"
        f"<img alt='tier movement' src='data:image/png;base64,{img}'/>{body}"
        f"<p>{m.dropped} account(s) of the first run are not in the last.</p></body></html>",
        encoding="utf-8",
    )
    return png_path, html_path


# --------------------------------------------------------------------------- performance
def _predicted(figures: pd.Series) -> pd.Series:
    for name in PREDICTED_REVENUE_FIGURES:
        values = figures.map(lambda f, n=name: (f or {}).get(n))
        if values.notna().any():
            return values.astype(float)
    return pd.Series(np.nan, index=figures.index)


def performance(
    store: HistoryStore,
    opportunities: pd.DataFrame,
    *,
    horizon_days: int = 90,
    end_of_data: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """One row per run and tier: what happened in the ``horizon_days`` after the run.

    win rate (won / closed deals closing in the window), won revenue, average won deal size,
    sales cycle (days from creation to close of the won deals), pipeline created (deals
    opened in the window, and their booked value where known), the tier's share of accounts
    and of won revenue and their ratio (lift), predicted against realised revenue.
    ``matured`` is False when the window runs past the end of the data.
    """
    runs = store.runs()
    if runs.empty:
        raise ReportError("the tier history is empty: run `tiering score` first")
    opps = opportunities.assign(account_id=opportunities["account_id"].astype(str))
    last = (
        end_of_data
        if end_of_data is not None
        else pd.Timestamp(max(opps["created_at"].max(), opps["closed_at"].max()))
    )
    out = []
    for as_of, run_id in zip(runs["as_of"], runs["run_id"], strict=True):
        start = pd.Timestamp(as_of)
        end = start + pd.Timedelta(days=horizon_days)
        rows = store.rows(run_id=str(run_id), columns=["account_id", "tier", "figures"])
        tier_of = dict(zip(rows["account_id"], rows["tier"], strict=True))
        predicted = _predicted(rows["figures"]).groupby(rows["tier"]).sum()
        closed = opps[(opps["closed_at"] > start) & (opps["closed_at"] <= end)]
        created = opps[(opps["created_at"] > start) & (opps["created_at"] <= end)]
        closed = closed.assign(tier=closed["account_id"].map(tier_of)).dropna(subset=["tier"])
        created = created.assign(tier=created["account_id"].map(tier_of)).dropna(subset=["tier"])
        won = closed[closed["outcome"] == "won"]
        total_won = float(won["amount"].sum())
        for tier in (1, 2, 3):
            accounts = int((rows["tier"] == tier).sum())
            c = closed[closed["tier"] == tier]
            w = won[won["tier"] == tier]
            revenue = float(w["amount"].sum())
            acc_share = accounts / max(len(rows), 1)
            rev_share = revenue / total_won if total_won else float("nan")
            out.append(
                {
                    "as_of": start.date().isoformat(),
                    "tier": tier,
                    "matured": bool(end <= last),
                    "accounts": accounts,
                    "closed_deals": len(c),
                    "win_rate": len(w) / len(c) if len(c) else float("nan"),
                    "won_revenue": revenue,
                    "avg_deal_size": float(w["amount"].mean()) if len(w) else float("nan"),
                    "cycle_days": float((w["closed_at"] - w["created_at"]).dt.days.mean())
                    if len(w)
                    else float("nan"),
                    "pipeline_deals": int((created["tier"] == tier).sum()),
                    "account_share": acc_share,
                    "revenue_share": rev_share,
                    "lift": rev_share / acc_share if acc_share else float("nan"),
                    "predicted_revenue": float(predicted.get(tier, np.nan)),
                    "realised_revenue": revenue,
                }
            )
    frame = pd.DataFrame(out)
    frame["realised_over_predicted"] = frame["realised_revenue"] / frame["predicted_revenue"]
    return frame


def psi(
    expected: Sequence[Any] | pd.Series, actual: Sequence[Any] | pd.Series, bins: int = 10
) -> float:
    """Population stability index of ``actual`` against ``expected``: decile bins of the
    expected values for numbers, categories for anything else; empty bins get a floor so the
    index stays finite."""
    e = pd.Series(expected).dropna()
    a = pd.Series(actual).dropna()
    if e.empty or a.empty:
        return float("nan")
    if pd.api.types.is_numeric_dtype(e) and pd.api.types.is_numeric_dtype(a) and e.nunique() > bins:
        edges = np.unique(np.quantile(e.astype(float), np.linspace(0, 1, bins + 1)))
        edges[0], edges[-1] = -np.inf, np.inf
        pe = np.asarray(np.histogram(e.astype(float), edges)[0] / len(e), dtype=np.float64)
        pa = np.asarray(np.histogram(a.astype(float), edges)[0] / len(a), dtype=np.float64)
    else:
        cats = sorted(set(e.astype(str)) | set(a.astype(str)))
        pe = np.asarray(
            e.astype(str).value_counts(normalize=True).reindex(cats, fill_value=0), dtype=np.float64
        )
        pa = np.asarray(
            a.astype(str).value_counts(normalize=True).reindex(cats, fill_value=0), dtype=np.float64
        )
    pe = np.clip(pe, 1e-4, None)
    pa = np.clip(pa, 1e-4, None)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def drift(
    snapshots: Sequence[tuple[pd.Timestamp, pd.DataFrame]],
    columns: Sequence[str],
    threshold: float = PSI_WARNING,
) -> pd.DataFrame:
    """PSI of each column between consecutive runs (each run against the one before): one
    row per pair and column, with ``warning`` above the threshold."""
    rows = []
    for (d0, f0), (d1, f1) in zip(snapshots, snapshots[1:], strict=False):
        for col in columns:
            if col not in f0 or col not in f1:
                continue
            value = psi(f0[col], f1[col])
            rows.append(
                {
                    "from": d0.date().isoformat(),
                    "to": d1.date().isoformat(),
                    "column": col,
                    "psi": value,
                    "warning": bool(value > threshold),
                }
            )
    return pd.DataFrame(rows, columns=["from", "to", "column", "psi", "warning"])


def performance_figures(perf: pd.DataFrame, drifted: pd.DataFrame) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figs: dict[str, Any] = {}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for tier, color in zip((1, 2, 3), ("#1b9e77", "#7570b3", "#999999"), strict=True):
        rows = perf[perf["tier"] == tier]
        axes[0].plot(rows["as_of"], rows["win_rate"], marker="o", color=color, label=f"Tier {tier}")
        axes[1].plot(rows["as_of"], rows["lift"], marker="o", color=color, label=f"Tier {tier}")
        axes[2].scatter(
            rows["predicted_revenue"] / 1e6,
            rows["realised_revenue"] / 1e6,
            color=color,
            label=f"Tier {tier}",
        )
    top = float(np.nanmax(perf[["predicted_revenue", "realised_revenue"]].to_numpy()) / 1e6)
    axes[2].plot([0, top], [0, top], ls="--", color="black", lw=1)
    axes[0].set_title("Win rate after each run")
    axes[1].set_title("Lift: revenue share / account share")
    axes[1].axhline(1, color="black", lw=0.8)
    axes[2].set_title("Predicted vs realised revenue per tier ($M)")
    for ax in axes[:2]:
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    axes[0].legend()
    fig.tight_layout()
    figs["performance.png"] = fig
    if not drifted.empty:
        latest = drifted[drifted["to"] == drifted["to"].max()].sort_values("psi")
        fig2, ax = plt.subplots(figsize=(8, max(3, 0.25 * len(latest))))
        colors = ["#d95f02" if w else "#1b9e77" for w in latest["warning"]]
        ax.barh(latest["column"], latest["psi"], color=colors)
        ax.axvline(PSI_WARNING, color="black", ls="--", lw=1)
        ax.set_title(f"Drift {latest['from'].iloc[0]} -> {latest['to'].iloc[0]} (PSI)")
        fig2.tight_layout()
        figs["drift.png"] = fig2
    return figs


def log_performance(
    perf: pd.DataFrame,
    drifted: pd.DataFrame,
    *,
    tracking_uri: str,
    experiment: str,
    out_dir: Path,
    threshold: float = PSI_WARNING,
    artifact_location: str | None = None,
) -> str:
    """An MLflow monitoring run with the tables, per-tier metrics of the newest matured run,
    drift warnings and the plots; returns its run id. The plots are also written to
    ``out_dir``."""
    import matplotlib.pyplot as plt
    import mlflow

    out_dir.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = (
        exp.experiment_id
        if exp is not None
        else client.create_experiment(experiment, artifact_location=artifact_location)
    )
    run = client.create_run(exp_id, run_name="tier monitoring", tags={"kind": "monitoring"})
    run_id = run.info.run_id
    matured = perf[perf["matured"]]
    latest = matured[matured["as_of"] == matured["as_of"].max()] if len(matured) else perf.iloc[:0]
    for _, row in latest.iterrows():
        for name in ("win_rate", "lift", "won_revenue", "realised_over_predicted"):
            value = float(row[name])
            if np.isfinite(value):
                client.log_metric(run_id, f"tier{int(row['tier'])}_{name}", value)
    client.log_metric(
        run_id, "drift_warnings", int(drifted["warning"].sum()) if len(drifted) else 0
    )
    client.log_param(run_id, "psi_warning_threshold", threshold)
    client.log_param(run_id, "runs", perf["as_of"].nunique())
    perf.to_csv(out_dir / "performance.csv", index=False)
    drifted.to_csv(out_dir / "drift.csv", index=False)
    client.log_artifact(run_id, str(out_dir / "performance.csv"))
    client.log_artifact(run_id, str(out_dir / "drift.csv"))
    for name, fig in performance_figures(perf, drifted).items():
        path = out_dir / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id


def run_features(
    config: Any, dates: Sequence[pd.Timestamp]
) -> list[tuple[pd.Timestamp, pd.DataFrame]]:
    """The account features as of each run date (the batch scoring code path), for drift."""
    from features.build import build_features, scoring_requests
    from features.contract import load_tables

    tables = load_tables(config.data).tables
    return [
        (
            pd.Timestamp(d),
            build_features(
                tables, scoring_requests(tables.accounts, pd.Timestamp(d)), config.features
            ),
        )
        for d in dates
    ]
