"""The per-owner or per-territory cut-offs of the last batch run, for single online requests.

A batch run with ``[capacity] within = "owner"`` or ``"territory"`` tiers each group on its
own; a single request cannot see its group's population, so it is tiered against the cut-offs
the last batch run found in that group (written beside the account snapshot as
``<snapshot>.groups.json``), and the answer names the group. An account whose group the run
did not have is tiered against the bundle's reference cut-offs, and the answer says so.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tiering.capacity import UNOWNED, GroupedTiers


def groups_path(snapshot: Path) -> Path:
    return snapshot.with_name(f"{snapshot.name}.groups.json")


def write_group_cutoffs(
    grouped: GroupedTiers | None, account_ids: Any, snapshot: Path, as_of: pd.Timestamp
) -> None:
    """Write (atomically) the groups' cut-offs beside the snapshot; remove a stale file when
    the run was global."""
    path = groups_path(snapshot)
    if grouped is None or grouped.plan.within == "global":
        path.unlink(missing_ok=True)
        return
    groups = grouped.groups
    payload = {
        "within": grouped.plan.within,
        "as_of": as_of.date().isoformat(),
        "groups": {
            str(r["group"]): {
                "tier1": None if pd.isna(r["tier1_cutoff"]) else float(r["tier1_cutoff"]),
                "tier2": None if pd.isna(r["tier2_cutoff"]) else float(r["tier2_cutoff"]),
                "accounts": int(r["accounts"]),
                "tier1_seats": None if pd.isna(r["tier1_seats"]) else int(r["tier1_seats"]),
            }
            for r in groups.to_dict("records")
        },
        "accounts": dict(
            zip(
                (str(a) for a in np.asarray(account_ids)),
                (str(g) for g in grouped.plan.group),
                strict=True,
            )
        ),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True)
class GroupCutoffs:
    within: str
    as_of: str
    groups: dict[str, dict[str, Any]]
    accounts: dict[str, str]

    def group_of(self, account_id: str | None, owner: str | None, territory: str | None) -> str:
        """The request's own owner / territory first, else the account's group in the run."""
        given = owner if self.within == "owner" else territory
        if given is not None and str(given).strip():
            return str(given).strip()
        if account_id is not None and str(account_id) in self.accounts:
            return self.accounts[str(account_id)]
        return UNOWNED

    def describe(self, group: str) -> str:
        found = self.groups.get(group)
        if found is None:
            return (
                f"{self.within} {group!r} was not in the batch run as of {self.as_of}: the "
                "bundle's reference cut-offs"
            )

        def cut(value: float | None) -> str:
            return "unreachable" if value is None else f"{value:.4f}"

        return (
            f"{self.within} {group}'s cut-offs from the batch run as of {self.as_of} "
            f"({found['accounts']:,} accounts; Tier 1 >= {cut(found['tier1'])}, "
            f"Tier 2 >= {cut(found['tier2'])})"
        )


class GroupCutoffsCache:
    """The file beside the snapshot, re-read when it changes; None when there is none."""

    def __init__(self, snapshot: Path | None) -> None:
        self.path = groups_path(snapshot) if snapshot is not None else None
        self._mtime: float | None = None
        self._value: GroupCutoffs | None = None
        self._lock = threading.Lock()

    def current(self) -> GroupCutoffs | None:
        if self.path is None:
            return None
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        with self._lock:
            if mtime != self._mtime:
                try:
                    raw = json.loads(self.path.read_text(encoding="utf-8"))
                    self._value = GroupCutoffs(
                        within=str(raw["within"]),
                        as_of=str(raw["as_of"]),
                        groups=dict(raw["groups"]),
                        accounts=dict(raw["accounts"]),
                    )
                except (OSError, ValueError, KeyError, TypeError):
                    self._value = None  # a damaged file: the reference cut-offs apply
                self._mtime = mtime
            return self._value
