"""The Ideal Customer Profile: how well an account fits it, and what history says it should be.

``icp_fit`` scores accounts (or feature rows, which keep the account columns' names) against
the criteria declared in the config: 0-100 = the weighted share of criteria met, capped at
``cap_if_must_have_missed`` when a must-have is missed. A missing value never meets a
criterion (we do not know it does) and is listed as "(unknown)" so a rep sees the gap is in
the data, not in the account.

``suggest_icp`` reads won/lost history by industry, size band and region and says, with a
Wilson interval and the number of deals behind each figure, which segments win clearly more
than average, and when nothing does, says so: a weak ICP should not be dressed up as a finding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from features.config import IcpConfig, IcpCriterion
from features.tables import Tables
from features.values import yes_no

# Employee bands for the suggestion (upper bounds exclusive); labels read as a rep says them.
SIZE_BANDS = (
    (0, 50, "1-49 employees"),
    (50, 200, "50-199 employees"),
    (200, 1_000, "200-999 employees"),
    (1_000, 5_000, "1,000-4,999 employees"),
    (5_000, math.inf, "5,000+ employees"),
)
MIN_DEALS = 30
MIN_ACCOUNTS = 5
_Z95 = NormalDist().inv_cdf(0.975)


class IcpError(ValueError):
    """An ICP criterion that cannot be evaluated on the given rows."""


@dataclass(frozen=True)
class IcpPatterns:
    """ICP fit of many rows with the label lists kept once per distinct pattern of criteria
    met and known: millions of rows share a handful of patterns, so rows that only need the
    score (or read the labels without keeping them) never pay for a list per row."""

    score: np.ndarray
    """0-100 per row."""
    codes: np.ndarray
    """Per row, the index of its pattern in ``met`` and ``missed``."""
    met: list[list[str]]
    missed: list[list[str]]

    def __len__(self) -> int:
        return len(self.codes)

    def rows(self, rows: slice) -> IcpPatterns:
        return dataclasses.replace(self, score=self.score[rows], codes=self.codes[rows])

    def shared_missed(self) -> list[list[str]]:
        """Missed labels per row, rows of one pattern sharing one list: for readers only."""
        return list(as_objects(self.missed)[self.codes])

    def label_lists(self) -> tuple[list[list[str]], list[list[str]]]:
        """Met and missed labels per row, each row with lists of its own (a caller editing
        one row's list edits only that row)."""
        return (
            list(map(list.copy, as_objects(self.met)[self.codes])),
            list(map(list.copy, as_objects(self.missed)[self.codes])),
        )

    @staticmethod
    def concat(parts: list[IcpPatterns]) -> IcpPatterns:
        met: list[list[str]] = []
        missed: list[list[str]] = []
        codes = []
        for part in parts:
            codes.append(part.codes + len(met))
            met.extend(part.met)
            missed.extend(part.missed)
        return IcpPatterns(
            score=np.concatenate([p.score for p in parts]) if parts else np.empty(0),
            codes=np.concatenate(codes) if codes else np.empty(0, dtype=np.intp),
            met=met,
            missed=missed,
        )


def icp_fit(frame: pd.DataFrame, icp: IcpConfig) -> pd.DataFrame:
    """Fit of every row: ``icp_fit`` (0-100), ``icp_met`` and ``icp_missed`` (criterion labels;
    a missed criterion whose value is unknown reads "<label> (unknown)").

    With no criteria declared every account fits (100): the ICP then neither helps nor blocks.
    """
    patterns = icp_patterns(frame, icp)
    met_lists, missed_lists = patterns.label_lists()
    return pd.DataFrame(
        {"icp_fit": patterns.score, "icp_met": met_lists, "icp_missed": missed_lists},
        index=frame.index,
    )


def icp_patterns(frame: pd.DataFrame, icp: IcpConfig) -> IcpPatterns:
    """What :func:`icp_fit` says, with the labels per distinct pattern instead of per row."""
    n = len(frame)
    criteria = icp.criteria
    if not criteria:
        return IcpPatterns(np.full(n, 100.0), np.zeros(n, dtype=np.intp), [[]], [[]])
    absent = sorted({c.column for c in criteria if c.column not in frame})
    if absent:
        raise IcpError(
            f"ICP criteria use column(s) {absent} that the rows do not have "
            f"(have: {', '.join(map(str, frame.columns[:20]))})"
        )
    met = np.zeros((n, len(criteria)), dtype=bool)
    known = np.zeros((n, len(criteria)), dtype=bool)
    for j, criterion in enumerate(criteria):
        met[:, j], known[:, j] = _evaluate(frame[criterion.column], criterion)

    weights = np.array([c.weight for c in criteria])
    score = 100.0 * (met @ weights) / weights.sum()
    must = np.array([c.must_have for c in criteria])
    if must.any():
        missed_must = (~met[:, must]).any(axis=1)
        score = np.where(missed_must, np.minimum(score, icp.cap_if_must_have_missed), score)

    codes, met_by, missed_by = _label_patterns(criteria, met, known)
    return IcpPatterns(score, codes, met_by, missed_by)


def _evaluate(values: pd.Series, criterion: IcpCriterion) -> tuple[np.ndarray, np.ndarray]:
    """(met, known) per row; an unknown value does not meet the criterion."""
    op = criterion.op
    if op in ("in", "not_in"):
        codes, folded = _folded_codes(values)
        known = codes >= 0
        wanted = {str(v).strip().casefold() for v in criterion.values or []}
        inside = np.array([u in wanted for u in folded] + [False], dtype=bool)[codes]
        return (inside if op == "in" else ~inside) & known, known
    if op == "is_true":
        flag = yes_no(values)
        known = ~np.isnan(flag)
        return (flag == 1.0) & known, known
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    known = ~np.isnan(numbers)
    if not known.any() and values.notna().any():
        example = values.dropna().astype(str).head(3).tolist()
        raise IcpError(
            f"ICP criterion {criterion.label!r}: op {op!r} needs numbers in column "
            f"{criterion.column!r}, got e.g. {example}"
        )
    with np.errstate(invalid="ignore"):
        if op == ">=":
            ok = numbers >= criterion.min
        elif op == "<=":
            ok = numbers <= criterion.max
        else:
            ok = (numbers >= criterion.min) & (numbers <= criterion.max)
    return ok & known, known


# Value kinds whose equal values always print alike, so they can be folded once per distinct
# value (1 == 1.0 == True and 0.0 == -0.0 print differently, so mixes and floats cannot).
_FOLD_DISTINCT = {"string", "boolean", "integer", "empty"}


def _folded_codes(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Each value stripped and case-folded, as (code per row, distinct folded texts): code -1
    when the value is missing or blank."""
    present = values.notna().to_numpy()
    objects = values.to_numpy(dtype=object)[present]
    if pd.api.types.infer_dtype(objects, skipna=False) in _FOLD_DISTINCT:
        inner, uniques = pd.factorize(objects)
        folded = [str(u).strip().casefold() for u in uniques]
    else:
        inner, uniques = pd.factorize(
            np.array([str(v).strip().casefold() for v in objects], dtype=object)
        )
        folded = list(uniques)
    # Blank text says nothing: it counts as missing.
    blank = np.array([f == "" for f in folded] + [True], dtype=bool)
    inner = np.where(blank[inner], -1, inner)
    codes = np.full(len(values), -1, dtype=np.intp)
    codes[present] = inner
    return codes, folded


def _label_patterns(
    criteria: list[IcpCriterion], met: np.ndarray, known: np.ndarray
) -> tuple[np.ndarray, list[list[str]], list[list[str]]]:
    """(pattern code per row, met labels per pattern, missed labels per pattern), one pattern
    per distinct combination of criteria met and known."""
    if len(criteria) <= 31:
        # Both bit masks pack into one int64.
        k = len(criteria)
        bits = np.int64(1) << np.arange(k, dtype=np.int64)
        packed = met.astype(np.int64) @ bits + ((known.astype(np.int64) @ bits) << np.int64(k))
        codes, uniques = pd.factorize(packed)
        # Any row of a pattern stands for all of them.
        first = np.zeros(len(uniques), dtype=np.intp)
        first[codes] = np.arange(len(codes))
    else:
        _, first, codes = np.unique(
            np.hstack([met, known]), axis=0, return_index=True, return_inverse=True
        )
        codes = codes.reshape(-1)
    met_by, missed_by = [], []
    for row in first:
        met_by.append([c.label for c, m in zip(criteria, met[row], strict=True) if m])
        missed_by.append(
            [
                c.label if kn else f"{c.label} (unknown)"
                for c, m, kn in zip(criteria, met[row], known[row], strict=True)
                if not m
            ]
        )
    return codes.astype(np.intp, copy=False), met_by, missed_by


def as_objects(lists: Sequence[Any]) -> np.ndarray:
    """A 1-D object array holding the given lists themselves (``np.array`` would make a 2-D
    array of their items)."""
    out = np.empty(len(lists), dtype=object)
    for i, labels in enumerate(lists):
        out[i] = labels
    return out


# ------------------------------------------------------------------------------ suggestion


def wilson_interval(
    wins: np.ndarray | pd.Series, n: np.ndarray | pd.Series, z: float = _Z95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion (sound for small n and rates near 0 or 1)."""
    wins, n = np.asarray(wins, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = wins / n
        centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    # Exact ends at 0 and n wins (the formula gives them up to rounding).
    low = np.where(wins == 0, 0.0, np.clip(centre - half, 0, 1))
    high = np.where(wins == n, 1.0, np.clip(centre + half, 0, 1))
    return low, high


def size_band(employees: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(employees, errors="coerce")
    band = pd.Series("size unknown", index=employees.index, dtype=object)
    for low, high, label in SIZE_BANDS:
        band[(numbers >= low) & (numbers < high)] = label
    return band


def suggest_icp(
    tables: Tables, min_deals: int = MIN_DEALS, min_accounts: int = MIN_ACCOUNTS
) -> pd.DataFrame:
    """Win rate and median won deal size of closed deals by industry, size band and region.

    One row per segment: ``dimension``, ``segment``, ``deals``, ``accounts`` (distinct accounts
    behind the deals: 100 deals of one account are one account's habits, not a segment's),
    ``won``, ``win_rate``, ``ci_low``/``ci_high`` (Wilson 95 %), ``lift`` (win rate / overall),
    ``median_won_amount`` and ``evidence``:

    - "too few deals" / "too few accounts" below ``min_deals`` / ``min_accounts``;
    - "weak (overlaps average)" when the 95 % interval contains the overall win rate;
    - "weak (could be chance)" when it does not, but the interval widened for the number of
      segments tested (Bonferroni) does: among 30 segments, one 95 % "winner" is expected
      by chance alone;
    - "wins more" / "wins less" otherwise.

    ``attrs`` carry ``overall_win_rate``, ``overall_deals``, ``overall_median_won_amount``,
    ``segments_tested``, ``min_deals`` and ``min_accounts``.
    """
    opps = tables.opportunities
    closed = opps[opps["outcome"].isin(["won", "lost"])]
    if closed.empty:
        raise ValueError(
            "opportunities: no won or lost deals, so there is no history to learn an ICP from"
        )
    accounts = tables.accounts.set_index(tables.accounts["account_id"].astype(str))
    rows = accounts.reindex(closed["account_id"].astype(str).to_numpy())
    won = (closed["outcome"] == "won").to_numpy()
    amount = (
        pd.to_numeric(closed["amount"], errors="coerce").to_numpy(dtype=float)
        if "amount" in closed
        else np.full(len(closed), np.nan)
    )
    dimensions: dict[str, pd.Series] = {}
    if "industry" in rows:
        dimensions["industry"] = _segment_labels(rows["industry"], "industry unknown")
    if "employees" in rows:
        dimensions["size"] = size_band(rows["employees"]).reset_index(drop=True)
    for geo in ("region", "country"):
        if geo in rows and rows[geo].notna().any():
            dimensions[geo] = _segment_labels(rows[geo], f"{geo} unknown")
            break

    overall = float(won.mean())
    won_amount = np.where(won, amount, np.nan)
    account_of = closed["account_id"].astype(str).to_numpy()
    parts = []
    for dimension, labels in dimensions.items():
        frame = pd.DataFrame(
            {
                "segment": labels.to_numpy(),
                "account": account_of,
                "won": won,
                "won_amount": won_amount,
            }
        )
        grouped = frame.groupby("segment", sort=False)
        stats = pd.DataFrame(
            {
                "deals": grouped.size(),
                "accounts": grouped["account"].nunique(),
                "won": grouped["won"].sum(),
                "median_won_amount": grouped["won_amount"].median(),
            }
        ).reset_index()
        stats.insert(0, "dimension", dimension)
        parts.append(stats)
    table = pd.concat(parts, ignore_index=True)
    table["win_rate"] = table["won"] / table["deals"]
    table["ci_low"], table["ci_high"] = wilson_interval(table["won"], table["deals"])
    table["lift"] = table["win_rate"] / overall if overall > 0 else np.nan

    too_few_deals = table["deals"] < min_deals
    too_few_accounts = ~too_few_deals & (table["accounts"] < min_accounts)
    tested = ~(too_few_deals | too_few_accounts)
    n_tested = max(int(tested.sum()), 1)
    z_family = float(NormalDist().inv_cdf(1 - 0.05 / (2 * n_tested)))
    family_low, family_high = wilson_interval(table["won"], table["deals"], z=z_family)
    outside = (table["ci_low"] > overall) | (table["ci_high"] < overall)
    table["evidence"] = np.select(
        [
            too_few_deals,
            too_few_accounts,
            ~outside,
            (family_low <= overall) & (family_high >= overall),
            family_low > overall,
        ],
        [
            "too few deals",
            "too few accounts",
            "weak (overlaps average)",
            "weak (could be chance)",
            "wins more",
        ],
        "wins less",
    )
    columns = [
        "dimension",
        "segment",
        "deals",
        "accounts",
        "won",
        "win_rate",
        "ci_low",
        "ci_high",
        "lift",
        "median_won_amount",
        "evidence",
    ]
    order = {d: i for i, d in enumerate(dimensions)}
    table = (
        table[columns]
        .assign(_dim=table["dimension"].map(order), _rate=-table["win_rate"])
        .sort_values(["_dim", "_rate"], kind="stable")
        .drop(columns=["_dim", "_rate"])
        .reset_index(drop=True)
    )
    for col in ("deals", "accounts", "won"):
        table[col] = table[col].astype(int)
    table.attrs.update(
        overall_win_rate=overall,
        overall_deals=int(len(closed)),
        overall_median_won_amount=float(np.nanmedian(won_amount)) if won.any() else float("nan"),
        segments_tested=int(tested.sum()),
        min_deals=int(min_deals),
        min_accounts=int(min_accounts),
    )
    return table


def _segment_labels(values: pd.Series, unknown: str) -> pd.Series:
    text = values.astype(object).where(values.notna(), None)
    text = text.map(lambda v: str(v).strip() or None, na_action="ignore")
    return text.fillna(unknown).reset_index(drop=True).astype(object)


def icp_verdict(suggestion: pd.DataFrame) -> str:
    """One line a revenue leader can act on: which segments win clearly more than average, or
    that the evidence for an ICP is weak."""
    attrs = suggestion.attrs
    average = f"{attrs.get('overall_win_rate', float('nan')):.0%} average"
    strong = suggestion[suggestion["evidence"] == "wins more"]
    if strong.empty:
        chance = int((suggestion["evidence"] == "weak (could be chance)").sum())
        note = (
            f"; {chance} segment(s) look better but no more than chance allows across "
            f"{attrs.get('segments_tested', '?')} segments tested"
            if chance
            else ""
        )
        return (
            f"No segment wins clearly more than the {average}: the evidence for an ICP is weak "
            f"({attrs.get('overall_deals', 0):,} closed deals; segments need "
            f"{attrs.get('min_deals', MIN_DEALS)}+ deals from "
            f"{attrs.get('min_accounts', MIN_ACCOUNTS)}+ accounts{note})."
        )
    named = ", ".join(
        f"{r.dimension} {r.segment} ({r.win_rate:.0%}, 95 % CI {r.ci_low:.0%}-{r.ci_high:.0%}, "
        f"{r.deals} deals from {r.accounts} accounts)"
        for r in strong.itertuples()
    )
    return f"Segments that win clearly more than the {average}: {named}."
