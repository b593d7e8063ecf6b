"""A text column as its distinct values and one code per row.

CRM exports repeat a few labels (activity types, topics, account ids) over millions of rows.
Working on the distinct values and reaching the rows through integer codes keeps string work
to a few thousand values: cleaning maps each distinct value once, and joins look up each
distinct id once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow

TEXT = pd.StringDtype(na_value=np.nan)


@dataclass(frozen=True)
class Distinct:
    """A text column's distinct values, in order of first appearance (as ``pd.unique`` has
    them), and one code per row: the value's position, -1 where missing."""

    codes: np.ndarray
    values: np.ndarray
    index: pd.Index

    @classmethod
    def of(cls, text: pd.Series) -> Distinct:
        codes: np.ndarray | None = None
        if isinstance(text.dtype, pd.StringDtype) and text.dtype.storage == "pyarrow":
            encoded = pyarrow.chunked_array(text.array.__arrow_array__()).dictionary_encode()
            chunks = encoded.chunks
            if chunks and all(c.dictionary.equals(chunks[0].dictionary) for c in chunks[1:]):
                codes = np.concatenate(
                    [c.indices.fill_null(-1).to_numpy(zero_copy_only=False) for c in chunks]
                ).astype(np.intp, copy=False)
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
        """Rows holding one of the distinct values marked in ``which``."""
        return int(self.counts[which].sum())

    def column(self, values: np.ndarray) -> pd.Series:
        """The column with each distinct value replaced by ``values`` (same positions)."""
        text = pd.array(values, dtype=TEXT)
        return pd.Series(text.take(self.codes, allow_fill=True), index=self.index)


def positions(index: pd.Index, ids: pd.Series) -> np.ndarray:
    """Each id's position in ``index`` (-1 where absent or missing), as int64: the distinct
    ids are looked up once and the rows take their answer."""
    distinct = Distinct.of(ids if ids.dtype == TEXT else ids.astype(str).astype(TEXT))
    found = index.get_indexer(pd.Index(distinct.values, dtype=object)).astype(np.int64)
    return np.where(distinct.codes >= 0, found[distinct.codes] if len(found) else -1, -1)
