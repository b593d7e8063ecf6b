"""Evaluation on the test snapshots: discrimination and calibration of P(convert in H), the
revenue model, and the revenue captured by the top accounts and by Tier 1 under the model's
ranking beside the naive account rankings (and, on demo data, the generator's truth).

Definitions (what the numbers mean):
- ECE: expected calibration error over 10 *equal-mass* bins of the predicted probability
  (cut at its deciles, so each bin holds ~10 % of the rows; tied probabilities share a bin):
  sum over bins of (rows in bin / rows) x |mean predicted - observed rate|. Equal mass rather
  than equal width because probabilities crowd into a narrow range; equal-width bins would be
  mostly empty.
- Capture at the top k %: the share of the won revenue booked in the H days after a test date
  by the k % of accounts a ranking puts on top as of that date (ties share a seat), averaged
  over the test dates.
- Tier 1 (policy gates): Tier 1's seats filled by a ranking among the accounts the ICP and
  evidence gates admit, so the model's tiers and a naive ranking meet under the same rule. Lift
  of a tier: its share of the won revenue / its share of the accounts (1 = no better than
  chance).
- Truth (demo only): the generator's expected won revenue in H for the same accounts and dates
  (``demo.truth.horizon_truth``), ranked like the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)

from tiering.bundle import P_CLIP, Bundle
from tiering.policy import tier_ceiling

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


# --------------------------------------------------------------------------- accounts
TOP_SHARES = (0.05, 0.10, 0.20)
"""Shares of the account list at which captured revenue is reported."""
FORMER_DEFAULT_WEIGHTS = {"expected_value": 0.7, "icp_fit": 0.3}
"""A priority that also weighs ICP fit, reported beside the default so its cost is visible."""


def capture_at(score: np.ndarray, revenue: np.ndarray, n_top: int) -> float:
    """Share of ``revenue`` held by the ``n_top`` rows with the highest ``score``.

    Ties at the cut are shared out evenly (the expected capture if ties were broken at random),
    so a ranking with many equal scores, such as "past deal count" where most accounts have
    none, is neither flattered nor punished by row order. NaN scores rank last.
    """
    score = np.where(np.isnan(score), -np.inf, np.asarray(score, dtype=float))
    revenue = np.asarray(revenue, dtype=float)
    total = revenue.sum()
    if total <= 0 or n_top <= 0:
        return float("nan") if total <= 0 else 0.0
    n_top = min(n_top, len(score))
    cut = np.sort(score)[::-1][n_top - 1]
    above = score > cut
    tied = score == cut
    share_of_ties = (n_top - above.sum()) / tied.sum()
    return float((revenue[above].sum() + share_of_ties * revenue[tied].sum()) / total)


def account_baselines(features: pd.DataFrame, segment_conversion: Any) -> dict[str, np.ndarray]:
    """The naive account rankings the model must beat, from the same point-in-time features:
    higher is better for each."""

    def col(name: str) -> np.ndarray:
        if name not in features:
            return np.full(len(features), np.nan)
        return pd.to_numeric(features[name], errors="coerce").to_numpy(dtype=float)

    days = col("days_since_last_won")
    return {
        "past deal count": np.nan_to_num(col("prior_won")) + np.nan_to_num(col("prior_lost")),
        "past won revenue": np.nan_to_num(col("revenue_won")),
        "won revenue, last 12 months": np.nan_to_num(col("revenue_won_365d")),
        # Sooner is better; never won ranks last.
        "days since last won deal": np.where(np.isnan(days), -np.inf, -days),
        "segment conversion rate": segment_conversion.predict_proba(features),
    }


@dataclass
class WindowEvaluation:
    """A bundle's figures on the test snapshots (the same ones for challenger and champion)."""

    metrics: dict[str, float]
    calibration: pd.DataFrame
    """Equal-mass bins of P(convert) on every test snapshot row."""
    capture: pd.DataFrame
    """ranking x share of accounts: captured share of the window's won revenue, averaged over
    the test as-of dates."""
    backtest: pd.DataFrame
    """Per tier at the first test date: accounts, revenue share, lift (tiers by the policy)."""
    predictions: pd.DataFrame
    """Per test row: account_id, as_of, converted, revenue, the scoring output's numbers."""
    account_scores: pd.DataFrame
    """Scoring output at the first test date."""
    notes: list[str] = field(default_factory=list)


def score_population(bundle: Bundle, features: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Tier a whole account list the way a batch run does, with reference cut-offs frozen on
    this very population (so a backtest as of a past date uses nothing from after it)."""
    from tiering.policy import reference_cutoffs
    from tiering.scoring import rank, score

    ranked = rank(bundle, features)
    cutoffs = reference_cutoffs(
        ranked["expected_revenue"].to_numpy(),
        ranked["icp_fit"].to_numpy(),
        ranked["evidence"].to_numpy(),
        bundle.policy,
        as_of,
    )
    scored = score(replace(bundle, cutoffs=cutoffs), features, reasons=False, population=True)
    return scored.assign(account_id=scored["account_id"].astype(str))


def _rankings(
    scored: pd.DataFrame, features: pd.DataFrame, bundle: Bundle, segment_conversion: Any
) -> dict[str, np.ndarray]:
    from tiering.config import PriorityWeights
    from tiering.policy import priority

    ev = scored["expected_revenue"].to_numpy(dtype=float)
    out = {
        "model: priority (orders the tiers)": scored["priority"].to_numpy(dtype=float),
        "model: expected revenue": ev,
        "model: priority with ICP weight 0.3": priority(
            ev,
            scored["icp_fit"].to_numpy(dtype=float),
            bundle.cutoffs.reference_ev if len(bundle.cutoffs.reference_ev) else np.sort(ev),
            PriorityWeights(**FORMER_DEFAULT_WEIGHTS),
        ),
    }
    out.update(
        {f"naive: {k}": v for k, v in account_baselines(features, segment_conversion).items()}
    )
    return out


MODEL_RANKING = "model: priority (orders the tiers)"
TIER1_POLICY = "Tier 1 (policy gates)"
"""Capture column: Tier 1's seats filled by a ranking among the accounts the gates admit."""


def evaluate_window(
    bundle: Bundle,
    test: pd.DataFrame,
    segment_conversion: Any,
    *,
    truth: pd.DataFrame | None = None,
) -> WindowEvaluation:
    """Everything the report and the promotion gate need about ``bundle`` on the test
    snapshots: ``test`` holds feature rows plus ``converted`` and ``revenue`` for every account
    at each test as-of date. ``truth`` (demo only): ``account_id``, ``as_of``,
    ``true_expected_revenue`` (and ``true_p_convert``) for the same rows.
    """
    dates = sorted(pd.to_datetime(test["as_of"]).unique())
    captures: list[dict[str, Any]] = []
    predictions = []
    backtests = []
    first_scores = pd.DataFrame()
    for i, when in enumerate(dates):
        rows = test[pd.to_datetime(test["as_of"]) == when]
        scored = score_population(bundle, rows, pd.Timestamp(when))
        revenue = rows["revenue"].to_numpy(dtype=float)
        rankings = _rankings(scored, rows, bundle, segment_conversion)
        if truth is not None:
            key = rows["account_id"].astype(str).to_numpy()
            day = truth[pd.to_datetime(truth["as_of"]) == when]
            true_ev = day.set_index(day["account_id"].astype(str))["true_expected_revenue"]
            rankings["truth: expected revenue in H"] = (
                pd.Series(key).map(true_ev).to_numpy(dtype=float)
            )
        n = len(rows)
        n_tier1 = int((scored["tier"] == 1).sum())
        # Tier 1 under the policy: the same seats, filled by each ranking among the accounts
        # the ICP and evidence gates let into Tier 1, so the comparison measures the ranking.
        eligible = (
            tier_ceiling(scored["icp_fit"].to_numpy(), scored["evidence"].to_numpy(), bundle.policy)
            == 1
        )
        for name, values in rankings.items():
            row: dict[str, Any] = {"as_of": pd.Timestamp(when), "ranking": name}
            for share in TOP_SHARES:
                row[f"top {share:.0%}"] = capture_at(values, revenue, round(share * n))
            row[TIER1_POLICY] = capture_at(np.where(eligible, values, np.nan), revenue, n_tier1)
            captures.append(row)
        tiers = scored["tier"].to_numpy()
        total = revenue.sum()
        backtests.append(
            pd.DataFrame(
                {
                    "as_of": pd.Timestamp(when),
                    "tier": [1, 2, 3],
                    "accounts": [int((tiers == t).sum()) for t in (1, 2, 3)],
                    "converted": [
                        int(rows["converted"].to_numpy()[tiers == t].sum()) for t in (1, 2, 3)
                    ],
                    "won_revenue": [float(revenue[tiers == t].sum()) for t in (1, 2, 3)],
                    "predicted_revenue": [
                        float(scored["expected_revenue"].to_numpy()[tiers == t].sum())
                        for t in (1, 2, 3)
                    ],
                    "revenue_share": [
                        float(revenue[tiers == t].sum() / total) if total > 0 else np.nan
                        for t in (1, 2, 3)
                    ],
                }
            )
        )
        predictions.append(
            pd.DataFrame(
                {
                    "account_id": rows["account_id"].astype(str).to_numpy(),
                    "as_of": rows["as_of"].to_numpy(),
                    "converted": rows["converted"].to_numpy(dtype=int),
                    "revenue": revenue,
                    **{
                        c: scored[c].to_numpy()
                        for c in (
                            "p_convert",
                            "revenue_if_converts",
                            "revenue_p10",
                            "revenue_p90",
                            "expected_revenue",
                            "priority",
                            "icp_fit",
                            "tier",
                        )
                    },
                }
            )
        )
        if i == 0:
            first_scores = scored
    capture = pd.DataFrame(captures).groupby("ranking", sort=False).mean(numeric_only=True)
    backtest = pd.concat(backtests).groupby("tier").sum(numeric_only=True)
    backtest["revenue_share"] = backtest["won_revenue"] / backtest["won_revenue"].sum()
    backtest["account_share"] = backtest["accounts"] / backtest["accounts"].sum()
    backtest["lift"] = backtest["revenue_share"] / backtest["account_share"]
    backtest = backtest.reset_index()
    pred = pd.concat(predictions, ignore_index=True)

    y = pred["converted"].to_numpy(dtype=int)
    metrics = {
        f"test_{k}": v
        for k, v in classification_metrics(y, pred["p_convert"].to_numpy()).items()
        if k != "deals"
    }
    metrics["test_rows"] = float(len(pred))
    metrics["test_as_of_dates"] = float(len(dates))
    conv = (y == 1) & (pred["revenue"].to_numpy() > 0)
    value = value_metrics(
        pred["revenue"].to_numpy()[conv],
        pred["revenue_if_converts"].to_numpy()[conv],
        pred["revenue_p10"].to_numpy()[conv],
        pred["revenue_p90"].to_numpy()[conv],
    )
    metrics.update({f"value_{k}": v for k, v in value.items()})
    t1: dict[Any, Any] = backtest.set_index("tier").loc[1].to_dict()
    metrics["tier1_revenue_share"] = float(t1["revenue_share"])
    metrics["tier1_lift"] = float(t1["lift"])
    metrics["tier1_accounts"] = float(t1["accounts"]) / len(dates)
    metrics["tier1_predicted_vs_realised"] = (
        float(t1["predicted_revenue"]) / float(t1["won_revenue"])
        if float(t1["won_revenue"]) > 0
        else float("nan")
    )
    capture = capture.reset_index()
    shares = [c for c in capture.columns if c != "ranking"]
    for record in capture.to_dict("records"):
        slug = _slug(str(record["ranking"]))
        for column in shares:
            metrics[f"capture_{_slug(column)}__{slug}"] = float(record[column])
    notes = []
    # The model's Tier 1 capture on the same footing as the baselines' (mean over the dates).
    model_row = capture[capture["ranking"] == MODEL_RANKING]
    metrics["tier1_revenue_share"] = float(model_row[TIER1_POLICY].iloc[0])
    if capture["ranking"].str.startswith("naive:").any():
        name, best = best_baseline(capture)
        metrics["best_baseline_tier1_capture"] = best
        notes.append(f"best naive baseline at Tier 1's size: {name}")
    return WindowEvaluation(
        metrics=metrics,
        calibration=calibration_table(y, pred["p_convert"].to_numpy()),
        capture=capture,
        backtest=backtest,
        predictions=pred,
        account_scores=first_scores,
        notes=notes,
    )


def best_baseline(capture: pd.DataFrame, column: str = TIER1_POLICY) -> tuple[str, float]:
    """(name, capture) of the best naive ranking in a ``WindowEvaluation.capture`` table."""
    naive = capture[capture["ranking"].str.startswith("naive:")]
    values = naive[column].to_numpy(dtype=float)
    i = int(np.nanargmax(values))
    return str(naive["ranking"].iloc[i]).removeprefix("naive: "), float(values[i])


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


def truth_ratios(metrics: dict[str, float]) -> dict[str, float]:
    """model / truth for the figures the targets are stated in."""
    out = {}
    model = _slug(MODEL_RANKING)
    truth = _slug("truth: expected revenue in H")
    for share in TOP_SHARES:
        col = _slug(f"top {share:.0%}")
        m = metrics.get(f"capture_{col}__{model}")
        t = metrics.get(f"capture_{col}__{truth}")
        if m is not None and t:
            out[f"capture_{col}_ratio_to_truth"] = m / t
    return out
