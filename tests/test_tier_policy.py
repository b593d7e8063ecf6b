"""Risk: tiers that do not match the policy a revenue team signed up for: wrong tier sizes, an
off-ICP or unknown account in Tier 1, a better account placed below a worse one, or an online
request tiered differently from the batch run it should agree with."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tiering.config import PriorityWeights, TierPolicy
from tiering.policy import (
    RULE_EVIDENCE_GATE,
    RULE_ICP_GATE,
    RULE_PRIORITY,
    ReferenceCutoffs,
    assign_tiers,
    ev_needed,
    priority,
    reference_cutoffs,
    reference_sample,
    target_sizes,
    tier_with_cutoffs,
)

NO_GATES = {"min_icp_fit_tier1": 0.0, "min_evidence_tier1": 0.0}


def population(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ev = rng.lognormal(10, 1.5, n)
    icp = rng.uniform(0, 100, n)
    evidence = rng.uniform(0, 1, n)
    return ev, icp, evidence


@pytest.mark.parametrize(("n", "expected"), [(1000, (200, 600, 200)), (1003, (201, 601, 201))])
def test_quantile_sizes_match_the_policy_exactly(n: int, expected: tuple[int, int, int]) -> None:
    ev, icp, evidence = population(n)
    policy = TierPolicy(**NO_GATES)
    prio = priority(ev, icp, ev, policy.weights)
    result = assign_tiers(prio, icp, evidence, policy)
    assert target_sizes(n, policy) == expected
    assert result.sizes == expected


def test_quantile_sizes_hold_with_gates_when_enough_accounts_are_eligible() -> None:
    ev, icp, evidence = population(1003, seed=1)
    evidence = 0.1 + 0.9 * evidence  # ~11 % below 0.2: enough accounts may still hold Tier 2
    policy = TierPolicy(min_icp_fit_tier1=50, min_evidence_tier1=0.4)
    assert (evidence >= 0.2).sum() >= 802
    result = assign_tiers(priority(ev, icp, ev, policy.weights), icp, evidence, policy)
    assert result.sizes == (201, 601, 201)
    assert (result.rule != RULE_PRIORITY).any(), "the gates must actually have demoted someone"


def test_quantile_sizes_with_tied_priorities_are_exact_and_deterministic() -> None:
    prio = np.repeat([0.9, 0.5, 0.1], [7, 7, 6])  # 20 accounts in three blocks of ties
    ones = np.full(prio.size, 100.0)
    policy = TierPolicy(**NO_GATES)
    first = assign_tiers(prio, ones, ones / 100, policy)
    second = assign_tiers(prio, ones, ones / 100, policy)
    assert first.sizes == (4, 12, 4)
    np.testing.assert_array_equal(first.tier, second.tier)
    # Ties are broken by input order: the first four of the top block hold Tier 1.
    np.testing.assert_array_equal(first.tier[:7], [1, 1, 1, 1, 2, 2, 2])


def test_capacity_sizes_match_reps_times_accounts_per_rep() -> None:
    ev, icp, evidence = population(5000, seed=2)
    policy = TierPolicy(method="capacity", reps=8, tier1_per_rep=25, tier2_per_rep=150, **NO_GATES)
    result = assign_tiers(priority(ev, icp, ev, policy.weights), icp, evidence, policy)
    assert result.sizes == (200, 1200, 3600)


def test_capacity_larger_than_the_list_fills_tiers_in_order() -> None:
    ev, icp, evidence = population(300, seed=3)
    policy = TierPolicy(method="capacity", reps=5, tier1_per_rep=25, tier2_per_rep=150, **NO_GATES)
    result = assign_tiers(priority(ev, icp, ev, policy.weights), icp, evidence, policy)
    assert result.sizes == (125, 175, 0)


def test_threshold_tiers_follow_the_fixed_cutoffs() -> None:
    ev, icp, evidence = population(2000, seed=4)
    policy = TierPolicy(
        method="threshold", tier1_min_priority=0.7, tier2_min_priority=0.4, **NO_GATES
    )
    prio = priority(ev, icp, ev, policy.weights)
    result = assign_tiers(prio, icp, evidence, policy)
    expected = np.where(prio >= 0.7, 1, np.where(prio >= 0.4, 2, 3))
    np.testing.assert_array_equal(result.tier, expected)
    assert result.sizes == tuple(int((expected == t).sum()) for t in (1, 2, 3))


@pytest.mark.parametrize("method", ["quantile", "capacity", "threshold"])
def test_icp_gate_keeps_poor_fits_out_of_tier_1(method: str) -> None:
    ev, icp, evidence = population(2000, seed=5)
    evidence[:] = 1.0
    policy = TierPolicy(
        method=method,
        reps=10,
        tier1_min_priority=0.6,
        tier2_min_priority=0.3,
        min_icp_fit_tier1=70,
    )
    prio = priority(ev, icp, ev, policy.weights)
    result = assign_tiers(prio, icp, evidence, policy)
    assert (icp[result.tier == 1] >= 70).all()
    blocked = result.rule == RULE_ICP_GATE
    assert blocked.any()
    assert (result.tier[blocked] == 2).all()
    if method != "threshold":
        # Freed seats went to the next eligible accounts: Tier 1 keeps its size.
        assert result.sizes[0] == target_sizes(prio.size, policy)[0]  # type: ignore[index]


@pytest.mark.parametrize("method", ["quantile", "capacity", "threshold"])
def test_low_evidence_caps_the_tier(method: str) -> None:
    ev, icp, evidence = population(2000, seed=6)
    icp[:] = 100.0
    policy = TierPolicy(
        method=method,
        reps=10,
        tier1_min_priority=0.6,
        tier2_min_priority=0.3,
        min_evidence_tier1=0.5,
    )
    prio = priority(ev, icp, ev, policy.weights)
    result = assign_tiers(prio, icp, evidence, policy)
    assert (result.tier[evidence < 0.5] >= 2).all()
    assert (result.tier[evidence < 0.25] == 3).all()
    assert (result.rule == RULE_EVIDENCE_GATE).any()


@pytest.mark.parametrize("method", ["quantile", "capacity", "threshold"])
def test_lowering_an_accounts_evidence_or_fit_never_promotes_it(method: str) -> None:
    rng = np.random.default_rng(7)
    policy = TierPolicy(
        method=method,
        reps=3,
        tier1_per_rep=10,
        tier2_per_rep=40,
        tier1_min_priority=0.6,
        tier2_min_priority=0.35,
        min_icp_fit_tier1=50,
        min_evidence_tier1=0.5,
    )
    ev, icp, evidence = population(400, seed=7)
    prio = priority(ev, icp, ev, policy.weights)
    before = assign_tiers(prio, icp, evidence, policy)
    demoted_somewhere = False
    # One account at a time: its own lower evidence or fit must never lift it.
    for who in rng.choice(400, size=120, replace=False):
        low_evidence, low_fit = evidence.copy(), icp.copy()
        low_evidence[who] = rng.uniform(0, evidence[who])
        low_fit[who] = rng.uniform(0, icp[who])
        for ev_in, icp_in in ((low_evidence, icp), (evidence, low_fit)):
            after = assign_tiers(prio, icp_in, ev_in, policy).tier[who]
            assert after >= before.tier[who]
            demoted_somewhere |= bool(after > before.tier[who])
    assert demoted_somewhere


@pytest.mark.parametrize("method", ["quantile", "capacity", "threshold"])
def test_higher_priority_never_gets_a_lower_tier_among_equally_eligible(method: str) -> None:
    rng = np.random.default_rng(8)
    policy = TierPolicy(
        method=method,
        reps=2,
        tier1_per_rep=15,
        tier2_per_rep=60,
        tier1_min_priority=0.65,
        tier2_min_priority=0.4,
        min_icp_fit_tier1=40,
        min_evidence_tier1=0.4,
    )
    for _ in range(50):
        n = int(rng.integers(1, 600))
        prio = rng.choice(rng.uniform(0, 1, max(n // 3, 1)), n)  # plenty of exact ties
        icp = rng.uniform(0, 100, n)
        evidence = rng.uniform(0, 1, n)
        result = assign_tiers(prio, icp, evidence, policy)
        for ceiling in (1, 2, 3):
            same = result.ceiling == ceiling
            p, t = prio[same], result.tier[same]
            # For every pair with p_i > p_j: tier_i <= tier_j. Equivalently, sorted by priority
            # the tiers never get worse among strictly higher priorities.
            order = np.argsort(-p, kind="stable")
            p, t = p[order], t[order]
            worst_so_far = np.maximum.accumulate(t)
            strictly_lower = np.r_[False, p[1:] < p[:-1]]
            prev_worst = np.r_[1, worst_so_far[:-1]]
            assert (t[strictly_lower] >= prev_worst[strictly_lower]).all()
        # And a gated account never outranks an eligible one with the same or higher priority.
        assert (result.tier >= result.ceiling).all()


@pytest.mark.parametrize(
    "policy",
    [
        TierPolicy(min_icp_fit_tier1=60, min_evidence_tier1=0.5),
        TierPolicy(method="capacity", reps=4, tier1_per_rep=25, tier2_per_rep=100),
        TierPolicy(method="threshold", tier1_min_priority=0.7, tier2_min_priority=0.45),
        # Strict ICP gate: Tier 2 fills with demoted accounts above the Tier 1 cut-off.
        TierPolicy(min_icp_fit_tier1=95, min_evidence_tier1=0.9),
    ],
    ids=["quantile", "capacity", "threshold", "strict-gates"],
)
@pytest.mark.parametrize("n", [3000, 12_000])
def test_online_tiers_agree_with_the_batch_on_the_reference_population(
    policy: TierPolicy, n: int
) -> None:
    ev, icp, evidence = population(n, seed=9)
    cutoffs = reference_cutoffs(ev, icp, evidence, policy, as_of="2025-06-30")
    assert cutoffs.reference_ev.size == min(n, 10_000)
    prio = priority(ev, icp, cutoffs.reference_ev, policy.weights)
    batch = assign_tiers(prio, icp, evidence, policy)
    # The online path sees one account at a time.
    online = np.concatenate(
        [
            tier_with_cutoffs(
                prio[i : i + 1], icp[i : i + 1], evidence[i : i + 1], cutoffs, policy
            ).tier
            for i in range(0, n, max(n // 50, 1))
        ]
    )
    np.testing.assert_array_equal(online, batch.tier[:: max(n // 50, 1)])
    whole = tier_with_cutoffs(prio, icp, evidence, cutoffs, policy)
    np.testing.assert_array_equal(whole.tier, batch.tier)
    np.testing.assert_array_equal(whole.rule, batch.rule)
    assert whole.source == "reference" and "2025-06-30" in whole.describe_cutoffs()
    assert batch.sizes == cutoffs.tier_sizes


def test_reference_cutoffs_round_trip_through_json() -> None:
    ev, icp, evidence = population(500, seed=10)
    cutoffs = reference_cutoffs(ev, icp, evidence, TierPolicy(), as_of="2025-06-30")
    restored = ReferenceCutoffs.from_dict(json.loads(json.dumps(cutoffs.to_dict())))
    np.testing.assert_array_equal(restored.reference_ev, cutoffs.reference_ev)
    assert restored.tier1_priority == cutoffs.tier1_priority
    assert restored.tier2_priority == cutoffs.tier2_priority
    assert (restored.as_of, restored.method, restored.n_accounts) == ("2025-06-30", "quantile", 500)
    assert restored.tier_sizes == cutoffs.tier_sizes


def test_unreachable_tier_is_stored_as_none_and_nobody_reaches_it_online() -> None:
    ev, icp, evidence = population(200, seed=11)
    policy = TierPolicy(min_icp_fit_tier1=100)  # nobody has a perfect fit
    icp = np.minimum(icp, 99)
    cutoffs = reference_cutoffs(ev, icp, evidence, policy, as_of="2025-06-30")
    assert cutoffs.tier1_priority is None
    restored = ReferenceCutoffs.from_dict(json.loads(json.dumps(cutoffs.to_dict())))
    result = tier_with_cutoffs([1.0], [100.0], [1.0], restored, policy)
    assert result.tier.tolist() == [2]


def test_priority_ranks_on_the_reference_scale() -> None:
    ref = np.arange(1, 101, dtype=float)  # EVs 1..100
    weights = PriorityWeights(expected_value=1.0, icp_fit=0.0)
    np.testing.assert_allclose(
        priority([0.5, 1, 50, 1000], [0, 0, 0, 0], ref, weights), [0.0, 0.01, 0.5, 1.0]
    )
    both = PriorityWeights(expected_value=0.7, icp_fit=0.3)
    np.testing.assert_allclose(priority([50], [80], ref, both), [0.7 * 0.5 + 0.3 * 0.8])


def test_ev_needed_inverts_priority() -> None:
    rng = np.random.default_rng(12)
    ref = np.sort(rng.lognormal(10, 1, 1000))
    weights = PriorityWeights()
    icp = rng.uniform(0, 100, 200)
    target = rng.uniform(0.2, 0.9, 200)
    needed = ev_needed(target, icp, ref, weights)
    ok = np.isfinite(needed) & (needed > 0)
    assert ok.sum() > 100
    assert (priority(needed[ok], icp[ok], ref, weights) >= target[ok] - 1e-12).all()
    # The percentile is continuous between reference values: a hair less falls short.
    below = needed[ok] * (1 - 1e-9)
    assert (priority(below, icp[ok], ref, weights) < target[ok]).all()


def test_distinct_expected_values_get_distinct_priorities_beyond_the_reference_sample() -> None:
    """A list larger than the reference sample must not tie at a cut-off (a batch breaks ties by
    row order, an online request cannot)."""
    rng = np.random.default_rng(5)
    ev = rng.lognormal(10, 1, 30_000)
    ref = reference_sample(ev)
    assert ref.size < ev.size
    inside = (ev > ref[0]) & (ev < ref[-1])
    prio = priority(ev[inside], np.zeros(inside.sum()), ref, PriorityWeights())
    assert len(np.unique(prio)) == len(np.unique(ev[inside]))
    order = np.argsort(ev[inside])
    assert (np.diff(prio[order]) >= 0).all()


def test_bad_inputs_get_a_clear_error() -> None:
    policy = TierPolicy()
    with pytest.raises(ValueError, match=r"icp_fit: 1 missing"):
        assign_tiers([0.1, 0.2], [np.nan, 50], [1, 1], policy)
    with pytest.raises(ValueError, match=r"evidence: 3 values, expected 2"):
        assign_tiers([0.1, 0.2], [50, 50], [1, 1, 1], policy)
    with pytest.raises(ValueError, match="missing keys"):
        ReferenceCutoffs.from_dict({"reference_ev": [1.0]})
    cutoffs = reference_cutoffs([1.0, 2.0], [50, 50], [1, 1], policy, as_of="2025-01-01")
    with pytest.raises(ValueError, match="frozen for method 'quantile'"):
        tier_with_cutoffs([0.5], [50], [1], cutoffs, TierPolicy(method="capacity", reps=1))
