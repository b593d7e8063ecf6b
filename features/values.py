"""How account values that mean yes or no are read: one vocabulary for the model's inputs
(technographics), the ICP's ``is_true`` criteria and the data contract, so that the model and
the ICP never disagree on what a "t" or an "off" says.

Yes: ``true``, ``t``, ``yes``, ``y``, ``1``, ``on``; no: ``false``, ``f``, ``no``, ``n``, ``0``,
``off``; case and surrounding spaces do not matter. Booleans read as themselves and numbers
equal to 1 or 0 as yes or no. Anything else (a 2, "maybe", blank, missing) is missing: it is
not an answer to a yes/no question, and guessing one would put a fact in a rep's reasons that
the data does not hold.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import pandas as pd

YES_WORDS = frozenset({"true", "t", "yes", "y", "1", "on"})
NO_WORDS = frozenset({"false", "f", "no", "n", "0", "off"})


def yes_no(values: pd.Series) -> np.ndarray:
    """1.0 (yes), 0.0 (no) or NaN (missing or not a yes/no) per value, as float64."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        found = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        return np.where(found == 1.0, 1.0, np.where(found == 0.0, 0.0, np.nan))
    # Text and mixed columns repeat a handful of spellings: read each distinct value once.
    codes, uniques = pd.factorize(values.to_numpy(dtype=object), use_na_sentinel=True)
    answers = np.array([_answer(u) for u in uniques] + [math.nan], dtype=float)
    return answers[codes]  # code -1 (missing) picks the trailing NaN


def _answer(value: object) -> float:
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, numbers.Real):
        return 1.0 if value == 1 else 0.0 if value == 0 else math.nan
    if isinstance(value, str):
        word = value.strip().casefold()
        return 1.0 if word in YES_WORDS else 0.0 if word in NO_WORDS else math.nan
    return math.nan
