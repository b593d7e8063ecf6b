"""The stability policy: tiers that hold between reviews, and why a tier changed.

Pure functions of this run (priority, gate ceiling and the base tiers of ``assign_tiers``) and
the previous run (its tiers, ceilings and priorities); no I/O.

Seats
    The policy never changes how many accounts hold each tier: Tier 1 keeps exactly as many
    seats as the base assignment gives it, and Tiers 1 + 2 together likewise. Tier 1 is chosen
    first among accounts whose gates allow Tier 1; then Tiers 1 + 2 among accounts whose gates
    allow Tier 2, Tier 1 included. Each choice fills ``k`` seats from the eligible accounts.

At a review (quarterly by default)
    Accounts are re-ranked with a hysteresis band: an incumbent of the seats counts with its
    priority plus ``review_margin``, so a challenger takes its seat only when it beats it by
    more than the margin.

Between reviews
    An incumbent keeps its seat unless its priority falls below the seats' cut-off (the
    ``k``-th best eligible priority of this run) by more than ``change_margin``, or a gate no
    longer allows the tier. An outsider takes a seat only when its priority passes the cut-off
    by more than ``change_margin`` (a dramatic rise) or a gate that held it back opened. When
    more accounts qualify than there are seats, the lowest priorities give way; when fewer,
    the best remaining eligible accounts fill the vacancies. Ties go to the incumbent, then
    to the input order, so every decision is deterministic.

Pinned accounts (rep overrides, temporary elevation)
    ``pinned`` maps an account to a tier it must hold; pinned accounts take their seats
    first (they count against capacity) and their change reason names the pin.

Every account whose tier differs from the previous run gets a change code
(:data:`CHANGE_CODES`) and, through :func:`change_texts`, a sentence that names its cause.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from tiering.config import StabilityConfig

CHANGE_NEW = "new"
CHANGE_REVIEW = "review"
CHANGE_RISE = "dramatic_rise"
CHANGE_FALL = "dramatic_fall"
CHANGE_GATE = "gate"
CHANGE_DISPLACED = "displaced"
CHANGE_VACANCY = "vacancy"
CHANGE_RERANK = "rerank"
CHANGE_PIN = "pinned"
CHANGE_SEAT_TO_PIN = "seat_to_pin"
CHANGE_PIN_ENDED = "pin_ended"
CHANGE_CODES = (
    CHANGE_NEW,
    CHANGE_REVIEW,
    CHANGE_RISE,
    CHANGE_FALL,
    CHANGE_GATE,
    CHANGE_DISPLACED,
    CHANGE_VACANCY,
    CHANGE_RERANK,
    CHANGE_PIN,
    CHANGE_SEAT_TO_PIN,
    CHANGE_PIN_ENDED,
)
"""Why a tier changed: new to the list; re-ranked at a review; its priority passed the next
cut-off by more than the change margin (up or down); a gate (ICP fit, evidence) opened or
closed; pushed down because its tier's seats were taken; moved up to fill a freed seat;
re-ranked with no stability policy (priority against this run's cut-offs); pinned by an
override or an elevation; its seat went to an override (capacity holds); an override or
elevation ended and the account is back at the tier the policy gives it."""

HOLD = "held"
"""The code of an account whose tier differs from its base tier because the policy kept it."""


@dataclass(frozen=True)
class Previous:
    """What the policy needs of the previous run, aligned to this run's accounts (NaN or 0
    where an account was not in it)."""

    tier: NDArray[np.int8]
    """0 where the account is new."""
    ceiling: NDArray[np.int8]
    priority: NDArray[np.float64]

    @classmethod
    def align(cls, account_ids: Sequence[Any], frame: pd.DataFrame | None) -> Previous:
        """``frame``: account_id, tier, ceiling, priority of the previous run (or None)."""
        n = len(account_ids)
        if frame is None or frame.empty:
            return cls(np.zeros(n, np.int8), np.zeros(n, np.int8), np.full(n, np.nan))
        keyed = frame.drop_duplicates("account_id").set_index("account_id")
        ids = pd.Index(pd.Series(account_ids, dtype=object).astype(str))
        keyed.index = keyed.index.astype(str)
        got = keyed.reindex(ids)
        return cls(
            tier=got["tier"].fillna(0).to_numpy(dtype=np.int8),
            ceiling=got["ceiling"].fillna(0).to_numpy(dtype=np.int8),
            priority=got["priority"].to_numpy(dtype=np.float64),
        )


@dataclass(frozen=True)
class StableTiers:
    """The policy's tiers for one run and why each one changed."""

    tier: NDArray[np.int8]
    change: NDArray[np.object_]
    """A code of :data:`CHANGE_CODES` where the tier differs from the previous run, "" else."""
    hold: NDArray[np.bool_]
    """True where the tier differs from the base tier (kept or moved by the policy)."""
    review: bool
    cutoffs: tuple[float | None, float | None]
    """This run's priority cut-offs of Tier 1 and of Tiers 1 + 2 (the k-th best eligible)."""

    @property
    def sizes(self) -> tuple[int, int, int]:
        counts = np.bincount(self.tier, minlength=4)
        return int(counts[1]), int(counts[2]), int(counts[3])


def is_review(
    as_of: pd.Timestamp | str, last_review: pd.Timestamp | str | None, months: int
) -> bool:
    """A run is a review when there was none before, or when it falls in a later review
    period than the last review. Periods are ``months`` long, counted on the day after the
    run, so month-end runs on 31 March, 30 June, ... open the quarters."""
    if last_review is None:
        return True
    return _period(as_of, months) > _period(last_review, months)


def _period(day: pd.Timestamp | str, months: int) -> int:
    nxt = pd.Timestamp(day).normalize() + pd.Timedelta(days=1)
    return (nxt.year * 12 + nxt.month - 1) // months


def stabilise(
    priority: Sequence[float] | NDArray[np.float64],
    ceiling: Sequence[int] | NDArray[np.int8],
    base_tier: Sequence[int] | NDArray[np.int8],
    previous: Previous,
    config: StabilityConfig,
    *,
    review: bool,
    pinned: Mapping[int, int] | None = None,
) -> StableTiers:
    """This run's tiers under the stability policy (see the module docstring).

    ``base_tier`` fixes the seats (how many accounts hold Tier 1 and Tier 2); ``pinned`` maps
    a position in this run to the tier it must hold. With the policy disabled, or at a first
    run, the base tiers stand (pins still apply).
    """
    prio = np.asarray(priority, dtype=np.float64).reshape(-1)
    ceil = np.asarray(ceiling, dtype=np.int8).reshape(-1)
    base = np.asarray(base_tier, dtype=np.int8).reshape(-1)
    n = prio.size
    if not (ceil.size == base.size == previous.tier.size == n):
        raise ValueError(
            "priority, ceiling, base_tier and previous must have one entry per account"
        )
    pin = np.zeros(n, np.int8)
    for pos, pinned_tier in (pinned or {}).items():
        pin[pos] = pinned_tier
    seats1 = int((base == 1).sum())
    seats12 = int((base <= 2).sum())
    first = not (previous.tier > 0).any()
    # Without the policy every account is its own challenger: no incumbency, and a "review".
    active = config.enabled and not first
    ranking_review = review or not active
    incumbent = previous.tier if active else np.zeros(n, np.int8)
    margin = config.review_margin if active else 0.0

    eligible1 = ((ceil <= 1) & (pin == 0)) | (pin == 1)
    in1, rise1, c1 = _choose(
        prio,
        eligible1,
        incumbent == 1,
        pin == 1,
        seats1,
        ranking_review,
        margin,
        config,
        opened=active & (previous.ceiling > 1) & (ceil <= 1),
    )
    eligible12 = ((ceil <= 2) & (pin != 3)) | (pin == 2) | in1
    in12, rise12, c12 = _choose(
        prio,
        eligible12,
        (incumbent >= 1) & (incumbent <= 2),
        in1 | ((pin >= 1) & (pin <= 2)),
        seats12,
        ranking_review,
        margin,
        config,
        opened=active & (previous.ceiling > 2) & (ceil <= 2),
    )
    tier = np.where(in1, 1, np.where(in12, 2, 3)).astype(np.int8)
    change = _change_codes(
        tier,
        previous,
        ceil,
        prio,
        pin,
        review=review,
        active=active,
        rise=(rise1, rise12),
        cutoffs=(c1, c12),
        margin=config.change_margin,
    )
    return StableTiers(
        tier=tier,
        change=change,
        hold=tier != base,
        review=review or first,
        cutoffs=(c1, c12),
    )


def _choose(
    prio: NDArray[np.float64],
    eligible: NDArray[np.bool_],
    incumbent: NDArray[np.bool_],
    forced: NDArray[np.bool_],
    k: int,
    review: bool,
    margin: float,
    config: StabilityConfig,
    *,
    opened: NDArray[np.bool_],
) -> tuple[NDArray[np.bool_], NDArray[np.bool_], float | None]:
    """Choose ``k`` seats among the eligible accounts: (chosen, entered on a dramatic rise or
    an opened gate, the seats' cut-off)."""
    n = prio.size
    idx = np.flatnonzero(eligible)
    k = min(k, idx.size)
    chosen = np.zeros(n, bool)
    riser = np.zeros(n, bool)
    if k == 0:
        return chosen, riser, None
    cutoff = float(np.sort(prio[idx])[::-1][k - 1])
    inc = incumbent & eligible
    if review:
        # Hysteresis: the incumbent's priority counts with the margin.
        score = prio + margin * inc
        group = np.where(forced, 0, 1)
    else:
        d = config.change_margin
        keep = inc & (prio >= cutoff - d)
        riser = eligible & ~inc & ((prio > cutoff + d) | (opened & (prio >= cutoff)))
        score = prio
        group = np.where(forced, 0, np.where(keep | riser, 1, 2))
    # Best group first, then score, then the incumbent, then input order (lexsort: last key
    # is the primary one).
    order = np.lexsort((np.arange(idx.size), ~inc[idx], -score[idx], group[idx]))
    chosen[idx[order[:k]]] = True
    return chosen, riser & chosen, cutoff


def _change_codes(
    tier: NDArray[np.int8],
    previous: Previous,
    ceiling: NDArray[np.int8],
    prio: NDArray[np.float64],
    pin: NDArray[np.int8],
    *,
    review: bool,
    active: bool,
    rise: tuple[NDArray[np.bool_], NDArray[np.bool_]],
    cutoffs: tuple[float | None, float | None],
    margin: float,
) -> NDArray[np.object_]:
    prev = previous.tier
    code = np.full(tier.shape, "", dtype=object)
    changed = tier != prev
    down = changed & (prev > 0) & (tier > prev)
    up = changed & (prev > 0) & (tier < prev)
    # The gate explains a move when it forbids the old tier now, or forbade the new one before.
    gate = (down & (ceiling > prev)) | (up & (previous.ceiling > tier))
    # The cut-off a move crossed: Tier 1's for moves into or out of Tier 1, else Tier 2's.
    crossed_1 = np.minimum(tier, prev) == 1
    cut = np.where(
        crossed_1,
        np.nan if cutoffs[0] is None else cutoffs[0],
        np.nan if cutoffs[1] is None else cutoffs[1],
    )
    fell = down & (prio < cut - margin)
    rose = up & np.where(crossed_1, rise[0], rise[1])
    if not active:
        code[changed] = CHANGE_RERANK
    elif review:
        code[changed] = CHANGE_REVIEW
    else:
        code[up] = CHANGE_VACANCY
        code[rose] = CHANGE_RISE
        code[down] = CHANGE_DISPLACED
        code[fell] = CHANGE_FALL
    code[gate] = CHANGE_GATE
    code[changed & (pin > 0) & (pin == tier)] = CHANGE_PIN
    code[changed & (prev == 0)] = CHANGE_NEW
    return code


# ----------------------------------------------------------------------------- the texts


def driver_shift(
    before: Mapping[str, float] | None, after: Mapping[str, float] | None, top: int = 2
) -> list[tuple[str, float]]:
    """The drivers whose contributions moved most between two runs: (label, change in
    points), largest absolute change first. A driver missing from one run counts as 0 there."""
    before, after = before or {}, after or {}
    moved = {k: float(after.get(k, 0.0)) - float(before.get(k, 0.0)) for k in {*before, *after}}
    ranked = sorted(moved.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    return [(k, v) for k, v in ranked[:top] if abs(v) >= 0.5]


_CAUSES = {
    CHANGE_NEW: "new to the list (no earlier run holds it)",
    CHANGE_REVIEW: "re-ranked at the review",
    CHANGE_RISE: "priority rose past the cut-off by more than the change margin",
    CHANGE_FALL: "priority fell below the cut-off by more than the change margin",
    CHANGE_GATE: "a gate changed",
    CHANGE_DISPLACED: "its seat went to an account with a dramatic change (capacity holds)",
    CHANGE_VACANCY: "filled a seat freed in its tier (capacity holds)",
    CHANGE_RERANK: "re-ranked against this run's cut-offs",
    CHANGE_PIN: "pinned",
    CHANGE_SEAT_TO_PIN: "its seat went to a rep override into Tier 1 (capacity holds; it was "
    "the lowest-priority Tier 1 account of its group without an override)",
    CHANGE_PIN_ENDED: "an override or elevation ended; back at the tier the policy gives it",
}


def change_texts(
    change: Sequence[str] | NDArray[Any],
    tier: Sequence[int] | NDArray[Any],
    previous_tier: Sequence[int] | NDArray[Any],
    priority: Sequence[float] | NDArray[Any],
    previous_priority: Sequence[float] | NDArray[Any],
    cutoffs: tuple[float | None, float | None],
    *,
    drivers: Sequence[Mapping[str, float] | None] | None = None,
    previous_drivers: Sequence[Mapping[str, float] | None] | None = None,
    gate_text: Sequence[str] | None = None,
    pin_text: Sequence[str] | None = None,
    previous_cutoffs: tuple[float | None, float | None] | None = None,
    account_cutoffs: Sequence[tuple[float | None, float | None]] | None = None,
) -> list[str]:
    """One sentence per account that names why its tier changed ("" where it did not): the
    cause, the priority against the cut-off it crossed, a cut-off move, and the drivers whose
    contributions moved most. ``account_cutoffs`` gives each account its own group's
    cut-offs (tiers within owners or territories)."""
    out: list[str] = []
    for i, code in enumerate(change):
        if not code:
            out.append("")
            continue
        now, before = int(tier[i]), int(previous_tier[i])
        cause = _CAUSES[code]
        if code == CHANGE_GATE and gate_text is not None and gate_text[i]:
            cause = gate_text[i]
        if code in (CHANGE_PIN, CHANGE_PIN_ENDED) and pin_text is not None and pin_text[i]:
            cause = pin_text[i]
        if code == CHANGE_NEW:
            out.append(f"Tier {now}: {cause}")
            continue
        if code == CHANGE_REVIEW:
            cause = (
                "promoted at the review: its priority beat an incumbent's by more than the "
                "hysteresis margin"
                if now < before
                else "re-ranked at the review: challengers beat its priority by more than the "
                "hysteresis margin"
            )
        parts = [f"Tier {before} -> {now}: {cause}"]
        which = 0 if min(now, before) == 1 else 1
        cut = cutoffs[which] if account_cutoffs is None else account_cutoffs[i][which]
        p_now, p_before = float(priority[i]), float(previous_priority[i])
        if cut is not None and np.isfinite(p_now):
            seg = (
                f"priority {p_before:.2f} -> {p_now:.2f}"
                if np.isfinite(p_before)
                else (f"priority {p_now:.2f}")
            )
            seg += f", Tier {which + 1} cut-off {cut:.2f}"
            old_cut = None if previous_cutoffs is None else previous_cutoffs[which]
            if old_cut is not None and f"{old_cut:.2f}" != f"{cut:.2f}":
                seg += f" (cut-off moved from {old_cut:.2f})"
            parts.append(seg)
        if drivers is not None and previous_drivers is not None:
            moved = driver_shift(previous_drivers[i], drivers[i])
            if moved:
                parts.append(
                    "drivers that moved most: "
                    + "; ".join(f"{label} ({delta:+.0f} pts)" for label, delta in moved)
                )
        out.append("; ".join(parts))
    return out
