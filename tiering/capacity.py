"""Tiers within each rep's book or each territory, and pinned tiers (overrides, elevations)
that take their seats inside those groups. Pure functions; the reps table is read at the edge
(:func:`read_reps`).

Groups
    ``within = "owner"``: one group per owner. Each owner's Tier 1 holds at most that rep's
    Tier 1 capacity (reps table, else ``[capacity] tier1_per_rep``), filled by priority among
    the owner's accounts that the gates allow in Tier 1; Tier 2 likewise with the Tier 2
    capacity, the rest Tier 3. Seats an owner cannot fill stay empty: they are that rep's
    time, not another rep's.

    ``within = "territory"``: one group per territory, tiered by the ``[tiers]`` method inside
    it: quantile shares of the territory's accounts; capacity = the sum of the capacities of
    the territory's reps (reps table, else every owner seen in the territory with the
    defaults); threshold cut-offs are absolute and give the global tiers.

    ``within = "global"``: one group, exactly ``tiering.policy.assign_tiers``.

Unowned accounts (no owner, or no territory under ``territory``)
    ``unowned = "pool"`` (default): they form one extra group, :data:`UNOWNED`, tiered like one
    rep with the default capacities (territory: the ``[tiers]`` method over the pool).
    ``unowned = "tier3"``: no rep serves them, so they stay in Tier 3 until they are assigned.
    Either way a run reports how many there were.

Reserved elevation seats
    ``reserved_share`` ([elevation], while enabled) of each group's Tier 1 seats (rounded half up) is kept back from the
    policy for intent-based elevations; seats no elevation takes stay empty.

Ties
    Inside a group equal priorities keep their input order (``assign_tiers``' stable sort), so
    the outcome is deterministic.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from tiering.config import CapacityConfig, StabilityConfig, TierPolicy
from tiering.policy import TierAssignment, assign_tiers
from tiering.stability import (
    CHANGE_PIN_ENDED,
    CHANGE_SEAT_TO_PIN,
    Previous,
    StableTiers,
    stabilise,
)

if TYPE_CHECKING:
    from features.config import TableSource

UNOWNED = "(unowned)"
"""The group of accounts without an owner (or territory) under ``unowned = "pool"``."""
REPS_COLUMNS = ("owner", "territory", "tier1_capacity", "tier2_capacity")


def _half_up(x: float) -> int:
    return math.floor(x + 0.5 + 1e-9)


# ----------------------------------------------------------------------------- the reps table


def read_reps(source: TableSource) -> pd.DataFrame:
    """The reps table: owner, territory, tier1_capacity, tier2_capacity (capacities may be
    empty: the defaults apply). Raises ValueError naming the file, column and rows at fault."""
    from pathlib import Path

    path = Path(source.path)
    if not path.is_file():
        raise ValueError(f"capacity.reps: file not found: {path}")
    if path.suffix.lower() in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_csv(path, sep=source.delimiter, dtype=str, encoding=source.encoding)
    missing = {c: e for c, e in source.columns.items() if e not in frame.columns}
    if missing:
        raise ValueError(
            f"capacity.reps: mapped columns missing in {path}: "
            + ", ".join(f"{c} -> {e!r}" for c, e in missing.items())
            + f" (the file has: {', '.join(map(str, frame.columns))})"
        )
    frame = frame.rename(columns={e: c for c, e in source.columns.items()})
    return validate_reps(frame, str(path))


def validate_reps(frame: pd.DataFrame, where: str = "reps table") -> pd.DataFrame:
    """The reps table with typed capacities (nullable ints) and one row per owner."""
    if "owner" not in frame:
        raise ValueError(
            f"capacity.reps ({where}): required column 'owner' missing; map it with "
            "[capacity.reps.columns] owner = '<your column>'"
        )
    out = pd.DataFrame({"owner": frame["owner"].astype(str).str.strip()})
    out["territory"] = (
        frame["territory"].astype(object).where(frame["territory"].notna(), None)
        if "territory" in frame
        else None
    )
    for col in ("tier1_capacity", "tier2_capacity"):
        raw = frame[col] if col in frame else pd.Series([None] * len(frame), index=frame.index)
        num = pd.to_numeric(raw, errors="coerce")
        bad = (raw.notna() & (raw.astype(str).str.strip() != "") & num.isna()) | (num < 0)
        bad |= num.notna() & (num != np.floor(num.fillna(0)))
        if bad.any():
            examples = raw[bad].astype(str).head(3).tolist()
            raise ValueError(
                f"capacity.reps ({where}).{col}: {int(bad.sum())} values are not whole numbers "
                f">= 0 (e.g. {examples}); leave a cell empty for the default"
            )
        out[col] = num.astype("Int64")
    dup = out["owner"].duplicated()
    if dup.any():
        raise ValueError(
            f"capacity.reps ({where}).owner: {int(dup.sum())} owners appear more than once "
            f"(e.g. {out.loc[dup, 'owner'].head(3).tolist()}); one row per rep"
        )
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class CapacityPlan:
    """Which group each account is tiered in, and each group's seats."""

    within: str
    group: NDArray[np.object_]
    """Per account: owner or territory, :data:`UNOWNED` for none."""
    seats: dict[str, tuple[int, int] | None]
    """Per group: (Tier 1, Tier 2) seats; None = the [tiers] policy's own sizes (quantile or
    threshold inside a territory)."""
    unowned_rule: str
    n_unowned: int
    reserved_share: float = 0.0
    reps: dict[str, int] = dataclasses.field(default_factory=dict)
    """Reps per group (owner: 1)."""

    def unowned_note(self) -> str:
        what = "owner" if self.within == "owner" else "territory"
        if not self.n_unowned:
            return (
                f"every account has an {what}"
                if what == "owner"
                else "every account has a territory"
            )
        rule = (
            f"tiered together as '{UNOWNED}' with the default capacity"
            if self.unowned_rule == "pool"
            else "kept in Tier 3 until assigned (unowned = 'tier3')"
        )
        return f"{self.n_unowned:,} accounts without an {what}: {rule}"


def _clean_keys(values: Sequence[Any] | pd.Series) -> NDArray[np.object_]:
    s = pd.Series(list(values), dtype=object)
    text = s.map(
        lambda v: None if v is None or (isinstance(v, float) and v != v) else str(v).strip()
    )
    text = text.where(text.fillna("") != "", None)
    return text.fillna(UNOWNED).to_numpy(dtype=object)


def plan_capacity(
    owner: Sequence[Any] | pd.Series | None,
    territory: Sequence[Any] | pd.Series | None,
    config: CapacityConfig,
    policy: TierPolicy,
    reps: pd.DataFrame | None = None,
    *,
    reserved_share: float = 0.0,
) -> CapacityPlan | None:
    """The groups and seats of a list under ``config``; None for ``within = "global"`` without
    reserved elevation seats (the global path, unchanged)."""
    if config.within == "global":
        if reserved_share <= 0:
            return None
        n = len(owner) if owner is not None else len(territory) if territory is not None else 0
        return CapacityPlan(
            "global",
            np.full(n, "all", dtype=object),
            {"all": None},
            config.unowned,
            0,
            reserved_share,
            {"all": 1},
        )
    column = owner if config.within == "owner" else territory
    if column is None:
        raise ValueError(
            f"capacity.within = {config.within!r} but the account list has no "
            f"{config.within} column; map it under [data.accounts.columns] or use 'global'"
        )
    group = _clean_keys(column)
    owners = _clean_keys(owner) if owner is not None else np.full(group.size, UNOWNED, object)
    reps_table = reps if reps is not None else pd.DataFrame(columns=list(REPS_COLUMNS))
    by_owner = reps_table.set_index("owner") if len(reps_table) else None

    def rep_seats(name: str) -> tuple[int, int]:
        c1, c2 = config.tier1_per_rep, config.tier2_per_rep
        if by_owner is not None and name in by_owner.index:
            row = by_owner.loc[name]
            if not pd.isna(row["tier1_capacity"]):
                c1 = int(row["tier1_capacity"])
            if not pd.isna(row["tier2_capacity"]):
                c2 = int(row["tier2_capacity"])
        return c1, c2

    seats: dict[str, tuple[int, int] | None] = {}
    n_reps: dict[str, int] = {}
    keys = list(dict.fromkeys(group.tolist()))
    for key in keys:
        if key == UNOWNED:
            seats[key] = (
                (0, 0)
                if config.unowned == "tier3"
                else (
                    (config.tier1_per_rep, config.tier2_per_rep)
                    if config.within == "owner" or policy.method == "capacity"
                    else None
                )
            )
            n_reps[key] = 0 if config.unowned == "tier3" else 1
        elif config.within == "owner":
            seats[key] = rep_seats(key)
            n_reps[key] = 1
        elif policy.method == "capacity":
            names = set(owners[(group == key) & (owners != UNOWNED)].tolist())
            if by_owner is not None and "territory" in reps_table:
                names |= set(reps_table.loc[reps_table["territory"] == key, "owner"].tolist())
            totals = [rep_seats(nm) for nm in sorted(names)] or [
                (config.tier1_per_rep, config.tier2_per_rep)
            ]
            seats[key] = (sum(t[0] for t in totals), sum(t[1] for t in totals))
            n_reps[key] = max(len(names), 1)
        else:
            seats[key] = None
            n_reps[key] = len(set(owners[(group == key) & (owners != UNOWNED)].tolist()))
    return CapacityPlan(
        within=config.within,
        group=group,
        seats=seats,
        unowned_rule=config.unowned,
        n_unowned=int((group == UNOWNED).sum()),
        reserved_share=reserved_share,
        reps=n_reps,
    )


def reserved_seats(tier1_seats: int, share: float) -> int:
    """Tier 1 seats kept back for elevations out of a group's ``tier1_seats``."""
    return min(tier1_seats, _half_up(share * tier1_seats)) if share > 0 else 0


# ----------------------------------------------------------------------------- assignment


@dataclass(frozen=True)
class GroupedTiers:
    """Tiers assigned group by group, and each group's cut-offs."""

    assignment: TierAssignment
    """The combined assignment (tier1_cutoff / tier2_cutoff: the lowest of any group)."""
    plan: CapacityPlan
    groups: pd.DataFrame
    """One row per group: group, accounts, reps, tier1_seats, reserved, tier2_seats,
    eligible_tier1, tier1, tier2, tier3, tier1_cutoff, tier2_cutoff."""

    def cutoffs_of(self, group: str) -> tuple[float | None, float | None]:
        row = self.groups.set_index("group").loc[group]
        return _none(row["tier1_cutoff"]), _none(row["tier2_cutoff"])

    def describe_rows(self) -> NDArray[np.object_]:
        """The ``cutoffs_used`` text of each account: its group's cut-offs."""
        texts = {
            str(r["group"]): describe_group(self.plan, r) for r in self.groups.to_dict("records")
        }
        return np.array([texts[g] for g in self.plan.group], dtype=object)

    def warnings(self) -> list[str]:
        out = []
        if self.plan.n_unowned and self.plan.within != "global":
            out.append(self.plan.unowned_note())
        g = self.groups[self.groups["group"] != UNOWNED]
        seats = g["tier1_seats"] - g["reserved"]
        short = g[g["tier1"] < seats]
        if len(short):
            out.append(
                f"{len(short)} of {len(g)} {_plural(self.plan.within)} hold fewer Tier 1 "
                f"accounts than they have seats ({int(seats[short.index].sum()):,} seats, "
                f"{int((seats - g['tier1'])[short.index].sum()):,} left empty): too few of "
                "their accounts pass the Tier 1 gates"
            )
        return out


def _plural(word: str) -> str:
    return "territories" if word == "territory" else f"{word}s"


def _none(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def describe_group(plan: CapacityPlan, row: Mapping[Any, Any]) -> str:
    c1, c2 = _none(row["tier1_cutoff"]), _none(row["tier2_cutoff"])
    cuts = (
        f"Tier 1 >= {'unreachable' if c1 is None else f'{c1:.4f}'}, "
        f"Tier 2 >= {'unreachable' if c2 is None else f'{c2:.4f}'}"
    )
    if plan.within == "global":
        return f"global over {int(row['accounts']):,} accounts, {int(row['reserved'])} Tier 1 seats reserved for elevations ({cuts})"
    seats = (
        f"{int(row['tier1_seats'])} Tier 1 / {int(row['tier2_seats'])} Tier 2 seats"
        if not pd.isna(row["tier1_seats"])
        else "the [tiers] policy inside it"
    )
    return f"{plan.within} {row['group']!s}: {int(row['accounts']):,} accounts, {seats} ({cuts})"


def grouped_reasons(
    grouped: GroupedTiers,
    assignment: TierAssignment,
    rows: slice,
    icp_missed: list[list[str]],
    phrase_rows: Callable[[NDArray[np.int64], TierAssignment, list[list[str]]], pd.DataFrame],
) -> pd.DataFrame:
    """Reason texts of ``rows`` phrased group by group, each against its own group's cut-offs
    (so "Tier 1 cut-off" and "what would move it up" speak of the account's owner or
    territory). ``phrase_rows(positions in rows, assignment of those rows, their ICP misses)``
    phrases one group."""
    groups = grouped.plan.group[rows]
    index = np.arange(groups.size)
    parts = []
    for key in dict.fromkeys(groups.tolist()):
        sub = index[groups == key]
        picked = np.arange(assignment.tier.size)[rows][sub]
        c1, c2 = grouped.cutoffs_of(key)
        local = dataclasses.replace(
            assignment,
            tier=assignment.tier[picked],
            rule=assignment.rule[picked],
            ceiling=assignment.ceiling[picked],
            by_priority=assignment.by_priority[picked],
            rank=None if assignment.rank is None else assignment.rank[picked],
            tier1_cutoff=c1,
            tier2_cutoff=c2,
        )
        text = phrase_rows(sub, local, [icp_missed[i] for i in sub])
        parts.append(text.set_axis(sub))
    return pd.concat(parts).sort_index()


def describe_plan(grouped: GroupedTiers) -> str:
    """One line on a grouped run for the command's output."""
    plan = grouped.plan
    g = grouped.groups
    t1 = g.loc[g["group"] != UNOWNED, "tier1"]
    if plan.within == "global":
        return describe_group(plan, g.to_dict("records")[0])
    line = (
        f"{grouped.assignment.method}: {len(t1)} {_plural(plan.within)}, Tier 1 per {plan.within} "
        f"min {int(t1.min()) if len(t1) else 0} / median {float(t1.median()) if len(t1) else 0:g} "
        f"/ max {int(t1.max()) if len(t1) else 0}; each account's cut-offs are its "
        f"{plan.within}'s"
    )
    if plan.within != "global":
        line += f"; {plan.unowned_note()}"
    return line


def assign_within(
    priority: ArrayLike,
    icp_fit: ArrayLike,
    evidence: ArrayLike,
    policy: TierPolicy,
    plan: CapacityPlan,
) -> GroupedTiers:
    """Tier each group of ``plan`` on its own (see the module docstring)."""
    prio = np.asarray(priority, dtype=np.float64).reshape(-1)
    fit = np.asarray(icp_fit, dtype=np.float64).reshape(-1)
    evid = np.asarray(evidence, dtype=np.float64).reshape(-1)
    n = prio.size
    if plan.group.size != n:
        raise ValueError(f"capacity plan: {plan.group.size} groups for {n} accounts")
    whole = assign_tiers(prio, fit, evid, policy)  # gates, ranks and rules of the whole list
    tier = np.full(n, 3, dtype=np.int8)
    rule = whole.rule.copy()
    by_priority = np.full(n, 3, dtype=np.int8)
    rows = []
    for key in dict.fromkeys(plan.group.tolist()):
        idx = np.flatnonzero(plan.group == key)
        seats = plan.seats[key]
        reserve = 0
        if seats is None and plan.within == "global":
            sized = assign_tiers(prio[idx], fit[idx], evid[idx], policy)
            n1, n2, _ = sized.target_sizes or sized.sizes
            reserve = reserved_seats(n1, plan.reserved_share)
            seats_used: tuple[int, int] | None = (n1, n2)
            group_policy = policy.model_copy(
                update={
                    "method": "capacity",
                    "reps": 1,
                    "tier1_per_rep": n1 - reserve,
                    "tier2_per_rep": n2 + reserve,
                }
            )
        elif seats is None:
            seats_used = None
            group_policy = policy
        else:
            reserve = reserved_seats(seats[0], plan.reserved_share)
            seats_used = seats
            # model_copy does not validate: a capacity of 0 is a rep with no Tier 1 seats.
            group_policy = policy.model_copy(
                update={
                    "method": "capacity",
                    "reps": 1,
                    "tier1_per_rep": seats[0] - reserve,
                    "tier2_per_rep": seats[1],
                }
            )
        sub = assign_tiers(prio[idx], fit[idx], evid[idx], group_policy)
        tier[idx] = sub.tier
        rule[idx] = sub.rule
        by_priority[idx] = sub.by_priority
        counts = np.bincount(sub.tier, minlength=4)
        rows.append(
            {
                "group": key,
                "accounts": idx.size,
                "reps": plan.reps.get(key, 0),
                "tier1_seats": np.nan if seats_used is None else seats_used[0],
                "reserved": reserve,
                "tier2_seats": np.nan if seats_used is None else seats_used[1],
                "eligible_tier1": int((whole.ceiling[idx] == 1).sum()),
                "tier1": int(counts[1]),
                "tier2": int(counts[2]),
                "tier3": int(counts[3]),
                "tier1_cutoff": sub.tier1_cutoff,
                "tier2_cutoff": sub.tier2_cutoff,
            }
        )
    groups = pd.DataFrame(rows)
    c1 = groups["tier1_cutoff"].dropna()
    c2 = groups["tier2_cutoff"].dropna()
    combined = dataclasses.replace(
        whole,
        tier=tier,
        rule=rule,
        by_priority=by_priority,
        tier1_cutoff=float(c1.min()) if len(c1) else None,
        tier2_cutoff=float(c2.min()) if len(c2) else None,
        method=f"{'capacity' if plan.within == 'owner' else policy.method} within {plan.within}",
        target_sizes=None,
        warnings=(),
    )
    grouped = GroupedTiers(combined, plan, groups)
    return dataclasses.replace(
        grouped, assignment=dataclasses.replace(combined, warnings=tuple(grouped.warnings()))
    )


# ----------------------------------------------------------------------------- pins


@dataclass(frozen=True)
class Pin:
    """An account held at a tier by an override or an elevation, with the words of why."""

    tier: int
    text: str
    kind: str = "override"
    """override or elevation; an override wins over an elevation of the same account."""


@dataclass(frozen=True)
class PinnedTiers:
    """:class:`StableTiers` of every account with pins applied inside their groups."""

    stable: StableTiers
    cutoffs: NDArray[np.float64]
    """Per account: its group's (Tier 1, Tiers 1 + 2) cut-offs, shape (n, 2), NaN for none."""
    pin_text: list[str]
    """Per account: the pin's words, or what ended it ("" for neither)."""
    pinned: NDArray[np.bool_]
    """True where a pin holds the account this run."""


def stabilise_within(
    priority: ArrayLike,
    ceiling: ArrayLike,
    base_tier: ArrayLike,
    previous: Previous,
    config: StabilityConfig,
    *,
    review: bool,
    group: NDArray[np.object_] | None = None,
    pins: Mapping[int, Pin] | None = None,
    ended: Mapping[int, str] | None = None,
) -> PinnedTiers:
    """``tiering.stability.stabilise`` inside each group, with pins.

    ``pins`` (position -> :class:`Pin`) take their seats first. An override into Tier 1 takes
    one of its group's seats (the lowest-priority unpinned Tier 1 account moves down, and its
    change reason says so); an elevation takes a reserved seat (it adds a seat to the group).
    ``ended`` (position -> text) are pins of the previous run that no longer apply: the account
    loses the incumbency the pin gave it, returns to the tier the policy gives it, and its
    change reason is the text.
    """
    prio = np.asarray(priority, dtype=np.float64).reshape(-1)
    ceil = np.asarray(ceiling, dtype=np.int8).reshape(-1)
    base = np.asarray(base_tier, dtype=np.int8).reshape(-1).copy()
    n = prio.size
    groups = group if group is not None else np.full(n, "all", dtype=object)
    pins = dict(pins or {})
    ended = dict(ended or {})
    prev_tier = previous.tier.copy()
    for pos in ended:
        # No incumbency from a pin that ended: the account competes from its policy tier.
        if prev_tier[pos] > 0:
            prev_tier[pos] = max(int(base[pos]), int(prev_tier[pos]))
    prev = Previous(prev_tier, previous.ceiling, previous.priority)
    seats_base = base.copy()
    for pos, pin in pins.items():
        if pin.kind == "elevation" and pin.tier == 1 and seats_base[pos] != 1:
            seats_base[pos] = 1  # a reserved seat: the group gains it
    tier = np.zeros(n, np.int8)
    change = np.full(n, "", dtype=object)
    cut = np.full((n, 2), np.nan)
    first_review = review
    for key in dict.fromkeys(groups.tolist()):
        idx = np.flatnonzero(groups == key)
        local = {
            int(np.searchsorted(idx, p)): pin.tier for p, pin in pins.items() if groups[p] == key
        }
        sub_prev = Previous(prev.tier[idx], prev.ceiling[idx], prev.priority[idx])
        res = stabilise(
            prio[idx], ceil[idx], seats_base[idx], sub_prev, config, review=review, pinned=local
        )
        tier[idx] = res.tier
        change[idx] = res.change
        first_review = res.review
        cut[idx, 0] = np.nan if res.cutoffs[0] is None else res.cutoffs[0]
        cut[idx, 1] = np.nan if res.cutoffs[1] is None else res.cutoffs[1]
        overrides1 = [p for p, t in local.items() if t == 1 and pins[idx[p]].kind == "override"]
        if overrides1:
            free = stabilise(
                prio[idx],
                ceil[idx],
                seats_base[idx],
                sub_prev,
                config,
                review=review,
                pinned={p: t for p, t in local.items() if p not in overrides1},
            )
            lost = (free.tier == 1) & (res.tier != 1)
            moved = lost & (res.tier != sub_prev.tier)
            change[idx[moved]] = CHANGE_SEAT_TO_PIN
    text = [""] * n
    for pos, pin in pins.items():
        text[pos] = pin.text
    realprev = previous.tier
    for pos, words in ended.items():
        if tier[pos] != realprev[pos]:
            change[pos] = CHANGE_PIN_ENDED
            text[pos] = words
        elif change[pos]:
            change[pos] = ""
    # A change code compares with the real previous tier.
    change[(tier == realprev) & (change != CHANGE_PIN_ENDED)] = ""
    c1 = np.nanmin(cut[:, 0]) if np.isfinite(cut[:, 0]).any() else None
    c2 = np.nanmin(cut[:, 1]) if np.isfinite(cut[:, 1]).any() else None
    hold = tier != base
    hold[list(pins)] = False
    stable = StableTiers(
        tier=tier,
        change=change,
        hold=hold,
        review=first_review,
        cutoffs=(None if c1 is None else float(c1), None if c2 is None else float(c2)),
    )
    is_pinned = np.zeros(n, bool)
    is_pinned[list(pins)] = True
    return PinnedTiers(stable, cut, text, is_pinned)
