"""Risk: a rep handed more Tier 1 accounts than they can serve, a rep with good accounts left
without any, territories tiered across each other, unowned accounts silently dropped, or a
batch run whose tiers do not follow the configured capacity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiering.capacity import (
    UNOWNED,
    assign_within,
    plan_capacity,
    read_reps,
    reserved_seats,
    validate_reps,
)
from tiering.config import CapacityConfig, ConfigError, TierPolicy, load_config
from tiering.policy import assign_tiers, tier_ceiling

from support import DEMO_CONFIG, TrainedBundle

NO_GATES = {"min_icp_fit_tier1": 0.0, "min_evidence_tier1": 0.0}


def _book(n: int, owners: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    prio = rng.random(n)
    fit = rng.uniform(0, 100, n)
    evidence = rng.uniform(0, 1, n)
    owner = np.array([f"rep {i}" for i in rng.integers(0, owners, n)], dtype=object)
    territory = np.array([f"T{int(o.split()[1]) % 3}" for o in owner], dtype=object)
    return prio, fit, evidence, owner, territory


def test_each_owner_holds_at_most_its_capacity_filled_by_priority() -> None:
    prio, fit, evidence, owner, territory = _book(2_000, 12)
    policy = TierPolicy(min_icp_fit_tier1=40, min_evidence_tier1=0.3)
    reps = validate_reps(
        pd.DataFrame(
            {"owner": ["rep 0", "rep 1"], "tier1_capacity": ["3", ""], "tier2_capacity": [5, None]}
        )
    )
    cap = CapacityConfig(within="owner", tier1_per_rep=10, tier2_per_rep=40)
    grouped = assign_within(
        prio, fit, evidence, policy, plan_capacity(owner, territory, cap, policy, reps)
    )
    tier = grouped.assignment.tier
    ceiling = tier_ceiling(fit, evidence, policy)
    for name in np.unique(owner):
        mine = owner == name
        seats1 = 3 if name == "rep 0" else 10
        seats2 = 5 if name == "rep 0" else 40
        eligible = mine & (ceiling == 1)
        assert (tier[mine] == 1).sum() == min(seats1, eligible.sum())
        assert (tier[mine] == 2).sum() <= seats2
        # Filled by priority: every Tier 1 account outranks every eligible one left out.
        t1 = mine & (tier == 1)
        left = eligible & ~t1
        if left.any():
            assert prio[t1].min() >= prio[left].max()
        assert not ((tier == 1) & (ceiling > 1)).any(), "a gate was jumped"
    rows = grouped.groups.set_index("group")
    assert rows.loc["rep 0", "tier1_seats"] == 3 and rows.loc["rep 1", "tier1_seats"] == 10


def test_territory_quantiles_are_taken_inside_each_territory() -> None:
    prio, fit, evidence, owner, territory = _book(1_500, 9, seed=3)
    policy = TierPolicy(**NO_GATES)
    cap = CapacityConfig(within="territory")
    grouped = assign_within(
        prio, fit, evidence, policy, plan_capacity(owner, territory, cap, policy)
    )
    for name in np.unique(territory):
        mine = territory == name
        alone = assign_tiers(prio[mine], fit[mine], evidence[mine], policy)
        assert np.array_equal(grouped.assignment.tier[mine], alone.tier)
        n = int(mine.sum())
        assert (grouped.assignment.tier[mine] == 1).sum() == int(np.floor(0.2 * n + 0.5))


def test_territory_capacity_is_the_sum_of_its_reps() -> None:
    prio, fit, evidence, owner, territory = _book(3_000, 9, seed=4)
    policy = TierPolicy(method="capacity", reps=1, **NO_GATES)
    cap = CapacityConfig(within="territory", tier1_per_rep=7, tier2_per_rep=20)
    plan = plan_capacity(owner, territory, cap, policy)
    grouped = assign_within(prio, fit, evidence, policy, plan)
    for name in np.unique(territory):
        reps = len(set(owner[territory == name]))
        assert (grouped.assignment.tier[territory == name] == 1).sum() == 7 * reps


@pytest.mark.parametrize("rule", ["pool", "tier3"])
def test_unowned_accounts_follow_the_documented_rule_and_are_reported(rule: str) -> None:
    prio, fit, evidence, owner, territory = _book(400, 4, seed=5)
    owner[:37] = None
    owner[37:40] = "  "
    policy = TierPolicy(**NO_GATES)
    cap = CapacityConfig(within="owner", tier1_per_rep=5, unowned=rule)  # type: ignore[arg-type]
    plan = plan_capacity(owner, territory, cap, policy)
    assert plan.n_unowned == 40
    grouped = assign_within(prio, fit, evidence, policy, plan)
    unowned_tiers = grouped.assignment.tier[:40]
    if rule == "pool":
        assert (unowned_tiers == 1).sum() == 5
    else:
        assert (unowned_tiers == 3).all()
    assert any("40 accounts without an owner" in w for w in grouped.assignment.warnings)
    assert UNOWNED in set(grouped.groups["group"])


def test_reserved_elevation_seats_are_kept_back_from_the_policy() -> None:
    prio, fit, evidence, owner, territory = _book(600, 3, seed=6)
    policy = TierPolicy(**NO_GATES)
    cap = CapacityConfig(within="owner", tier1_per_rep=10)
    plan = plan_capacity(owner, territory, cap, policy, reserved_share=0.2)
    grouped = assign_within(prio, fit, evidence, policy, plan)
    for name in np.unique(owner):
        assert (grouped.assignment.tier[owner == name] == 1).sum() == 10 - reserved_seats(10, 0.2)
    assert reserved_seats(10, 0.2) == 2


def test_a_bad_reps_table_names_the_column_and_rows(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"tier1_capacity: 1 values are not whole numbers.*'-2'"):
        validate_reps(pd.DataFrame({"owner": ["a", "b"], "tier1_capacity": ["5", "-2"]}))
    with pytest.raises(ValueError, match="owners appear more than once"):
        validate_reps(pd.DataFrame({"owner": ["a", "a"]}))
    path = tmp_path / "reps.csv"
    path.write_text("Rep,Seats\nAnna,4\n")
    from features.config import TableSource

    with pytest.raises(ValueError, match="mapped columns missing"):
        read_reps(TableSource(path=path, columns={"owner": "Rep", "tier1_capacity": "Cap"}))
    reps = read_reps(TableSource(path=path, columns={"owner": "Rep", "tier1_capacity": "Seats"}))
    assert reps.loc[0, "tier1_capacity"] == 4


def test_the_capacity_section_is_typed(tmp_path: Path) -> None:
    text = DEMO_CONFIG.read_text() + '\n[capacity]\nwithin = "rep"\n'
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("../data", str(DEMO_CONFIG.parent.parent / "data")))
    with pytest.raises(ConfigError, match="capacity.within"):
        load_config(bad)


# ------------------------------------------------------------------------- invariants
@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.1, 0.5, 0.5, 0.9]),  # few values: many exact ties
            st.sampled_from([0.0, 50.0, 100.0]),
            st.sampled_from([0.1, 0.6, 1.0]),
            st.sampled_from(["a", "b", "c", None]),
        ),
        min_size=1,
        max_size=80,
    ),
    st.integers(0, 6),
    st.integers(0, 10),
    st.sampled_from(["pool", "tier3"]),
)
def test_capacity_invariants_hold_with_ties(
    rows: list[tuple[float, float, float, str | None]], c1: int, c2: int, unowned: str
) -> None:
    prio = np.array([r[0] for r in rows])
    fit = np.array([r[1] for r in rows])
    evid = np.array([r[2] for r in rows])
    owner = np.array([r[3] for r in rows], dtype=object)
    policy = TierPolicy(min_icp_fit_tier1=40, min_evidence_tier1=0.5)
    cap = CapacityConfig(within="owner", tier1_per_rep=c1, tier2_per_rep=c2, unowned=unowned)  # type: ignore[arg-type]
    plan = plan_capacity(owner, None, cap, policy)
    first = assign_within(prio, fit, evid, policy, plan)
    again = assign_within(prio, fit, evid, policy, plan)
    tier = first.assignment.tier
    assert np.array_equal(tier, again.assignment.tier), "ties must be broken deterministically"
    ceiling = tier_ceiling(fit, evid, policy)
    assert (tier >= ceiling).all(), "gates only demote"
    for key in set(plan.group):
        mine = plan.group == key
        s1, s2 = (0, 0) if key == UNOWNED and unowned == "tier3" else (c1, c2)
        eligible1 = int((mine & (ceiling == 1)).sum())
        assert (tier[mine] == 1).sum() == min(s1, eligible1)
        assert (tier[mine] == 2).sum() <= s2
        # Within a group and a ceiling, a higher priority never gets a worse tier.
        for level in (1, 2, 3):
            same = mine & (ceiling == level)
            p, t = prio[same], tier[same]
            assert not ((p[:, None] > p[None, :]) & (t[:, None] > t[None, :])).any()


# ------------------------------------------------------------------------- batch on a demo
@pytest.fixture(scope="module")
def demo_scores(
    trained_bundle: TrainedBundle, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, pd.DataFrame]:
    from features.contract import load_tables
    from serving.batch import score_accounts
    from tiering.bundle import Bundle

    folder = tmp_path_factory.mktemp("capacity")
    config = trained_bundle.config_writing_to(folder)
    config = config.model_copy(
        update={"history": config.history.model_copy(update={"enabled": False})}
    )
    bundle = Bundle.load(trained_bundle.bundle_dir)
    accounts = load_tables(config.data).tables.accounts[["account_id", "owner", "territory"]]
    out = {}
    for within in ("global", "owner", "territory"):
        cap = CapacityConfig(within=within, tier1_per_rep=2, tier2_per_rep=3)  # type: ignore[arg-type]
        result = score_accounts(
            config.model_copy(update={"capacity": cap}),
            bundle,
            out=folder / f"{within}.parquet",
            reasons=within != "global",
        )
        scores = pd.read_parquet(result.output).merge(
            accounts.astype({"account_id": str}), on="account_id"
        )
        out[within] = scores.assign(summary=result.cutoffs_used)
    return out


def test_within_owner_on_the_demo_no_rep_exceeds_capacity_and_each_gets_tier1(
    demo_scores: dict[str, pd.DataFrame],
) -> None:
    scores = demo_scores["owner"]
    per_owner = scores.groupby("owner")["tier"].agg(
        tier1=lambda t: int((t == 1).sum()), tier2=lambda t: int((t == 2).sum())
    )
    assert per_owner["tier1"].max() <= 2 and per_owner["tier2"].max() <= 3
    policy = TierPolicy(min_icp_fit_tier1=60.0)  # the serving config's default gate
    eligible = scores[
        tier_ceiling(scores["icp_fit"].to_numpy(), scores["evidence"].to_numpy(), policy) == 1
    ]
    with_eligible = set(eligible["owner"])
    assert with_eligible, "the demo must have Tier 1-eligible accounts"
    assert with_eligible <= set(scores.loc[scores["tier"] == 1, "owner"])
    # The global policy ignores owners: some rep holds more than the capacity there.
    assert demo_scores["global"].groupby("owner")["tier"].apply(lambda t: (t == 1).sum()).max() > 2
    # Each account says which owner's cut-offs placed it, and the reasons quote them.
    row = scores.iloc[0]
    assert row["cutoffs_used"].startswith(f"owner {row['owner']}: ")
    assert "owner" in row["summary"] and "median" in row["summary"]


def test_within_territory_on_the_demo_sizes_follow_each_territory(
    demo_scores: dict[str, pd.DataFrame],
) -> None:
    scores = demo_scores["territory"]
    for name, group in scores.groupby("territory"):
        n = len(group)
        t1 = int((group["tier"] == 1).sum())
        t12 = int((group["tier"] <= 2).sum())
        assert t1 <= int(np.floor(0.2 * n + 0.5)), name
        assert t12 <= int(np.floor(0.8 * n + 0.5)), name
        assert group["cutoffs_used"].str.startswith(f"territory {name}: ").all()
