"""The report's figures. Each function returns a matplotlib Figure built without pyplot (no
backend, no display, no global state), which the pipeline logs to MLflow and a notebook shows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from tiering.config import TIER_NAMES


def calibration_plot(curves: Mapping[str, pd.DataFrame]) -> Figure:
    """Observed win rate against mean predicted probability per equal-mass bin; one line per
    model (tables from ``training.evaluate.calibration_table``)."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    top = 0.0
    for name, table in curves.items():
        ax.plot(table["predicted"], table["observed"], marker="o", label=name)
        top = max(top, float(table["predicted"].max()), float(table["observed"].max()))
    top = min(1.0, top * 1.05 + 0.01)
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="perfect")
    ax.set(
        xlim=(0, top),
        ylim=(0, top),
        xlabel="predicted win probability (bin mean)",
        ylabel="observed win rate",
        title="Calibration on the test slice (equal-mass bins)",
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def roc_pr_plot(y: np.ndarray, scores: Mapping[str, np.ndarray]) -> Figure:
    fig = Figure(figsize=(10, 4.5))
    roc_ax, pr_ax = fig.subplots(1, 2)
    for name, p in scores.items():
        fpr, tpr, _ = roc_curve(y, p)
        roc_ax.plot(fpr, tpr, label=name)
        precision, recall, _ = precision_recall_curve(y, p)
        pr_ax.plot(recall, precision, label=name)
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test slice)")
    pr_ax.axhline(float(np.mean(y)), color="grey", linestyle="--", linewidth=1)
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (test slice)")
    roc_ax.legend(loc="lower right")
    pr_ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def gain_lift_plot(backtests: Mapping[str, pd.DataFrame]) -> Figure:
    """Share of the test window's won revenue against share of accounts, tier by tier (gain),
    and each tier's lift; one series per ranking (model, truth, ...)."""
    fig = Figure(figsize=(10, 4.5))
    gain_ax, lift_ax = fig.subplots(1, 2)
    width = 0.8 / max(len(backtests), 1)
    for i, (name, table) in enumerate(backtests.items()):
        table = table.sort_values("tier")
        x = np.concatenate([[0.0], table["account_share"].cumsum().to_numpy()])
        g = np.concatenate([[0.0], table["revenue_share"].fillna(0).cumsum().to_numpy()])
        gain_ax.plot(x, g, marker="o", label=name)
        lift_ax.bar(
            table["tier"].to_numpy() + (i - (len(backtests) - 1) / 2) * width,
            table["lift"].to_numpy(),
            width=width,
            label=name,
        )
    gain_ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="random")
    gain_ax.set(
        xlabel="share of accounts (Tier 1, then 2, then 3)",
        ylabel="share of won revenue",
        title="Gain by tier (test window)",
    )
    lift_ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    lift_ax.set_xticks([1, 2, 3], [TIER_NAMES[t] for t in (1, 2, 3)])
    lift_ax.set(ylabel="lift (revenue share / account share)", title="Lift by tier")
    gain_ax.legend(loc="lower right")
    lift_ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def capture_plot(capture: pd.DataFrame) -> Figure:
    """Share of the test window's won revenue captured by the top 5 / 10 / 20 % of accounts,
    one bar per ranking: the model (greens) beside the naive account baselines (greys and
    browns) and the demo's truth (outlined)."""
    columns = [c for c in capture.columns if c.startswith("top ")]
    fig = Figure(figsize=(13, 4.8))
    ax = fig.subplots()
    n = len(capture)
    width = 0.8 / max(n, 1)
    x = np.arange(len(columns))
    greens = iter(["#1b7837", "#5aae61", "#a6dba0"])
    others = iter(["#543005", "#8c510a", "#bf812d", "#878787", "#4d4d4d", "#bababa", "#dfc27d"])
    for i, row in enumerate(capture.to_dict("records")):
        name = str(row["ranking"])
        values = [row[c] for c in columns]
        style: dict[str, Any] = {}
        if name.startswith("model:"):
            style["color"] = next(greens, "#1b7837")
        elif name.startswith("truth"):
            style.update(color="white", edgecolor="black", hatch="//")
        else:
            style["color"] = next(others, "#999999")
        ax.bar(x + (i - (n - 1) / 2) * width, values, width=width, label=name, **style)
    ax.set_xticks(x, [f"{c} of accounts" for c in columns])
    ax.set_ylim(0, 1)
    ax.set(
        ylabel="share of the window's won revenue",
        title="Revenue captured by the top accounts (test window)",
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def tier_distribution_plot(scored: pd.DataFrame) -> Figure:
    """Accounts and expected revenue per tier (scoring output: ``tier``, ``expected_revenue``)."""
    fig = Figure(figsize=(10, 4))
    count_ax, ev_ax = fig.subplots(1, 2)
    grouped = scored.groupby("tier").agg(accounts=("tier", "size"), ev=("expected_revenue", "sum"))
    grouped = grouped.reindex([1, 2, 3]).fillna(0)
    labels = [TIER_NAMES[t] for t in grouped.index]
    count_ax.bar(labels, grouped["accounts"], color=["#1b7837", "#5aae61", "#a6dba0"])
    count_ax.set(ylabel="accounts", title="Accounts per tier")
    ev_ax.bar(labels, grouped["ev"], color=["#1b7837", "#5aae61", "#a6dba0"])
    ev_ax.set(ylabel="sum of expected revenue in H", title="Expected revenue per tier")
    fig.tight_layout()
    return fig


def shap_beeswarm(
    contributions: pd.DataFrame, encoded: pd.DataFrame, title: str, max_display: int = 15
) -> Figure:
    """SHAP beeswarm drawn by the ``shap`` package from LightGBM's own TreeSHAP values
    (``pred_contrib``: the same numbers as ``shap.TreeExplainer``, and it handles LightGBM's
    categorical splits). Categoricals are coloured by their level code."""
    import shap

    names = [c for c in contributions.columns if c != "bias"]
    data = np.column_stack(
        [
            np.where(encoded[c].cat.codes.to_numpy() < 0, np.nan, encoded[c].cat.codes.to_numpy())
            if isinstance(encoded[c].dtype, pd.CategoricalDtype)
            else encoded[c].to_numpy(dtype=float)
            for c in names
        ]
    )
    explanation = shap.Explanation(
        values=contributions[names].to_numpy(dtype=float),
        base_values=contributions["bias"].to_numpy(dtype=float),
        data=data,
        feature_names=names,
    )
    fig = Figure(figsize=(8, 0.35 * min(max_display, len(names)) + 2))
    ax = fig.subplots()
    shap.plots.beeswarm(explanation, max_display=max_display, show=False, ax=ax, plot_size=None)
    ax.set_title(title)
    fig.tight_layout()
    return fig
