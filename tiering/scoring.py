"""Score accounts with a bundle: predictions, ICP fit, evidence, priority, tier and reasons.

One function for batch scoring and online requests. ``population=True`` tiers the given rows
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
from tiering.config import Playbook, TierPolicy
from tiering.explain import reason_columns
from tiering.policy import ReferenceCutoffs, assign_tiers, priority, tier_with_cutoffs

OUTPUT_COLUMNS = [
    "account_id",
    "p_win",
    "deal_value",
    "value_p10",
    "value_p90",
    "expected_value",
    "icp_fit",
    "evidence",
    "priority",
    "tier",
    "tier_rule",
    "cutoffs_used",
    "model_version",
]
REASON_COLUMNS = [
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
    calibrator: Any

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


def score(
    bundle: Scorable,
    features: pd.DataFrame,
    *,
    reasons: bool = True,
    population: bool = True,
    top_reasons: int = 3,
    contributions: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """One row per feature row (same index): the columns in ``OUTPUT_COLUMNS`` and, with
    ``reasons``, those in ``REASON_COLUMNS``.

    ``tier_rule`` is the rule code (see ``tiering.policy.RULES``); ``tier_rule_text`` says it in
    words with the account's numbers; ``cutoffs_used`` names the cut-offs that placed the row.
    """
    if "account_id" not in features.columns:
        raise ValueError("features: missing column 'account_id'")
    if len(features) == 0:
        return pd.DataFrame(columns=OUTPUT_COLUMNS + (REASON_COLUMNS if reasons else []))
    policy = bundle.policy
    cutoffs = bundle.cutoffs
    both = getattr(bundle, "predict_with_contributions", None)
    if reasons and contributions is None and both is not None:
        # One encoding of the rows for both models' predictions and contributions.
        predicted, contributions = both(features)
    else:
        predicted = bundle.predict(features)
    ev = predicted["expected_value"].to_numpy(dtype=np.float64)
    fit = icp_fit(features, bundle.icp)
    fit_score = fit["icp_fit"].to_numpy(dtype=np.float64)
    evidence = evidence_score(features).to_numpy(dtype=np.float64)
    prio = priority(ev, fit_score, cutoffs.reference_ev, policy.weights)
    if population:
        assignment = assign_tiers(prio, fit_score, evidence, policy)
    else:
        assignment = tier_with_cutoffs(prio, fit_score, evidence, cutoffs, policy)

    columns: dict[str, Any] = {
        "account_id": features["account_id"].to_numpy(dtype=object),
        "p_win": predicted["p_win"].to_numpy(dtype=np.float64),
        "deal_value": predicted["deal_value"].to_numpy(dtype=np.float64),
        "value_p10": predicted["value_p10"].to_numpy(dtype=np.float64),
        "value_p90": predicted["value_p90"].to_numpy(dtype=np.float64),
        "expected_value": ev,
        "icp_fit": fit_score,
        "evidence": evidence,
        "priority": prio,
        "tier": assignment.tier.astype(np.int64),
        "tier_rule": assignment.rule,
        "cutoffs_used": assignment.describe_cutoffs(),
        "model_version": model_version(bundle),
    }
    if reasons:
        win_contrib, value_contrib = (
            contributions if contributions is not None else bundle.contributions(features)
        )
        p_base = base_win_probability(bundle, win_contrib["bias"].to_numpy(dtype=np.float64))
        icp_missed = fit["icp_missed"].tolist()
        text = reason_columns(
            features,
            win_contrib,
            value_contrib,
            p_win=columns["p_win"],
            p_base=p_base,
            expected_value=ev,
            icp_fit=fit_score,
            icp_missed=icp_missed,
            evidence=evidence,
            priority=prio,
            assignment=assignment,
            reference_ev=cutoffs.reference_ev,
            policy=policy,
            playbook=bundle.playbook,
            top=top_reasons,
        )
        columns.update(
            reasons=text["reasons"],
            reason_summary=text["reason_summary"],
            tier_rule_text=text["tier_rule_text"],
            icp_met=fit["icp_met"].to_numpy(),
            icp_missed=fit["icp_missed"].to_numpy(),
            next_tier_hint=text["next_tier_hint"],
            playbook=text["playbook"],
        )
    # One frame built from all columns at once (adding columns one by one costs more than
    # scoring a single account).
    return pd.DataFrame(columns, index=features.index)
