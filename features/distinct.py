"""A text column as its distinct values and one code per row.

CRM exports repeat a few labels (activity types, topics, account ids) over millions of rows.
Working on the distinct values and reaching the rows through integer codes keeps string work
to a few thousand values: cleaning maps each distinct value once, and joins look up each
distinct id once.

Within :func:`shared_encodings` (a load of the export) a column is encoded once. Arrow arrays
are immutable, so the encoding of a column is kept for as long as its Arrow array lives, and a
column made by :meth:`Distinct.column` gets its encoding from the one it was made from (the
few distinct values renumbered, the rows' codes taken through them) instead of hashing its
millions of rows again: trimming, labels, case, fixes and the duplicate check of one column
share one encoding. The encodings go when the scope ends: their row codes are as long as the
table, and kept any longer they would add to the peak memory of what follows the load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import weakref
from collections.abc import Iterator
from contextvars import ContextVar

import numpy as np
import pandas as pd
import pyarrow

TEXT = pd.StringDtype(na_value=np.nan)


@dataclasses.dataclass(frozen=True)
class Distinct:
    """A text column's distinct values, in order of first appearance (as ``pd.unique`` has
    them), and one code per row: the value's position, -1 where missing (a signed integer
    array, int32 or int64)."""

    codes: np.ndarray
    values: np.ndarray
    index: pd.Index

    @classmethod
    def of(cls, text: pd.Series) -> Distinct:
        arrow, shared = _arrow(text), _SHARED.get()
        if arrow is None or shared is None:
            return cls.encode(text)
        known = shared.get(id(arrow))
        if known is not None and known[0]() is arrow:
            found = known[1]
            return (
                found if found.index is text.index else dataclasses.replace(found, index=text.index)
            )
        distinct = cls.encode(text)
        _remember(shared, arrow, distinct)
        return distinct

    @classmethod
    def encode(cls, text: pd.Series) -> Distinct:
        """The encoding computed from the rows (what :meth:`of` keeps and reuses)."""
        codes: np.ndarray | None = None
        if _arrow(text) is not None:
            encoded = pyarrow.chunked_array(text.array.__arrow_array__()).dictionary_encode()
            chunks = encoded.chunks
            if chunks and all(c.dictionary.equals(chunks[0].dictionary) for c in chunks[1:]):
                # Arrow's own integer width (int32): as good an index, and a table of millions
                # of rows is spared widening every code to int64.
                codes = np.concatenate(
                    [
                        c.indices.to_numpy()
                        if c.indices.null_count == 0
                        else c.indices.fill_null(-1).to_numpy(zero_copy_only=False)
                        for c in chunks
                    ]
                )
                uniques = chunks[0].dictionary.to_numpy(zero_copy_only=False)
        if codes is None:
            codes, found = pd.factorize(text, use_na_sentinel=True)
            uniques = np.asarray(found, dtype=object)
        return cls(codes, np.asarray(uniques, dtype=object), text.index)

    @functools.cached_property
    def counts(self) -> np.ndarray:
        """Rows per distinct value."""
        return np.bincount(self.codes[self.codes >= 0], minlength=len(self.values))

    def rows(self, which: np.ndarray) -> int:
        """Rows holding one of the distinct values marked in ``which`` (none marked, as when a
        cleaning step changed nothing, counts no row)."""
        return int(self.counts[which].sum()) if which.any() else 0

    def column(self, values: np.ndarray) -> pd.Series:
        """The column with each distinct value replaced by ``values`` (same positions)."""
        text = pd.array(values, dtype=TEXT)
        out = pd.Series(text.take(self.codes, allow_fill=True), index=self.index)
        arrow, shared = _arrow(out), _SHARED.get()
        if arrow is not None and shared is not None:
            # Values that became equal (or missing) merge; the order of first appearance holds,
            # since each value's first row is that of the first old value mapped to it.
            remap, merged = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=True)
            codes = (
                np.where(self.codes >= 0, remap[np.maximum(self.codes, 0)], -1)
                if len(remap)
                else self.codes
            )
            _remember(shared, arrow, Distinct(codes, np.asarray(merged, dtype=object), self.index))
        return out


_Encodings = dict[int, tuple[weakref.ref[pyarrow.ChunkedArray], Distinct]]
_SHARED: ContextVar[_Encodings | None] = ContextVar("shared_encodings", default=None)
"""Within :func:`shared_encodings`: encodings by the id of their Arrow array, each dropped
when its array is freed."""


@contextlib.contextmanager
def shared_encodings() -> Iterator[None]:
    """Columns encoded within are encoded once (see the module docstring); a scope within a
    scope is the outer one."""
    if _SHARED.get() is not None:
        yield
        return
    shared: _Encodings = {}
    token = _SHARED.set(shared)
    try:
        yield
    finally:
        _SHARED.reset(token)
        shared.clear()  # now: each entry's weak reference refers back to the dict (a cycle)


def _arrow(text: pd.Series) -> pyarrow.ChunkedArray | None:
    if isinstance(text.dtype, pd.StringDtype) and text.dtype.storage == "pyarrow":
        arrow = text.array.__arrow_array__()
        return arrow if isinstance(arrow, pyarrow.ChunkedArray) else None
    return None


def _remember(shared: _Encodings, arrow: pyarrow.ChunkedArray, distinct: Distinct) -> None:
    key = id(arrow)
    shared[key] = (weakref.ref(arrow, lambda _: shared.pop(key, None)), distinct)


def positions(index: pd.Index, ids: pd.Series) -> np.ndarray:
    """Each id's position in ``index`` (-1 where absent or missing), as int64: the distinct
    ids are looked up once and the rows take their answer."""
    distinct = Distinct.of(ids if ids.dtype == TEXT else ids.astype(str).astype(TEXT))
    found = index.get_indexer(pd.Index(distinct.values, dtype=object)).astype(np.int64)
    return np.where(distinct.codes >= 0, found[distinct.codes] if len(found) else -1, -1)
