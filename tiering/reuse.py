"""SHAP values kept from an earlier run, in front of ``Bundle.contributions``.

TreeSHAP is most of a batch run's cost with reasons, and an account's SHAP values are a
function of two things only: the models (``Bundle.explainer_key``) and the row the boosters
read (``Bundle.input_fingerprints``). Accounts whose row and models are unchanged get the
stored values back, bit for bit; the rest are explained afresh. Everything else a reason text
says depends on this run's population or on today's figures (tier, cut-offs, tier rule, the
next-tier hint, the change reason, the quoted feature values) and is phrased as always, by the
one scoring core (``tiering.scoring.phrase`` with ``contributions=``).

The store of the values is the caller's (the tier history in ``serving``); this module only
packs, looks up and unpacks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

FINGERPRINT_COLUMN = "input_fingerprint"
"""Per scored row: the digest of its model input (kept in the history, not in the output)."""
PACKED_COLUMN = "explained_contributions"
"""Per scored row: its packed SHAP values when explained in this run, None when reused."""
CACHE_COLUMNS = (FINGERPRINT_COLUMN, PACKED_COLUMN)


class Explainable(Protocol):
    feature_names: list[str]

    def contributions(self, features: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]: ...

    def input_fingerprints(self, features: pd.DataFrame) -> np.ndarray: ...


def pack(conversion: np.ndarray, revenue: np.ndarray) -> list[bytes]:
    """One value per row: both models' contributions (features and bias) as float64 bytes,
    so that what comes back is exactly what was computed."""
    both = np.ascontiguousarray(np.concatenate([conversion, revenue], axis=1), dtype=np.float64)
    return [row.tobytes() for row in both]


def unpack(packed: Iterable[bytes], width: int) -> tuple[np.ndarray, np.ndarray]:
    """``pack`` undone for rows of ``width`` columns each (features and bias)."""
    blob = b"".join(packed)
    both = np.frombuffer(blob, dtype=np.float64).reshape(-1, 2 * width)
    return both[:, :width].copy(), both[:, width:].copy()


@dataclass(frozen=True)
class Explained:
    """The SHAP values of some rows, and what the store needs of them."""

    contributions: tuple[pd.DataFrame, pd.DataFrame]
    fingerprints: np.ndarray
    packed: list[bytes | None]
    """Each row's packed values when explained now (to be stored), None when reused."""

    @property
    def reused(self) -> int:
        return sum(p is None for p in self.packed)


@dataclass(frozen=True)
class ReasonCache:
    """The stored SHAP values of one set of models (``key``): account id -> (fingerprint of
    the row they were computed from, packed values). An empty cache explains every row and
    still hands back what to store, so a forced fresh run seeds the next one."""

    key: str
    stored: Mapping[str, tuple[str, bytes]] = field(default_factory=dict)

    def only(self, account_ids: Iterable[str]) -> ReasonCache:
        """The entries of some accounts (what one Dask partition needs)."""
        picked = {a: self.stored[a] for a in map(str, account_ids) if a in self.stored}
        return ReasonCache(self.key, picked)

    def explain(self, bundle: Explainable, features: pd.DataFrame) -> Explained:
        """``bundle.contributions(features)``, the stored values standing in for the rows
        whose fingerprint matches."""
        fingerprints = bundle.input_fingerprints(features)
        ids = features["account_id"].astype(str).to_numpy()
        hit = np.fromiter(
            (
                (entry := self.stored.get(a)) is not None and entry[0] == fp
                for a, fp in zip(ids, fingerprints, strict=True)
            ),
            dtype=bool,
            count=len(ids),
        )
        names = [*bundle.feature_names, "bias"]
        width = len(names)
        conv = np.empty((len(ids), width))
        rev = np.empty((len(ids), width))
        packed: list[bytes | None] = [None] * len(ids)
        if hit.any():
            conv[hit], rev[hit] = unpack((self.stored[a][1] for a in ids[hit]), width)
        miss = np.flatnonzero(~hit)
        if miss.size:
            fresh_conv, fresh_rev = bundle.contributions(features.iloc[miss])
            conv[miss] = fresh_conv[names].to_numpy(dtype=np.float64)
            rev[miss] = fresh_rev[names].to_numpy(dtype=np.float64)
            for i, blob in zip(miss, pack(conv[miss], rev[miss]), strict=True):
                packed[i] = blob
        index = features.index
        return Explained(
            (
                pd.DataFrame(conv, columns=names, index=index, copy=False),
                pd.DataFrame(rev, columns=names, index=index, copy=False),
            ),
            fingerprints,
            packed,
        )
