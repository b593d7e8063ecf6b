"""Single online requests tiered against their owner's or territory's cut-offs
(``serving.group_cutoffs``): the bundle's reference scale for priority, the group's cut-offs
from the last batch run for the tier, and the group named in ``cutoffs_used``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd

from serving.group_cutoffs import GroupCutoffs
from serving.schemas import AccountRequest
from tiering.bundle import Bundle


def bundle_for(
    bundle: Bundle, groups: GroupCutoffs, accounts: Sequence[AccountRequest]
) -> list[Bundle]:
    """One bundle per account whose reference cut-offs are its group's."""
    out = []
    for account in accounts:
        key = groups.group_of(account.account_id, account.owner, account.territory)
        found = groups.groups.get(key)
        if found is None:
            out.append(bundle)
            continue
        cutoffs = dataclasses.replace(
            bundle.cutoffs, tier1_priority=found["tier1"], tier2_priority=found["tier2"]
        )
        out.append(dataclasses.replace(bundle, cutoffs=cutoffs))
    return out


def score_in_groups(
    bundle: Bundle,
    features: pd.DataFrame,
    accounts: Sequence[AccountRequest],
    groups: GroupCutoffs,
    *,
    reasons: bool,
    top: int,
) -> pd.DataFrame:
    """``tiering.scoring.score`` of each request row against its group's cut-offs."""
    from tiering.scoring import score

    keys = [groups.group_of(a.account_id, a.owner, a.territory) for a in accounts]
    per_account = bundle_for(bundle, groups, accounts)
    parts = []
    for key in dict.fromkeys(keys):
        rows = [i for i, k in enumerate(keys) if k == key]
        scored = score(
            per_account[rows[0]],
            features.iloc[rows],
            reasons=reasons,
            population=False,
            top_reasons=top,
        )
        parts.append(scored.assign(cutoffs_used=groups.describe(key)))
    return pd.concat(parts).loc[features.index]
