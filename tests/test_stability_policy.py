"""The stability policy: tier sizes hold exactly whatever happens, ties are deterministic, a
second pass changes nothing, no tier moves without a reason, and between reviews only a
dramatic change moves an account."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiering.config import StabilityConfig, TierPolicy
from tiering.policy import assign_tiers, tier_ceiling
from tiering.stability import (
    CHANGE_CODES,
    CHANGE_FALL,
    CHANGE_GATE,
    CHANGE_NEW,
    CHANGE_PIN,
    CHANGE_REVIEW,
    CHANGE_RISE,
    Previous,
    change_texts,
    driver_shift,
    is_review,
    stabilise,
)

# No example database: tests leave nothing behind in the checkout.
settings.register_profile("tiering", database=None)
settings.load_profile("tiering")

POLICY = TierPolicy(min_icp_fit_tier1=40)
CONFIG = StabilityConfig()

# Priorities on a coarse grid make exact ties common.
priorities = st.lists(
    st.one_of(st.sampled_from([0.1, 0.3, 0.5, 0.5, 0.7, 0.9]), st.floats(0, 1)),
    min_size=3,
    max_size=60,
)


@st.composite
def two_runs(draw: st.DrawFn) -> dict[str, np.ndarray]:
    prio_before = np.array(draw(priorities))
    n = prio_before.size
    shift = np.array(draw(st.lists(st.floats(-0.3, 0.3), min_size=n, max_size=n)))
    moved = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    fit_before = np.array(
        draw(st.lists(st.sampled_from([20.0, 50.0, 80.0]), min_size=n, max_size=n))
    )
    fit_now = np.where(
        np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n))),
        fit_before,
        np.array(draw(st.lists(st.sampled_from([20.0, 50.0, 80.0]), min_size=n, max_size=n))),
    )
    evidence = np.array(draw(st.lists(st.sampled_from([0.1, 0.4, 0.9]), min_size=n, max_size=n)))
    return {
        "prio_before": prio_before,
        "prio_now": np.clip(prio_before + np.where(moved, shift, 0.0), 0, 1),
        "fit_before": fit_before,
        "fit_now": fit_now,
        "evidence": evidence,
    }


def _run(prio: np.ndarray, fit: np.ndarray, evidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    base = assign_tiers(prio, fit, evidence, POLICY)
    return base.tier, tier_ceiling(fit, evidence, POLICY)


def _previous(tier: np.ndarray, ceiling: np.ndarray, prio: np.ndarray) -> Previous:
    ids = [f"A-{i}" for i in range(tier.size)]
    frame = pd.DataFrame({"account_id": ids, "tier": tier, "ceiling": ceiling, "priority": prio})
    return Previous.align(ids, frame)


def _stable_pair(runs: dict[str, np.ndarray], review: bool, config: StabilityConfig = CONFIG):
    base0, ceil0 = _run(runs["prio_before"], runs["fit_before"], runs["evidence"])
    base1, ceil1 = _run(runs["prio_now"], runs["fit_now"], runs["evidence"])
    prev = _previous(base0, ceil0, runs["prio_before"])
    out = stabilise(runs["prio_now"], ceil1, base1, prev, config, review=review)
    return out, base1, ceil1, prev


@settings(max_examples=150, deadline=None)
@given(runs=two_runs(), review=st.booleans())
def test_tier_sizes_hold_exactly(runs: dict[str, np.ndarray], review: bool) -> None:
    out, base, ceiling, _ = _stable_pair(runs, review)
    assert out.sizes == tuple(int((base == t).sum()) for t in (1, 2, 3))
    # The policy never lifts an account above what its gates allow.
    assert (out.tier >= ceiling).all()


@settings(max_examples=150, deadline=None)
@given(runs=two_runs(), review=st.booleans())
def test_every_move_has_a_reason_and_no_reason_without_a_move(
    runs: dict[str, np.ndarray], review: bool
) -> None:
    out, _, _, prev = _stable_pair(runs, review)
    moved = out.tier != prev.tier
    assert set(out.change[moved]) <= set(CHANGE_CODES)
    assert (out.change[moved] != "").all()
    assert (out.change[~moved] == "").all()
    texts = change_texts(
        out.change, out.tier, prev.tier, runs["prio_now"], prev.priority, out.cutoffs
    )
    assert all(bool(t) == bool(m) for t, m in zip(texts, moved, strict=True))


@settings(max_examples=150, deadline=None)
@given(runs=two_runs(), review=st.booleans())
def test_a_second_pass_over_the_same_run_changes_nothing(
    runs: dict[str, np.ndarray], review: bool
) -> None:
    out, base, ceiling, _ = _stable_pair(runs, review)
    again = stabilise(
        runs["prio_now"],
        ceiling,
        base,
        _previous(out.tier, ceiling, runs["prio_now"]),
        CONFIG,
        review=review,
    )
    np.testing.assert_array_equal(again.tier, out.tier)
    assert (again.change == "").all()


@settings(max_examples=100, deadline=None)
@given(runs=two_runs())
def test_between_reviews_only_a_dramatic_change_moves_an_account(
    runs: dict[str, np.ndarray],
) -> None:
    out, _, _, prev = _stable_pair(runs, review=False)
    code = out.change
    # A fall is a drop below the crossed cut-off by more than the margin.
    for i in np.flatnonzero(code == CHANGE_FALL):
        crossed = 0 if min(out.tier[i], prev.tier[i]) == 1 else 1
        assert runs["prio_now"][i] < out.cutoffs[crossed] - CONFIG.change_margin
    for i in np.flatnonzero(code == CHANGE_RISE):
        crossed = 0 if min(out.tier[i], prev.tier[i]) == 1 else 1
        assert runs["prio_now"][i] > out.cutoffs[crossed] + CONFIG.change_margin
    assert CHANGE_REVIEW not in set(code)


@settings(max_examples=100, deadline=None)
@given(prio=priorities, review=st.booleans())
def test_unchanged_accounts_do_not_move_and_ties_are_deterministic(
    prio: list[float], review: bool
) -> None:
    p = np.array(prio)
    fit = np.full(p.size, 80.0)
    evidence = np.full(p.size, 0.9)
    base, ceiling = _run(p, fit, evidence)
    out = stabilise(p, ceiling, base, _previous(base, ceiling, p), CONFIG, review=review)
    np.testing.assert_array_equal(out.tier, base)
    # Reversing the input order of tied accounts does not let a challenger unseat an
    # incumbent: ties go to the incumbent.
    flipped = base.copy()
    order = np.argsort(-p, kind="stable")
    # Swap which of two tied accounts at the Tier 1 boundary is the incumbent.
    n1 = int((base == 1).sum())
    if 0 < n1 < p.size and p[order[n1 - 1]] == p[order[n1]]:
        a, b = order[n1 - 1], order[n1]
        flipped[a], flipped[b] = flipped[b], flipped[a]
        again = stabilise(p, ceiling, base, _previous(flipped, ceiling, p), CONFIG, review=review)
        np.testing.assert_array_equal(again.tier, flipped)


def test_hysteresis_keeps_an_incumbent_until_beaten_by_the_margin() -> None:
    ceiling = np.ones(5, np.int8)
    base = np.array([1, 2, 2, 2, 3], np.int8)  # 1 seat in Tier 1
    prev_tier = np.array([2, 1, 2, 2, 3], np.int8)  # account 1 held Tier 1
    prev = _previous(prev_tier, ceiling, np.array([0.6, 0.7, 0.5, 0.4, 0.1]))
    m = CONFIG.review_margin
    narrow = stabilise([0.69 + m, 0.70, 0.5, 0.4, 0.1], ceiling, base, prev, CONFIG, review=True)
    assert narrow.tier.tolist() == [2, 1, 2, 2, 3]
    assert narrow.hold.tolist() == [True, True, False, False, False]
    wide = stabilise([0.71 + m, 0.70, 0.5, 0.4, 0.1], ceiling, base, prev, CONFIG, review=True)
    assert wide.tier.tolist() == [1, 2, 2, 2, 3]
    assert wide.change.tolist() == [CHANGE_REVIEW, CHANGE_REVIEW, "", "", ""]


def test_between_reviews_a_gate_moves_an_account_and_pins_take_their_seats() -> None:
    base = np.array([1, 1, 2, 2, 3], np.int8)
    prev = _previous(
        np.array([1, 1, 2, 2, 3], np.int8), np.ones(5, np.int8), np.array([0.9, 0.8, 0.5, 0.4, 0.1])
    )
    ceiling = np.array([1, 2, 1, 1, 1], np.int8)  # account 1 lost its ICP fit
    base = np.array([1, 2, 1, 2, 3], np.int8)
    out = stabilise([0.9, 0.8, 0.5, 0.4, 0.1], ceiling, base, prev, CONFIG, review=False)
    assert out.tier.tolist() == [1, 2, 1, 2, 3]
    assert out.change[1] == CHANGE_GATE
    pinned = stabilise(
        [0.9, 0.8, 0.5, 0.4, 0.1], ceiling, base, prev, CONFIG, review=False, pinned={4: 1}
    )
    assert pinned.tier[4] == 1 and pinned.change[4] == CHANGE_PIN
    assert pinned.sizes == (2, 2, 1)


def test_disabled_policy_keeps_the_base_tiers_and_first_runs_are_new() -> None:
    base = np.array([1, 2, 3], np.int8)
    first = stabilise(
        [0.9, 0.5, 0.1],
        np.ones(3, np.int8),
        base,
        Previous.align(["a", "b", "c"], None),
        CONFIG,
        review=False,
    )
    assert first.change.tolist() == [CHANGE_NEW] * 3
    off = StabilityConfig(enabled=False)
    prev = _previous(np.array([3, 2, 1], np.int8), np.ones(3, np.int8), np.array([0.1, 0.5, 0.9]))
    out = stabilise([0.9, 0.5, 0.1], np.ones(3, np.int8), base, prev, off, review=False)
    assert out.tier.tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("as_of", "last", "expected"),
    [
        ("2026-06-30", None, True),
        ("2026-06-30", "2026-03-31", True),
        ("2026-07-31", "2026-06-30", False),
        ("2026-08-31", "2026-06-30", False),
        ("2026-09-30", "2026-06-30", True),
        ("2026-12-31", "2026-06-30", True),
    ],
)
def test_reviews_fall_on_the_quarter(as_of: str, last: str | None, expected: bool) -> None:
    assert is_review(as_of, last, 3) is expected


def test_driver_shift_names_the_drivers_that_moved_most() -> None:
    moved = driver_shift({"Meetings": 8.0, "Industry": 3.0}, {"Meetings": -2.0, "Won deals": 4.0})
    assert moved == [("Meetings", -10.0), ("Won deals", 4.0)]
