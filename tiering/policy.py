"""The tier policy: priority from expected value and ICP fit, tiers by quantile, capacity or
threshold, the ICP and evidence gates, and the reference cut-offs frozen in the bundle.

Priority
    ``priority = (w_ev * percentile(EV) + w_icp * ICP fit / 100) / (w_ev + w_icp)``, in [0, 1].
    The EV percentile is the share of the *reference* expected values (the account list as of
    the end of training, frozen in the bundle) that are <= the account's EV, so one online
    request and a batch run rank on the same scale. Dividing by the weight sum keeps priority
    in [0, 1] whatever the weights, so threshold cut-offs mean the same under any weights (the
    default weights 0.7 / 0.3 already sum to 1).

Tier sizes (batch, over a population)
    quantile  Tier 1 = ``round_half_up(tier1_share * n)`` accounts; Tiers 1 + 2 together =
              ``round_half_up((tier1_share + tier2_share) * n)``; the rest is Tier 3. Rounding the
              cumulative share (not each tier) keeps the three sizes summing to n, e.g. 20/60/20
              of 1,003 accounts gives 201 / 601 / 201.
    capacity  Tier 1 = ``min(reps * tier1_per_rep, n)``, Tier 2 = ``min(reps * tier2_per_rep, n -
              Tier 1)``, the rest Tier 3.
    threshold priority >= ``tier1_min_priority`` is Tier 1, >= ``tier2_min_priority`` Tier 2; the
              sizes are whatever falls on each side.
    Accounts are ranked by priority, highest first; equal priorities keep their input order
    (stable sort), so the outcome is deterministic.

Gates (every method)
    Each account gets a *ceiling*, the best tier it may hold: ICP fit below
    ``min_icp_fit_tier1`` or evidence below ``min_evidence_tier1`` -> at best Tier 2; evidence
    below half of ``min_evidence_tier1`` -> Tier 3. Gates only ever demote. Under quantile and
    capacity the seats are filled in priority order by the accounts whose ceiling allows the
    tier: a demoted account's Tier 1 seat goes to the next account by priority that may hold
    Tier 1, so Tier 1 (and likewise Tier 2) keeps its policy size whenever enough eligible
    accounts exist; otherwise the tier is smaller and the remainder goes to Tier 3. Among
    accounts with the same ceiling, a higher priority never gets a lower tier.

Cut-offs
    After a batch assignment the effective cut-offs are the lowest priority holding Tier 1 and
    Tier 2. A single online request is tiered with the reference cut-offs computed the same way
    on the reference population: Tier 1 if its ceiling allows it and priority >= the Tier 1
    cut-off, else Tier 2 if allowed and priority >= the Tier 2 cut-off, else Tier 3. On the
    reference population itself this reproduces the batch tiers exactly (up to exact priority
    ties at a cut-off, which the batch breaks by input order).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from tiering.config import PriorityWeights, TierPolicy

MAX_REFERENCE = 10_000
"""Expected values kept in the reference sample (evenly spaced quantiles beyond this size)."""

RULE_PRIORITY = "priority"
RULE_ICP_GATE = "icp_gate"
RULE_EVIDENCE_GATE = "evidence_gate"
RULE_ICP_AND_EVIDENCE_GATE = "icp_and_evidence_gate"
RULES = (RULE_PRIORITY, RULE_ICP_GATE, RULE_EVIDENCE_GATE, RULE_ICP_AND_EVIDENCE_GATE)
SHORTFALL_TOLERANCE = 0.10
"""A tier the gates leave more than this share below its policy size is warned about."""
"""Per-account rule codes: the tier follows from priority against the cut-offs, or a gate held
the account below the tier its priority reaches."""


def _as_finite(values: ArrayLike, name: str, n: int | None = None) -> NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name}: {arr.shape[0]} values, expected {n} (one per account)")
    bad = ~np.isfinite(arr)
    if bad.any():
        where = np.flatnonzero(bad)[:3].tolist()
        raise ValueError(
            f"{name}: {int(bad.sum())} missing or infinite values (e.g. at positions {where})"
        )
    return arr


def _sorted_reference(reference_ev: ArrayLike) -> NDArray[np.float64]:
    ref = _as_finite(reference_ev, "reference expected values")
    if ref.size == 0:
        raise ValueError(
            "reference expected values: empty; the bundle needs a reference population"
        )
    if ref.size > 1 and np.any(ref[1:] < ref[:-1]):
        ref = np.sort(ref)
    return ref


def ev_percentile(expected_value: ArrayLike, reference_ev: ArrayLike) -> NDArray[np.float64]:
    """Share of the reference expected values that are <= each expected value, in [0, 1],
    interpolated linearly between neighbouring reference values.

    On a reference value it is exactly the share of values <= it; between two, it rises
    linearly, so distinct expected values get distinct priorities even when the reference is a
    sample of quantiles (a list of more than ``MAX_REFERENCE`` accounts): a tie at a cut-off
    would otherwise be broken by row order in a batch and not at all online.
    """
    ev = _as_finite(expected_value, "expected_value")
    ref = _sorted_reference(reference_ev)
    n = ref.size
    k = np.searchsorted(ref, ev, side="right")
    lo = ref[np.clip(k - 1, 0, n - 1)]
    hi = ref[np.clip(k, 0, n - 1)]
    gap = hi - lo
    inside = (k > 0) & (k < n) & (gap > 0)
    frac = np.zeros(ev.shape)
    np.divide(ev - lo, gap, out=frac, where=inside)
    return (k + np.clip(frac, 0.0, 1.0)) / n


def priority(
    expected_value: ArrayLike,
    icp_fit: ArrayLike,
    reference_ev: ArrayLike,
    weights: PriorityWeights,
) -> NDArray[np.float64]:
    """Priority in [0, 1] per account (see the module docstring for the formula)."""
    ev = _as_finite(expected_value, "expected_value")
    fit = _as_finite(icp_fit, "icp_fit", ev.size)
    total = weights.expected_value + weights.icp_fit
    pct = ev_percentile(ev, reference_ev)
    return (weights.expected_value * pct + weights.icp_fit * np.clip(fit, 0, 100) / 100) / total


def ev_needed(
    target_priority: ArrayLike,
    icp_fit: ArrayLike,
    reference_ev: ArrayLike,
    weights: PriorityWeights,
) -> NDArray[np.float64]:
    """The smallest expected value that reaches ``target_priority`` at each account's ICP fit.

    0 where the ICP fit alone reaches it; NaN where no expected value can (or the expected value
    carries no weight). Inverts :func:`priority` exactly on the reference sample.
    """
    ref = _sorted_reference(reference_ev)
    fit = np.clip(_as_finite(icp_fit, "icp_fit"), 0, 100)
    target = np.broadcast_to(np.asarray(target_priority, dtype=np.float64), fit.shape)
    out = np.full(fit.shape, np.nan)
    if weights.expected_value <= 0:
        return out
    total = weights.expected_value + weights.icp_fit
    pct_needed = (target * total - weights.icp_fit * fit / 100) / weights.expected_value
    # ev >= ref[ceil(pct * m) - 1] always reaches pct (the share of reference values <= it);
    # between two reference values the percentile is linear, so the exact inverse is the
    # interpolated point, kept where it does reach pct (duplicates make steps). The epsilon keeps
    # float noise (3.0000000001) from asking for one more reference value.
    m = ref.size
    with np.errstate(invalid="ignore"):
        t = pct_needed * m
        k = np.ceil(t - 1e-9)
    reachable = np.isfinite(k) & (k <= m)
    free = reachable & (k <= 0)
    idx = np.clip(np.nan_to_num(k, nan=1.0), 1, m).astype(np.int64) - 1
    sufficient = ref[idx]
    base = np.clip(np.floor(np.nan_to_num(t, nan=1.0)), 1, m).astype(np.int64)
    frac = np.clip(np.nan_to_num(t, nan=1.0) - base, 0.0, 1.0)
    interpolated = ref[base - 1] + frac * (ref[np.minimum(base, m - 1)] - ref[base - 1])
    for _ in range(4):  # rounding may leave the interpolated point a hair short
        short = ev_percentile(interpolated, ref) < pct_needed
        if not short.any():
            break
        interpolated = np.where(short, np.nextafter(interpolated, np.inf), interpolated)
    exact = np.where(ev_percentile(interpolated, ref) >= pct_needed, interpolated, sufficient)
    out[reachable] = np.minimum(exact, sufficient)[reachable]
    out[free] = 0.0
    return out


def icp_needed(
    target_priority: ArrayLike,
    expected_value: ArrayLike,
    reference_ev: ArrayLike,
    weights: PriorityWeights,
) -> NDArray[np.float64]:
    """The ICP fit (0-100) that reaches ``target_priority`` at each account's expected value;
    0 where the expected value alone reaches it, NaN where no ICP fit can."""
    pct = ev_percentile(expected_value, reference_ev)
    out = np.full(pct.shape, np.nan)
    if weights.icp_fit <= 0:
        return out
    total = weights.expected_value + weights.icp_fit
    target = np.broadcast_to(np.asarray(target_priority, dtype=np.float64), pct.shape)
    needed = (target * total - weights.expected_value * pct) / weights.icp_fit * 100
    ok = np.isfinite(needed) & (needed <= 100 + 1e-9)
    out[ok] = np.clip(needed[ok], 0, 100)
    return out


def tier_ceiling(
    icp_fit: NDArray[np.float64], evidence: NDArray[np.float64], policy: TierPolicy
) -> NDArray[np.int8]:
    """The best tier each account may hold under the ICP and evidence gates (1, 2 or 3)."""
    ceiling = np.ones(icp_fit.shape, dtype=np.int8)
    ceiling[(icp_fit < policy.min_icp_fit_tier1) | (evidence < policy.min_evidence_tier1)] = 2
    ceiling[evidence < policy.min_evidence_tier1 / 2] = 3
    return ceiling


@dataclass(frozen=True)
class TierAssignment:
    """Tiers of a set of accounts and how they were reached.

    ``tier1_cutoff`` / ``tier2_cutoff`` are priorities (None: nobody holds that tier, i.e. the
    cut-off is out of reach). ``source`` is "population" for a batch run over the list and
    "reference" for tiers from the cut-offs frozen in the bundle. ``rank`` (1 = highest priority)
    exists for batch runs only. ``by_priority`` is the tier priority alone would give against
    the cut-offs; ``ceiling`` the best tier the gates allow; ``rule`` one of :data:`RULES`.
    """

    tier: NDArray[np.int8]
    rule: NDArray[np.object_]
    ceiling: NDArray[np.int8]
    by_priority: NDArray[np.int8]
    tier1_cutoff: float | None
    tier2_cutoff: float | None
    method: str
    source: str
    n_population: int
    target_sizes: tuple[int, int, int] | None = None
    rank: NDArray[np.int64] | None = None
    as_of: str | None = None
    warnings: tuple[str, ...] = ()
    """Tiers the gates left more than 10 % below their policy size, with count and cause."""

    @property
    def sizes(self) -> tuple[int, int, int]:
        counts = np.bincount(self.tier, minlength=4)
        return int(counts[1]), int(counts[2]), int(counts[3])

    def describe_cutoffs(self) -> str:
        """Which cut-offs placed these accounts, for the ``cutoffs_used`` output column."""
        cuts = f"Tier 1 >= {_fmt_cut(self.tier1_cutoff)}, Tier 2 >= {_fmt_cut(self.tier2_cutoff)}"
        if self.source == "population":
            return f"{self.method} over this run's {self.n_population:,} accounts ({cuts})"
        return (
            f"reference {self.method} cut-offs as of {self.as_of} "
            f"({self.n_population:,} accounts; {cuts})"
        )


def _fmt_cut(cut: float | None) -> str:
    return "unreachable" if cut is None else f"{cut:.4f}"


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5 + 1e-9)


def target_sizes(n: int, policy: TierPolicy) -> tuple[int, int, int] | None:
    """Tier sizes the policy asks for over ``n`` accounts (None for threshold)."""
    if policy.method == "quantile":
        n1 = min(_round_half_up(policy.tier1_share * n), n)
        n12 = min(_round_half_up((policy.tier1_share + policy.tier2_share) * n), n)
        return n1, n12 - n1, n - n12
    if policy.method == "capacity":
        reps = policy.reps or 0
        n1 = min(reps * policy.tier1_per_rep, n)
        n2 = min(reps * policy.tier2_per_rep, n - n1)
        return n1, n2, n - n1 - n2
    return None


def _cut(c: float | None) -> float:
    return np.inf if c is None else c


def _tiers_from_cutoffs(
    prio: NDArray[np.float64],
    ceiling: NDArray[np.int8],
    c1: float | None,
    c2: float | None,
) -> NDArray[np.int8]:
    t1 = (ceiling <= 1) & (prio >= _cut(c1))
    t2 = ~t1 & (ceiling <= 2) & (prio >= _cut(c2))
    return np.where(t1, 1, np.where(t2, 2, 3)).astype(np.int8)


def _rules(
    tier: NDArray[np.int8],
    by_priority: NDArray[np.int8],
    icp_fit: NDArray[np.float64],
    evidence: NDArray[np.float64],
    policy: TierPolicy,
) -> NDArray[np.object_]:
    held_back = tier > by_priority
    icp_gate = held_back & (by_priority == 1) & (icp_fit < policy.min_icp_fit_tier1)
    evidence_gate = held_back & (
        ((by_priority == 1) & (evidence < policy.min_evidence_tier1))
        | ((by_priority <= 2) & (evidence < policy.min_evidence_tier1 / 2))
    )
    rule = np.full(tier.shape, RULE_PRIORITY, dtype=object)
    rule[icp_gate] = RULE_ICP_GATE
    rule[evidence_gate] = RULE_EVIDENCE_GATE
    rule[icp_gate & evidence_gate] = RULE_ICP_AND_EVIDENCE_GATE
    return rule


def tier_shortfalls(
    tier: ArrayLike,
    priority: ArrayLike,
    icp_fit: ArrayLike,
    evidence: ArrayLike,
    policy: TierPolicy,
) -> list[str]:
    """One warning per tier that the ICP and evidence gates leave more than
    :data:`SHORTFALL_TOLERANCE` below its policy size (quantile and capacity: the sizes the
    policy asks for; threshold: the accounts whose priority reaches the tier), with the count
    and which gate held the accounts back. A silent empty Tier 1 is the failure this prevents."""
    prio, fit, evid = _inputs(priority, icp_fit, evidence)
    tiers = np.asarray(tier).reshape(-1)
    n = prio.size
    targets = target_sizes(n, policy)
    if targets is None:
        reach = _tiers_from_cutoffs(
            prio, np.ones(n, dtype=np.int8), policy.tier1_min_priority, policy.tier2_min_priority
        )
        targets = (int((reach == 1).sum()), int((reach == 2).sum()), int((reach == 3).sum()))
    ceiling = tier_ceiling(fit, evid, policy)
    warnings = []
    for level, target in ((1, targets[0]), (2, targets[1])):
        actual = int((tiers == level).sum())
        short = target - actual
        if target <= 0 or short <= SHORTFALL_TOLERANCE * target:
            continue
        if level == 1:
            causes = [
                (
                    int((fit < policy.min_icp_fit_tier1).sum()),
                    f"an ICP fit below {policy.min_icp_fit_tier1:g} (tiers.min_icp_fit_tier1)",
                ),
                (
                    int((evid < policy.min_evidence_tier1).sum()),
                    f"evidence below {policy.min_evidence_tier1:g} (tiers.min_evidence_tier1)",
                ),
            ]
        else:
            causes = [
                (
                    int((evid < policy.min_evidence_tier1 / 2).sum()),
                    "evidence below "
                    f"{policy.min_evidence_tier1 / 2:g} (half of tiers.min_evidence_tier1)",
                ),
            ]
        eligible = int((ceiling <= level).sum())
        held = "; ".join(f"{count:,} have {what}" for count, what in causes if count)
        warnings.append(
            f"Tier {level} holds {actual:,} accounts, {short:,} ({short / target:.0%}) below its "
            f"policy size of {target:,}: only {eligible:,} of {n:,} accounts pass the Tier {level} "
            f"gates ({held or 'no gate failed'}); the accounts held back go to a lower tier"
        )
    return warnings


def _inputs(
    prio: ArrayLike, icp_fit: ArrayLike, evidence: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    p = _as_finite(prio, "priority")
    return p, _as_finite(icp_fit, "icp_fit", p.size), _as_finite(evidence, "evidence", p.size)


def assign_tiers(
    priority: ArrayLike,
    icp_fit: ArrayLike,
    evidence: ArrayLike,
    policy: TierPolicy,
) -> TierAssignment:
    """Tier a whole population (batch); see the module docstring for sizes and gates."""
    prio, fit, evid = _inputs(priority, icp_fit, evidence)
    n = prio.size
    ceiling = tier_ceiling(fit, evid, policy)
    # Highest priority first; a stable sort keeps equal priorities in input order.
    order = np.argsort(-prio, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    sizes = target_sizes(n, policy)
    if sizes is None:
        c1, c2 = policy.tier1_min_priority, policy.tier2_min_priority
        tier = _tiers_from_cutoffs(prio, ceiling, c1, c2)
    else:
        n1, n2, _ = sizes
        ceil_sorted = ceiling[order]
        may1 = ceil_sorted == 1
        in1 = may1 & (np.cumsum(may1) <= n1)
        may2 = (ceil_sorted <= 2) & ~in1
        in2 = may2 & (np.cumsum(may2) <= n2)
        tier = np.empty(n, dtype=np.int8)
        tier[order] = np.where(in1, 1, np.where(in2, 2, 3))
        c1 = float(prio[tier == 1].min()) if (tier == 1).any() else None
        c2 = float(prio[tier == 2].min()) if (tier == 2).any() else None
    by_priority = _tiers_from_cutoffs(prio, np.ones_like(ceiling), c1, c2)
    return TierAssignment(
        tier=tier,
        rule=_rules(tier, by_priority, fit, evid, policy),
        ceiling=ceiling,
        by_priority=by_priority,
        tier1_cutoff=c1,
        tier2_cutoff=c2,
        method=policy.method,
        source="population",
        n_population=n,
        target_sizes=sizes,
        rank=rank,
        warnings=tuple(tier_shortfalls(tier, prio, fit, evid, policy)),
    )


@dataclass(frozen=True)
class ReferenceCutoffs:
    """What a single online request is tiered against, frozen in the bundle at training end.

    ``reference_ev`` is the sorted expected values of the reference population (evenly spaced
    quantiles when it has more than :data:`MAX_REFERENCE` accounts); ``tier1_priority`` /
    ``tier2_priority`` the effective cut-offs of the batch assignment of that population
    (None: nobody reached the tier). An empty ``reference_ev`` stands for "not frozen yet":
    it round-trips, but ranking against it is refused.
    """

    as_of: str
    reference_ev: NDArray[np.float64]
    tier1_priority: float | None
    tier2_priority: float | None
    n_accounts: int
    method: str = "quantile"
    tier_sizes: tuple[int, int, int] = (0, 0, 0)
    weights: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """Tiers the gates left more than 10 % below their policy size on the reference population."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of,
            "reference_ev": [float(v) for v in self.reference_ev],
            "tier1_priority": self.tier1_priority,
            "tier2_priority": self.tier2_priority,
            "n_accounts": self.n_accounts,
            "method": self.method,
            "tier_sizes": list(self.tier_sizes),
            "weights": dict(self.weights),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceCutoffs:
        missing = [k for k in ("as_of", "reference_ev") if k not in data]
        if missing:
            raise ValueError(f"reference cut-offs: missing keys {missing}")

        def cut(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        ref = np.asarray(data["reference_ev"], dtype=np.float64).reshape(-1)
        sizes = tuple(int(s) for s in data.get("tier_sizes", (0, 0, 0)))
        if len(sizes) != 3:
            raise ValueError(f"reference cut-offs: tier_sizes needs 3 numbers, got {sizes}")
        return cls(
            as_of=str(data["as_of"]),
            reference_ev=_sorted_reference(ref) if ref.size else ref,
            tier1_priority=cut("tier1_priority"),
            tier2_priority=cut("tier2_priority"),
            n_accounts=int(data.get("n_accounts", ref.size)),
            method=str(data.get("method", "quantile")),
            tier_sizes=(sizes[0], sizes[1], sizes[2]),
            weights={str(k): float(v) for k, v in data.get("weights", {}).items()},
            warnings=[str(w) for w in data.get("warnings", [])],
        )


def reference_sample(
    expected_value: ArrayLike, max_size: int = MAX_REFERENCE
) -> NDArray[np.float64]:
    """Sorted expected values, or ``max_size`` evenly spaced quantiles of them."""
    ev = _as_finite(expected_value, "expected_value")
    if ev.size == 0:
        raise ValueError("expected_value: the reference population is empty")
    if ev.size <= max_size:
        return np.sort(ev)
    return np.quantile(ev, np.linspace(0.0, 1.0, max_size))


def _iso(as_of: date | datetime | pd.Timestamp | str) -> str:
    try:
        return pd.Timestamp(as_of).date().isoformat()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"as_of: not a date: {as_of!r}") from exc


def reference_cutoffs(
    expected_value: ArrayLike,
    icp_fit: ArrayLike,
    evidence: ArrayLike,
    policy: TierPolicy,
    as_of: date | datetime | pd.Timestamp | str,
    max_reference: int = MAX_REFERENCE,
) -> ReferenceCutoffs:
    """Freeze the reference distribution and cut-offs of a population (the account list as of
    training end). Priorities are computed against the stored (possibly quantile-capped) sample,
    exactly as online requests will be, so online tiers reproduce this batch assignment."""
    ref = reference_sample(expected_value, max_reference)
    prio = priority(expected_value, icp_fit, ref, policy.weights)
    batch = assign_tiers(prio, icp_fit, evidence, policy)
    return ReferenceCutoffs(
        reference_ev=ref,
        tier1_priority=batch.tier1_cutoff,
        tier2_priority=batch.tier2_cutoff,
        as_of=_iso(as_of),
        method=policy.method,
        n_accounts=int(prio.size),
        tier_sizes=batch.sizes,
        weights=policy.weights.model_dump(),
        warnings=list(batch.warnings),
    )


def tier_with_cutoffs(
    priority: ArrayLike,
    icp_fit: ArrayLike,
    evidence: ArrayLike,
    cutoffs: ReferenceCutoffs,
    policy: TierPolicy,
) -> TierAssignment:
    """Tier accounts one by one against frozen reference cut-offs (online requests), with the
    same gates as :func:`assign_tiers`."""
    if cutoffs.method != policy.method:
        raise ValueError(
            f"reference cut-offs were frozen for method {cutoffs.method!r} but the policy says "
            f"{policy.method!r}; recompute the cut-offs with the policy"
        )
    prio, fit, evid = _inputs(priority, icp_fit, evidence)
    ceiling = tier_ceiling(fit, evid, policy)
    c1, c2 = cutoffs.tier1_priority, cutoffs.tier2_priority
    tier = _tiers_from_cutoffs(prio, ceiling, c1, c2)
    by_priority = _tiers_from_cutoffs(prio, np.ones_like(ceiling), c1, c2)
    return TierAssignment(
        tier=tier,
        rule=_rules(tier, by_priority, fit, evid, policy),
        ceiling=ceiling,
        by_priority=by_priority,
        tier1_cutoff=c1,
        tier2_cutoff=c2,
        method=cutoffs.method,
        source="reference",
        n_population=cutoffs.n_accounts,
        target_sizes=None,
        as_of=cutoffs.as_of,
    )
