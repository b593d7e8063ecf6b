"""Score accounts with a bundle: predictions, ICP fit, evidence, priority, tier and reasons.

The one scoring core: predict -> ICP -> evidence -> priority (``rank``) -> tier -> reasons
(``score``). Batch scoring, online requests, training's backtests and the frozen reference
cut-offs all go through ``rank``, so they cannot drift apart. ``population=True`` tiers the given rows
as the whole account list (quantile / capacity sizes over these rows); ``population=False``
tiers each row on its own against the reference cut-offs frozen in the bundle, so a single
request gets the tier it would have had in the reference run. Priority is always ranked
against the bundle's reference expected values, so both modes rank on one scale.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pandas as pd

from features.build import evidence_score
from features.config import IcpConfig
from features.icp import icp_fit
from tiering.bundle import PREDICTION_COLUMNS
from tiering.config import Playbook, TierPolicy
from tiering.customers import CUSTOMER_COLUMNS, score_customers
from tiering.explain import fmt_money, reason_columns
from tiering.policy import (
    ReferenceCutoffs,
    TierAssignment,
    assign_tiers,
    priority,
    tier_with_cutoffs,
)

OUTPUT_COLUMNS = [
    "account_id",
    *PREDICTION_COLUMNS,
    "icp_fit",
    "evidence",
    "priority",
    "tier",
    "tier_rule",
    "cutoffs_used",
    "model_version",
]
RANK_COLUMNS = [*PREDICTION_COLUMNS, "icp_fit", "evidence", "priority"]
REASON_COLUMNS = [
    "headline",
    "reasons",
    "reason_summary",
    "tier_rule_text",
    "icp_met",
    "icp_missed",
    "next_tier_hint",
    "playbook",
]


class Scorable(Protocol):
    """What scoring needs of a bundle (``tiering.bundle.Bundle`` provides it)."""

    icp: IcpConfig
    policy: TierPolicy
    playbook: Playbook
    cutoffs: ReferenceCutoffs
    metadata: dict[str, Any]
    horizon_days: int

    @property
    def calibrator(self) -> Any: ...

    def predict(self, features: pd.DataFrame) -> pd.DataFrame: ...

    def contributions(self, features: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]: ...


def model_version(bundle: Scorable) -> str:
    version = getattr(bundle, "version", None)
    if isinstance(version, str):
        return version
    return str(bundle.metadata.get("model_version", "unregistered"))


def base_win_probability(bundle: Scorable, bias: np.ndarray) -> np.ndarray:
    """Calibrated win probability at the win model's base score (the SHAP ``bias``)."""
    return np.asarray(bundle.calibrator.transform(1.0 / (1.0 + np.exp(-bias))), dtype=np.float64)


def rank(
    bundle: Scorable,
    features: pd.DataFrame,
    *,
    predicted: pd.DataFrame | None = None,
    fit: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Predictions, ICP fit, evidence and priority of each row (same index): ``RANK_COLUMNS``.

    ``predicted`` (``bundle.predict`` of the rows) and ``fit`` (``icp_fit`` of the rows) may be
    passed when the caller already has them. Priority ranks expected revenue against the
    bundle's frozen reference list; a bundle without one ranks within ``features``.
    """
    if predicted is None:
        predicted = bundle.predict(features)
    if fit is None:
        fit = icp_fit(features, bundle.icp)
    fit_score = fit["icp_fit"].to_numpy(dtype=np.float64)
    columns = {c: predicted[c].to_numpy() for c in PREDICTION_COLUMNS}
    ev = np.asarray(columns["expected_revenue"], dtype=np.float64)
    reference = bundle.cutoffs.reference_ev
    if len(reference) == 0:
        # No frozen reference yet (a backtest freezing its own): rank within these rows.
        reference = np.sort(ev)
    columns.update(
        icp_fit=fit_score,
        evidence=evidence_score(features).to_numpy(dtype=np.float64),
        priority=priority(ev, fit_score, reference, bundle.policy.weights),
    )
    return pd.DataFrame(columns, index=predicted.index)


def tier(ranked: pd.DataFrame, bundle: Scorable, *, population: bool) -> TierAssignment:
    """Tiers of ranked rows: over the rows as the whole list (``population``), or each row
    against the bundle's reference cut-offs."""
    prio = ranked["priority"].to_numpy(dtype=np.float64)
    fit = ranked["icp_fit"].to_numpy(dtype=np.float64)
    evidence = ranked["evidence"].to_numpy(dtype=np.float64)
    if population:
        return assign_tiers(prio, fit, evidence, bundle.policy)
    return tier_with_cutoffs(prio, fit, evidence, bundle.cutoffs, bundle.policy)


def phrase(
    bundle: Scorable,
    features: pd.DataFrame,
    ranked: pd.DataFrame,
    icp_missed: list[list[str]] | None,
    assignment: TierAssignment,
    *,
    top: int = 3,
    contributions: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> dict[str, list[Any]]:
    """The texts a rep reads for ranked rows (``tiering.explain.reason_columns``): drivers of
    the conversion model (in points of P(convert)) and of the revenue model (in %), the tier
    rule, what would move the account up, the playbook."""
    conv_contrib, revenue_contrib = (
        contributions if contributions is not None else bundle.contributions(features)
    )
    p_base = base_win_probability(bundle, conv_contrib["bias"].to_numpy(dtype=np.float64))
    text = reason_columns(
        features,
        conv_contrib,
        revenue_contrib,
        p_win=ranked["p_convert"].to_numpy(dtype=np.float64),
        p_base=p_base,
        expected_value=ranked["expected_revenue"].to_numpy(dtype=np.float64),
        icp_fit=ranked["icp_fit"].to_numpy(dtype=np.float64),
        icp_missed=icp_missed,
        evidence=ranked["evidence"].to_numpy(dtype=np.float64),
        priority=ranked["priority"].to_numpy(dtype=np.float64),
        assignment=assignment,
        reference_ev=bundle.cutoffs.reference_ev,
        policy=bundle.policy,
        playbook=bundle.playbook,
        top=top,
        horizon=horizon_label(bundle.horizon_days),
        value_low=ranked["revenue_p10"].to_numpy(dtype=np.float64),
        value_high=ranked["revenue_p90"].to_numpy(dtype=np.float64),
    )
    pipeline = pipeline_phrases(features, ranked)
    text["headline"] = [
        [*head, line] if line else list(head)
        for head, line in zip(text["headline"], pipeline, strict=True)
    ]
    return text


def pipeline_phrases(features: pd.DataFrame, ranked: pd.DataFrame) -> list[str]:
    """ "2 open deals worth $80k, likely to bring $28k" per account ("" without open deals or
    without a deal-win model to price them)."""
    n = len(ranked)
    count = (
        pd.to_numeric(features["open_deals"], errors="coerce").to_numpy(dtype=float)
        if "open_deals" in features
        else np.zeros(n)
    )
    amount = (
        pd.to_numeric(features["open_amount"], errors="coerce").to_numpy(dtype=float)
        if "open_amount" in features
        else np.full(n, np.nan)
    )
    expected = ranked["open_pipeline"].to_numpy(dtype=float)
    out = []
    for k, total, worth in zip(count, amount, expected, strict=True):
        if not (k > 0 and np.isfinite(worth) and total > 0):
            out.append("")
            continue
        deals = f"{k:.0f} open deal{'s' if k != 1 else ''}"
        out.append(f"{deals} worth {fmt_money(total)}, likely to bring {fmt_money(worth)}")
    return out


def customers(
    bundle: Scorable, features: pd.DataFrame, *, population: bool, reasons: bool = True
) -> pd.DataFrame:
    """Segment (customer / prospect) and the customers' own tier for customer success
    (``tiering.customers``): ``CUSTOMER_COLUMNS`` of each row, same index."""
    return score_customers(bundle, features, population=population, reasons=reasons)


def horizon_label(days: int) -> str:
    """The horizon in a rep's words: "6 months" for 182 days, "2 months" for 61, "4 weeks"."""
    if days < 56:
        weeks = round(days / 7)
        return f"{weeks} week{'s' if weeks != 1 else ''}"
    months = round(days / 30.4375)
    return f"{months} month{'s' if months != 1 else ''}"


def score(
    bundle: Scorable,
    features: pd.DataFrame,
    *,
    reasons: bool = True,
    population: bool = True,
    top_reasons: int = 3,
    contributions: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """One row per feature row (same index): the columns in ``OUTPUT_COLUMNS``, the segment
    and customer-success tier (``CUSTOMER_COLUMNS``) and, with ``reasons``, those in
    ``REASON_COLUMNS``.

    ``tier_rule`` is the rule code (see ``tiering.policy.RULES``); ``tier_rule_text`` says it in
    words with the account's numbers; ``cutoffs_used`` names the cut-offs that placed the row.
    """
    columns = score_columns(
        bundle,
        features,
        reasons=reasons,
        population=population,
        top_reasons=top_reasons,
        contributions=contributions,
    )
    # One frame built from all columns at once (adding columns one by one costs more than
    # scoring a single account).
    return pd.DataFrame(columns, index=features.index)


def score_columns(
    bundle: Scorable,
    features: pd.DataFrame,
    *,
    reasons: bool = True,
    population: bool = True,
    top_reasons: int = 3,
    contributions: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> dict[str, Any]:
    """``score`` as its columns, one array or list per column in ``score``'s order, before
    they become a frame: what a caller that wants rows of Python values (the service, one
    account at a time) reads with ``records`` instead of building a frame."""
    if "account_id" not in features.columns:
        raise ValueError("features: missing column 'account_id'")
    if len(features) == 0:
        names = OUTPUT_COLUMNS + CUSTOMER_COLUMNS + (REASON_COLUMNS if reasons else [])
        return {c: np.empty(0, dtype=object) for c in names}
    both = getattr(bundle, "predict_with_contributions", None)
    if reasons and contributions is None and both is not None:
        # One encoding of the rows for both models' predictions and contributions.
        predicted, contributions = both(features)
    else:
        predicted = bundle.predict(features)
    fit = icp_fit(features, bundle.icp)
    ranked = rank(bundle, features, predicted=predicted, fit=fit)
    assignment = tier(ranked, bundle, population=population)

    columns: dict[str, Any] = {"account_id": features["account_id"].to_numpy(dtype=object)}
    columns.update({c: ranked[c].to_numpy() for c in RANK_COLUMNS})
    columns.update(
        tier=assignment.tier.astype(np.int64),
        tier_rule=assignment.rule,
        cutoffs_used=assignment.describe_cutoffs(),
        model_version=model_version(bundle),
    )
    columns = {c: columns[c] for c in OUTPUT_COLUMNS}
    segment = customers(bundle, features, population=population, reasons=reasons)
    columns.update({c: segment[c].to_numpy() for c in CUSTOMER_COLUMNS})
    if reasons:
        text = phrase(
            bundle,
            features,
            ranked,
            fit["icp_missed"].tolist(),
            assignment,
            top=top_reasons,
            contributions=contributions,
        )
        columns.update(
            headline=text["headline"],
            reasons=text["reasons"],
            reason_summary=text["reason_summary"],
            tier_rule_text=text["tier_rule_text"],
            icp_met=fit["icp_met"].to_numpy(),
            icp_missed=fit["icp_missed"].to_numpy(),
            next_tier_hint=text["next_tier_hint"],
            playbook=text["playbook"],
        )
    return columns


def records(columns: dict[str, Any] | pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of ``score_columns`` (or of a frame ``score`` returned) as dicts of Python values,
    as ``DataFrame.to_dict("records")`` gives them: numbers as ``int`` / ``float`` / ``bool``,
    missing values as they are. For one account, building the frame and calling ``to_dict``
    cost about a fifth of scoring it, so the service reads the columns directly."""
    if isinstance(columns, pd.DataFrame):
        columns = {c: columns[c].to_numpy() for c in columns.columns}
    n = {len(v) for v in columns.values() if not np.isscalar(v)}
    if len(n) > 1:
        raise ValueError(f"records: columns of different lengths {sorted(n)}")
    rows = n.pop() if n else 1
    values = [_python_values(v, rows) for v in columns.values()]
    return [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)]


def _python_values(column: Any, rows: int) -> list[Any]:
    if np.isscalar(column):
        return [_python(column)] * rows
    if isinstance(column, np.ndarray) and column.dtype.kind in "biuf":
        return list(column.tolist())
    return [_python(v) for v in column]


def _python(value: Any) -> Any:
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value)
    if isinstance(value, np.timedelta64):
        return pd.Timedelta(value)
    if isinstance(value, np.generic):
        return value.item()
    return value
