"""Evaluation on the test slice: discrimination, calibration, deal value, and a tier backtest
(tiers as of the test window's start against the revenue won in the window); on demo data the
same figures for the generator's ground truth, so "good" has a ceiling to be measured against.

Definitions (what the numbers mean):
- ECE: expected calibration error over 10 *equal-mass* bins of the predicted probability
  (cut at its deciles, so each bin holds ~10 % of the deals; tied probabilities share a bin): sum over bins of (deals in bin / deals) x |mean
  predicted - observed win rate|. Equal mass rather than equal width because win
  probabilities crowd into a narrow range; equal-width bins would be mostly empty.
- Tier 1 capture: the share of the test window's won revenue booked by accounts that were in
  Tier 1 when the window began. Lift of a tier: its share of won revenue / its share of
  accounts (1 = no better than chance).
- Truth (demo only): AUC of the true win probabilities on the same test deals; the truth's
  Tier 1 is the tier policy run on the true expected values at the snapshot equal to the test
  start (same ICP fit, evidence and gates as the model's run), so the comparison isolates the
  model. "Top by EV" compares rankings without the policy: the model's Tier 1 headcount of
  accounts with the highest expected value (model's, truth's, or the segment baseline's).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)

from demo.truth import TruthError, read_truth
from features.build import build_features, evidence_score, scoring_requests
from features.config import FeatureConfig
from features.tables import Tables
from tiering.bundle import P_CLIP, Bundle
from tiering.config import TierPolicy

ECE_BINS = 10


# --------------------------------------------------------------------------- classification
def _equal_mass_bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index per row, cut at the quantiles of p so each bin holds ~1/n_bins of the rows;
    equal probabilities always share a bin (a bin may then hold more, and bins may merge)."""
    if len(p) == 0:
        return np.zeros(0, dtype=int)
    inner = np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    return np.searchsorted(np.unique(inner), p, side="right")


def calibration_table(y: np.ndarray, p: np.ndarray, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """Per equal-mass bin: deals, mean predicted probability, observed win rate."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    bins = _equal_mass_bins(p, min(n_bins, max(len(p), 1)))
    frame = pd.DataFrame({"bin": bins, "p": p, "y": y})
    table = frame.groupby("bin").agg(
        deals=("y", "size"), predicted=("p", "mean"), observed=("y", "mean")
    )
    return table.reset_index()


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = ECE_BINS) -> float:
    table = calibration_table(y, p, n_bins)
    weights = table["deals"] / table["deals"].sum()
    return float((weights * (table["predicted"] - table["observed"]).abs()).sum())


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC-AUC, PR-AUC (average precision), Brier, log loss, ECE; AUCs NaN with one class."""
    y = np.asarray(y, dtype=int)
    p = np.clip(np.asarray(p, dtype=float), P_CLIP, 1 - P_CLIP)
    both = len(np.unique(y)) == 2
    return {
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "ece": expected_calibration_error(y, p),
        "win_rate": float(y.mean()) if len(y) else float("nan"),
        "deals": float(len(y)),
    }


# --------------------------------------------------------------------------- deal value
def value_metrics(
    amount: np.ndarray,
    point: np.ndarray,
    p10: np.ndarray | None = None,
    p90: np.ndarray | None = None,
) -> dict[str, float]:
    """MAE (currency), mean absolute log error, and the share of deals inside [P10, P90]
    (0.8 is what a well-calibrated range gives)."""
    amount = np.asarray(amount, dtype=float)
    point = np.asarray(point, dtype=float)
    out = {
        "mae": float(np.mean(np.abs(amount - point))) if len(amount) else float("nan"),
        "mean_abs_log_error": float(np.mean(np.abs(np.log(amount) - np.log(point))))
        if len(amount)
        else float("nan"),
        "won_deals": float(len(amount)),
    }
    if p10 is not None and p90 is not None:
        inside = (amount >= np.asarray(p10)) & (amount <= np.asarray(p90))
        out["coverage_p10_p90"] = float(inside.mean()) if len(amount) else float("nan")
    return out


# --------------------------------------------------------------------------- tiers
def tier_backtest(tiers: pd.DataFrame, deals: pd.DataFrame) -> pd.DataFrame:
    """Per tier: accounts, closed deals, won deals, win rate, won revenue, share of the won
    revenue, share of accounts and lift (revenue share / account share).

    tiers: ``account_id``, ``tier`` (every account scored); deals: the window's closed deals
    (``account_id``, ``won``, ``amount``).
    """
    tier_of = pd.Series(tiers["tier"].to_numpy(), index=tiers["account_id"].astype(str))
    deal_tier = deals["account_id"].astype(str).map(tier_of)
    revenue = np.where(
        deals["won"].to_numpy() == 1, deals["amount"].fillna(0).to_numpy(dtype=float), 0.0
    )
    frame = pd.DataFrame(
        {"tier": deal_tier.to_numpy(), "won": deals["won"].to_numpy(), "revenue": revenue}
    )
    per_tier = frame.groupby("tier").agg(
        deals=("won", "size"), won=("won", "sum"), won_revenue=("revenue", "sum")
    )
    accounts = tiers.groupby("tier").size().rename("accounts")
    table = pd.concat([accounts, per_tier], axis=1).reindex([1, 2, 3]).fillna(0)
    table.index.name = "tier"
    total_revenue = table["won_revenue"].sum()
    total_accounts = table["accounts"].sum()
    table["win_rate"] = table["won"] / table["deals"].where(table["deals"] > 0)
    table["revenue_share"] = table["won_revenue"] / total_revenue if total_revenue > 0 else np.nan
    table["account_share"] = table["accounts"] / total_accounts if total_accounts > 0 else np.nan
    table["lift"] = table["revenue_share"] / table["account_share"].where(
        table["account_share"] > 0
    )
    return table.reset_index()


def top_accounts_capture(score: pd.Series, deals: pd.DataFrame, n_top: int) -> float:
    """Share of the window's won revenue booked by the ``n_top`` accounts with the highest
    ``score`` (indexed by account_id); ties broken by account id for determinism."""
    ranked = score.rename("score").rename_axis("account_id").reset_index()
    ranked["account_id"] = ranked["account_id"].astype(str)
    ranked = ranked.sort_values(["score", "account_id"], ascending=[False, True], kind="stable")
    top = set(ranked["account_id"].head(n_top))
    won = deals[deals["won"].to_numpy() == 1]
    total = float(won["amount"].fillna(0).sum())
    if total <= 0:
        return float("nan")
    return float(won.loc[won["account_id"].astype(str).isin(top), "amount"].fillna(0).sum() / total)


# --------------------------------------------------------------------------- a bundle on a window
@dataclass
class WindowEvaluation:
    """A bundle's figures on one test window (the same window for challenger and champion)."""

    metrics: dict[str, float]
    calibration: pd.DataFrame
    backtest: pd.DataFrame
    deal_predictions: pd.DataFrame  # per test deal: won, amount, p_win, deal_value, p10, p90
    account_scores: pd.DataFrame  # per account at the window start: scoring output + account_id
    extra: dict[str, Any] = field(default_factory=dict)


def score_population(bundle: Bundle, features: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Tier a whole account list the way a batch run does, with reference cut-offs frozen on
    this very population (so a backtest as of a past date uses nothing from after it)."""
    from features.icp import icp_fit
    from tiering.policy import reference_cutoffs
    from tiering.scoring import score

    predicted = bundle.predict(features)
    fit = icp_fit(features, bundle.icp)["icp_fit"].to_numpy(dtype=float)
    evidence = evidence_score(features).to_numpy(dtype=float)
    cutoffs = reference_cutoffs(
        predicted["expected_value"].to_numpy(), fit, evidence, bundle.policy, as_of
    )
    scored = score(replace(bundle, cutoffs=cutoffs), features, reasons=False, population=True)
    return scored.assign(account_id=scored["account_id"].astype(str))


def evaluate_window(
    bundle: Bundle,
    tables: Tables,
    test_deals: pd.DataFrame,
    test_start: pd.Timestamp,
    feature_config: FeatureConfig,
    *,
    deal_features: pd.DataFrame | None = None,
    account_features: pd.DataFrame | None = None,
) -> WindowEvaluation:
    """Everything the report and the promotion gate need about ``bundle`` on one test window.

    test_deals: the window's closed deals as ``training_requests`` gives them. Feature frames
    may be passed in when already built with ``feature_config`` (the challenger's own run).
    """
    if deal_features is None:
        deal_features = build_features(tables, test_deals, feature_config)
    if account_features is None:
        account_features = build_features(
            tables, scoring_requests(tables.accounts, test_start), feature_config
        )

    predicted = bundle.predict(deal_features)
    y = test_deals["won"].to_numpy(dtype=int)
    metrics = {
        f"test_{k}": v for k, v in classification_metrics(y, predicted["p_win"].to_numpy()).items()
    }
    won = (y == 1) & np.isfinite(test_deals["amount"].to_numpy(dtype=float))
    value = value_metrics(
        test_deals["amount"].to_numpy(dtype=float)[won],
        predicted["deal_value"].to_numpy()[won],
        predicted["value_p10"].to_numpy()[won],
        predicted["value_p90"].to_numpy()[won],
    )
    metrics.update({f"value_{k}": v for k, v in value.items()})

    scored = score_population(bundle, account_features, test_start)
    backtest = tier_backtest(scored[["account_id", "tier"]], test_deals)
    t1: dict[Any, Any] = backtest.set_index("tier").loc[1].to_dict()
    metrics["tier1_revenue_share"] = float(t1["revenue_share"])
    metrics["tier1_lift"] = float(t1["lift"])
    metrics["tier1_win_rate"] = float(t1["win_rate"])
    metrics["tier1_accounts"] = float(t1["accounts"])
    # The same number of accounts ranked by expected value alone: separates the model's ranking
    # from what the ICP weight and the gates of the policy do to it.
    ev = pd.Series(scored["expected_value"].to_numpy(), index=scored["account_id"])
    metrics["ev_top_revenue_share"] = top_accounts_capture(ev, test_deals, int(t1["accounts"]))

    deal_predictions = pd.concat(
        [
            test_deals[["opportunity_id", "account_id", "as_of", "won", "amount"]].reset_index(
                drop=True
            ),
            predicted.reset_index(drop=True),
        ],
        axis=1,
    )
    return WindowEvaluation(
        metrics=metrics,
        calibration=calibration_table(y, predicted["p_win"].to_numpy()),
        backtest=backtest,
        deal_predictions=deal_predictions,
        account_scores=scored,
        extra={"account_features": account_features},
    )


# --------------------------------------------------------------------------- ground truth
def truth_metrics(
    truth_dir: Path,
    test_deals: pd.DataFrame,
    test_start: pd.Timestamp,
    account_scores: pd.DataFrame,
    policy: TierPolicy,
) -> dict[str, float]:
    """The ground truth's own figures on the same test window.

    truth_auc (etc.): the true win probabilities scored like the model's on the test deals.
    truth_tier1_revenue_share: the tier policy run with the TRUE expected values in place of
        the model's (same ICP fit, evidence and gates, from ``account_scores``), so model and
        truth are compared under the same business rules.
    truth_ev_top_revenue_share: the same number of accounts as the model's Tier 1, ranked by
        true expected value alone (the ceiling for ``ev_top_revenue_share``).
    """
    from tiering.policy import assign_tiers, priority

    truth = read_truth(truth_dir)
    opps, accounts = truth.opportunities, truth.accounts
    p_true = (
        test_deals["opportunity_id"].astype(str).map(opps.set_index("opportunity_id")["true_p_win"])
    )
    if p_true.isna().any():
        missing = test_deals.loc[p_true.isna().to_numpy(), "opportunity_id"].head(3).tolist()
        raise TruthError(
            f"truth: {int(p_true.isna().sum())} test deals lack true_p_win, e.g. {missing}"
        )
    y = test_deals["won"].to_numpy(dtype=int)
    out = {
        f"truth_{k}": v
        for k, v in classification_metrics(y, p_true.to_numpy(dtype=float)).items()
        if k in ("auc", "pr_auc", "brier", "log_loss", "ece")
    }
    snapshot = accounts[accounts["as_of"] == pd.Timestamp(test_start)]
    if snapshot.empty:
        dates = accounts["as_of"].drop_duplicates().sort_values()
        raise TruthError(
            f"truth: no account snapshot as of {pd.Timestamp(test_start).date()} "
            f"(snapshots from {dates.iloc[0].date()} to {dates.iloc[-1].date()})"
        )
    true_ev = snapshot.set_index(snapshot["account_id"].astype(str))["true_expected_value"]
    ev = account_scores["account_id"].astype(str).map(true_ev)
    if ev.isna().any():
        raise TruthError(f"truth: {int(ev.isna().sum())} accounts lack a true expected value")
    ev_values = ev.to_numpy(dtype=float)
    fit = account_scores["icp_fit"].to_numpy(dtype=float)
    evidence = account_scores["evidence"].to_numpy(dtype=float)
    tiers = assign_tiers(
        priority(ev_values, fit, np.sort(ev_values), policy.weights), fit, evidence, policy
    )
    truth_tiers = pd.DataFrame(
        {"account_id": account_scores["account_id"].astype(str), "tier": tiers.tier}
    )
    backtest = tier_backtest(truth_tiers, test_deals).set_index("tier")
    tier1: dict[Any, Any] = backtest.loc[1].to_dict()
    out["truth_tier1_revenue_share"] = float(tier1["revenue_share"])
    out["truth_tier1_lift"] = float(tier1["lift"])
    n_tier1 = int((account_scores["tier"] == 1).sum())
    out["truth_ev_top_revenue_share"] = top_accounts_capture(
        pd.Series(ev_values, index=account_scores["account_id"].astype(str).to_numpy()),
        test_deals,
        n_tier1,
    )
    return out


def truth_ratios(metrics: dict[str, float]) -> dict[str, float]:
    """model / truth for the figures the targets are stated in."""
    out = {}
    if metrics.get("truth_auc"):
        out["auc_ratio_to_truth"] = metrics["test_auc"] / metrics["truth_auc"]
    if metrics.get("truth_tier1_revenue_share"):
        out["tier1_capture_ratio_to_truth"] = (
            metrics["tier1_revenue_share"] / metrics["truth_tier1_revenue_share"]
        )
    if metrics.get("truth_ev_top_revenue_share"):
        out["ev_top_capture_ratio_to_truth"] = (
            metrics["ev_top_revenue_share"] / metrics["truth_ev_top_revenue_share"]
        )
    return out
