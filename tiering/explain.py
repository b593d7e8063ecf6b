"""Reasons a rep can read: what raised or lowered an account's chance and its amount, grouped
into the business fields a rep knows, phrased with the account's own values; the ICP criteria
met and missed; the tier rule that applied; what would move it up; the playbook.

Two parts, whatever the target
    A probability part (a binary model in log-odds whose probability is calibrated: the win
    chance of an open deal, or the chance that an account buys within a horizon) and an amount
    part (a model of the log amount: deal value, or revenue if the account buys). The maths
    below is the same for both targets; :class:`EffectWords` says how the parts read
    (``DEAL_WORDS``, ``ACCOUNT_WORDS``), and with a horizon label the reasons open with the two
    headlines, e.g. "likely to buy in the next 6 months: 34 % (a typical account: 9 %)" and
    "if it buys: $120k-$410k" (:func:`headlines`). Names such as ``p_win``, ``win_contrib``
    and ``deal_size_pct`` stand for the probability and the amount part of either target.

Where the numbers come from
    LightGBM's ``pred_contrib`` (exact TreeSHAP) splits each raw score into per-feature
    contributions plus a ``bias`` (the model's average raw score): log-odds for the win model,
    log deal value for the value model. Features are summed into business fields with one
    matrix product by a feature -> field indicator matrix (``features.build.feature_field``),
    which preserves the row sums exactly.

Win chance in probability points (a documented approximation)
    Log-odds do not add up in probability space, and the win probability is calibrated after
    the model. Each account's field contributions are therefore scaled by one per-account
    factor, the slope of the secant from the base (bias) to the account's raw score:
    ``(p_win - p_base) / (raw - bias)``, where ``p_base`` is the calibrated probability at the
    bias. The fields' points then add up exactly to ``p_win - p_base`` and keep the signs of the
    SHAP values (calibration is monotone). When the raw score is within 0.05 logits of the base
    the secant is ill-defined and the local slope ``p (1 - p)`` is used instead.

Deal size in percent
    The value model's raw score is a log, so a field's contribution ``c`` multiplies the deal
    value by ``exp(c)``: "+18 % deal size" means ``exp(c) - 1 = 0.18``, all else equal.

Which fields are reasons, and what they say
    Fields are ranked by their effect on the log of expected value (win part scaled like the
    points, with the secant of ``log p``, plus the value part): the top ``k`` positive and top
    ``k`` negative. A positive driver needs a material positive part (>= 0.5 points or >= 1 %
    deal size) and a negative one a material negative part, and a driver's text shows only the
    parts that go its way: a field can raise expected value while it lowers one part a little,
    and "Up: ... -2 pts" reads as a contradiction. The numbers in the structured driver keep
    both parts as the models say them, so the points still add up to ``p_win - p_base``.

    The value quoted is the account's own value of the field's feature that moved the field
    most *in the driver's direction*: a positive "Web visits" driver carried by the 90-day
    window and the recency is not phrased with the 30-day count that pulled the other way.
    Drivers from past deals that rest on one or two deals say so.

The heavy part (grouping, scaling, top-k) is vectorised over accounts; only the final string
formatting loops, and only over the accounts that need text.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from tiering.config import Playbook, TierPolicy
from tiering.policy import (
    RULE_PRIORITY,
    TierAssignment,
    ev_needed,
    ev_percentile,
    icp_needed,
)

FieldOf = Callable[[str], tuple[str, str]]

MIN_POINTS = 0.5
"""Win-chance effects smaller than this (probability points) are not worth a rep's time."""
MIN_DEAL_SIZE_PCT = 1.0
"""Deal-size effects smaller than this (percent) are not worth a rep's time."""
_SECANT_MIN_LOGITS = 0.05
MINUS = "\u2212"
DASH = "\u2014"


@dataclass(frozen=True)
class EffectWords:
    """How the two parts of an effect read to a rep: the probability part (in points) and the
    amount part (in percent), and the names the summary and the tier rule use."""

    more_likely: str = "accounts like this win more often"
    less_likely: str = "accounts like this win less often"
    larger: str = "deals here are larger"
    smaller: str = "deals here are smaller"
    amount_unit: str = " % deal size"
    chance: str = "win chance"
    """The probability, in the summary when no horizon headline is given."""
    expected: str = "expected value"
    """Probability x amount, as the summary, the tier rule and the next-tier hint name it."""


DEAL_WORDS = EffectWords()
"""An open deal: P(win) and the deal's value."""
ACCOUNT_WORDS = EffectWords(
    more_likely="accounts like this buy more often",
    less_likely="accounts like this buy less often",
    larger="they spend more when they buy",
    smaller="they spend less when they buy",
    amount_unit=" % revenue if it buys",
    chance="chance to buy",
    expected="expected revenue",
)
"""An account: P(it buys within the horizon) and its revenue if it does."""


def _default_field_of() -> FieldOf:
    from features.build import feature_field

    return feature_field


# ------------------------------------------------------------------------------ grouping


@dataclass(frozen=True)
class FieldMap:
    """Features grouped into business fields: ``member[j, f] = 1`` when feature j belongs to
    field f. Fields keep the order in which their first feature appears."""

    features: tuple[str, ...]
    fields: tuple[str, ...]
    labels: tuple[str, ...]
    field_of_feature: NDArray[np.int64]
    member: NDArray[np.float64]


def field_map(feature_names: Sequence[str], field_of: FieldOf | None = None) -> FieldMap:
    field_of = field_of or _default_field_of()
    keys: list[str] = []
    labels: list[str] = []
    index: dict[str, int] = {}
    owner = np.empty(len(feature_names), dtype=np.int64)
    for j, name in enumerate(feature_names):
        key, label = field_of(name)
        if key not in index:
            index[key] = len(keys)
            keys.append(key)
            labels.append(label)
        owner[j] = index[key]
    member = np.zeros((len(feature_names), len(keys)))
    member[np.arange(len(feature_names)), owner] = 1.0
    return FieldMap(tuple(feature_names), tuple(keys), tuple(labels), owner, member)


@functools.lru_cache(maxsize=16)
def _default_field_map(feature_names: tuple[str, ...]) -> FieldMap:
    fmap = field_map(feature_names)
    # Shared by every call for these features: nobody may change it in place.
    fmap.field_of_feature.flags.writeable = False
    fmap.member.flags.writeable = False
    return fmap


def _field_map_of(contrib: pd.DataFrame, field_of: FieldOf | None) -> FieldMap:
    names = tuple(c for c in contrib.columns.tolist() if c != "bias")
    return _default_field_map(names) if field_of is None else field_map(names, field_of)


def _feature_matrix(contrib: pd.DataFrame, features: Sequence[str], what: str) -> np.ndarray:
    columns = tuple(contrib.columns.tolist())
    if columns[-1:] == ("bias",) and columns[:-1] == tuple(features):
        # Columns as LightGBM returns them (features, then bias): no column selection needed.
        return np.asfortranarray(contrib.to_numpy(dtype=np.float64)[:, :-1])
    missing = [c for c in (*features, "bias") if c not in columns]
    if missing:
        raise ValueError(f"{what} contributions: missing column(s) {missing[:5]}")
    return contrib[list(features)].to_numpy(dtype=np.float64)


def group_by_field(
    contrib: pd.DataFrame, fmap: FieldMap | None = None, field_of: FieldOf | None = None
) -> pd.DataFrame:
    """Per-feature contributions summed into business fields (``bias`` left out); the row sums
    equal the sums of the feature contributions."""
    if fmap is None:
        fmap = _field_map_of(contrib, field_of)
    grouped = _feature_matrix(contrib, fmap.features, "feature") @ fmap.member
    return pd.DataFrame(grouped, columns=list(fmap.fields), index=contrib.index)


@dataclass(frozen=True)
class FieldEffects:
    """Per account (rows) and business field (columns): win-chance points, deal-size percent and
    the effect on log expected value used for ranking; ``representative`` is the feature (index
    into ``fmap.features``) that moved each field most, whose value the text quotes."""

    fmap: FieldMap
    win_points: NDArray[np.float64]
    deal_size_pct: NDArray[np.float64]
    ev_log: NDArray[np.float64]
    representative: NDArray[np.int32]


def _secant(dz: np.ndarray, dy: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    far = np.abs(dz) >= _SECANT_MIN_LOGITS
    safe = np.where(far, dz, 1.0)
    return np.where(far, dy / safe, fallback)


def field_effects(
    win_contrib: pd.DataFrame,
    value_contrib: pd.DataFrame,
    p_win: ArrayLike,
    p_base: ArrayLike,
    fmap: FieldMap,
) -> FieldEffects:
    """Win points, deal-size percent and log-EV effects per field (see the module docstring)."""
    win = _feature_matrix(win_contrib, fmap.features, "win-model")
    value = _feature_matrix(value_contrib, fmap.features, "value-model")
    if win.shape != value.shape:
        raise ValueError(
            f"win and value contributions differ in shape: {win.shape} vs {value.shape}"
        )
    p = np.clip(np.asarray(p_win, dtype=np.float64).reshape(-1), 1e-9, 1 - 1e-9)
    p0 = np.clip(np.broadcast_to(np.asarray(p_base, dtype=np.float64), p.shape), 1e-9, 1 - 1e-9)
    if p.shape[0] != win.shape[0]:
        raise ValueError(f"p_win: {p.shape[0]} values for {win.shape[0]} contribution rows")
    dz = win.sum(axis=1)
    points_per_logit = _secant(dz, p - p0, p * (1 - p)) * 100
    logp_per_logit = _secant(dz, np.log(p) - np.log(p0), 1 - p)

    win_fields = win @ fmap.member
    value_fields = value @ fmap.member
    ev_log = win_fields * logp_per_logit[:, None] + value_fields
    combined = win * logp_per_logit[:, None] + value
    # The feature quoted is the one that pushed most in the field's own direction, so that the
    # value a rep reads is the one behind the effect (a field with no effect: the largest one).
    direction = np.sign(ev_log)
    representative = np.empty(win_fields.shape, dtype=np.int32)
    for f in range(len(fmap.fields)):
        cols = np.flatnonzero(fmap.field_of_feature == f)
        if cols.size == 1:
            representative[:, f] = cols[0]
        else:
            way = direction[:, f, None]
            pushed = np.where(way == 0, np.abs(combined[:, cols]), combined[:, cols] * way)
            representative[:, f] = cols[np.argmax(pushed, axis=1)]
    return FieldEffects(
        fmap=fmap,
        win_points=win_fields * points_per_logit[:, None],
        deal_size_pct=np.expm1(value_fields) * 100,
        ev_log=ev_log,
        representative=representative,
    )


def _top_k(score: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices of the k largest finite scores per row, best first, and their validity."""
    n, m = score.shape
    k = min(k, m)
    if k <= 0 or n == 0:
        return np.empty((n, 0), dtype=np.int64), np.empty((n, 0), dtype=bool)
    idx = np.argpartition(-score, k - 1, axis=1)[:, :k] if k < m else np.tile(np.arange(m), (n, 1))
    picked = np.take_along_axis(score, idx, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    return idx, np.isfinite(np.take_along_axis(score, idx, axis=1))


def top_drivers(
    effects: FieldEffects, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(positive fields, valid, negative fields, valid): up to ``k`` fields each way, each with
    a material part that goes its way (the part its text shows)."""
    points, pct = effects.win_points, effects.deal_size_pct
    raises = (points >= MIN_POINTS) | (pct >= MIN_DEAL_SIZE_PCT)
    lowers = (points <= -MIN_POINTS) | (pct <= -MIN_DEAL_SIZE_PCT)
    ev = effects.ev_log
    pos, pos_ok = _top_k(np.where(raises & (ev > 0), ev, -np.inf), k)
    neg, neg_ok = _top_k(np.where(lowers & (ev < 0), -ev, -np.inf), k)
    return pos, pos_ok, neg, neg_ok


# ---------------------------------------------------------------------------- formatting


def fmt_money(value: float) -> str:
    if not math.isfinite(value):
        return "unknown"
    sign = "-" if value < 0 else ""
    v = abs(value)
    if v >= 1e9:
        return f"{sign}${v / 1e9:.1f}B"
    if v >= 1e6:
        return f"{sign}${v / 1e6:.1f}M"
    if v >= 1e4:
        return f"{sign}${v / 1e3:.0f}k"
    if v >= 1e3:
        return f"{sign}${v / 1e3:.1f}k"
    return f"{sign}${v:,.0f}"


def fmt_signed(value: float, unit: str) -> str:
    """'+6 pts', '−3 pts', '+0.7 pts': whole numbers from 1 up, one decimal below."""
    magnitude = abs(value)
    text = f"{magnitude:.0f}" if magnitude >= 0.95 else f"{magnitude:.1f}"
    sign = "+" if value >= 0 else MINUS
    return f"{sign}{text}{unit}"


def fmt_percent(share: float) -> str:
    return f"{share * 100:.0f} %"


def _fmt_number(value: float) -> str:
    if float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.2f}"


_WINDOW = re.compile(r"^(?P<base>.+)_(?P<days>\d+)d$")
_MONEY = ("revenue", "amount", "value", "arr", "spend")


def describe_value(feature: str, label: str, value: Any) -> str:
    """The account's own value of a feature in a rep's words, e.g. 'Meetings in the last 90 days:
    4', 'No deals won with us yet', 'Industry software', 'Company size (employees): 5,200'."""
    if isinstance(value, np.bool_):
        value = float(value)
    missing = _is_missing(value)
    if isinstance(value, str) or (not missing and not isinstance(value, (int, float, np.number))):
        return label_with(label, str(value))
    special = _describe_history(feature, value, missing)
    if special is not None:
        return special
    lower = label[:1].lower() + label[1:]
    if missing:
        if feature.startswith("days_since_"):
            return f"No {lower} on record"
        return f"{label} unknown"
    v = float(value)
    if feature.startswith("intent_topics_") and (m := _WINDOW.match(feature)):
        return f"Intent topics in the last {m['days']} days: {_fmt_number(v)}"
    if m := _WINDOW.match(feature):
        if v == 0:
            return f"No {lower} in the last {m['days']} days"
        return f"{label} in the last {m['days']} days: {_fmt_number(v)}"
    if feature.startswith("days_since_"):
        return f"{label}: last one {v:,.0f} days ago"
    if feature.endswith("_trend"):
        trend = "rising" if v > 0.1 else "falling" if v < -0.1 else "flat"
        return f"{label} {trend} over the last weeks"
    if feature.startswith(("tech_", "has_", "is_")):
        if v >= 0.5:
            return label
        return "Does not use " + label[5:] if label.startswith("Uses ") else f"{label}: no"
    if feature == "founded_year":
        return f"{label} {v:.0f}"
    if any(word in feature for word in _MONEY):
        return f"{label}: {fmt_money(v)}"
    if "rate" in feature or "share" in feature:
        return f"{label}: {fmt_percent(v)}"
    return f"{label}: {_fmt_number(v)}"


_WORD = re.compile(r"\w+")


def label_with(label: str, value: str) -> str:
    """A field's label and a text value said once: 'Industry software', but 'Sector 2' (not
    'Sector Sector 2') and 'EMEA region' (not 'Region EMEA region'). Words are compared without
    case or punctuation."""
    value = value.strip()
    said = [w.casefold() for w in _WORD.findall(label)]
    words = [w.casefold() for w in _WORD.findall(value)]
    n = len(said)
    if n and any(words[i : i + n] == said for i in range(len(words) - n + 1)):
        return value[:1].upper() + value[1:]  # the value already names the field
    # The label's last words open the value: say them once, as the value spells them.
    parts = label.split()
    for k in range(min(len(parts), len(words)), 0, -1):
        tail = [w.casefold() for w in _WORD.findall(" ".join(parts[-k:]))]
        if tail and tail == words[: len(tail)]:
            return " ".join([*parts[:-k], value])
    return f"{label} {value}"


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _describe_history(feature: str, value: Any, missing: bool) -> str | None:
    v = 0.0 if missing else float(value)
    if feature == "prior_won":
        return "No deals won with us yet" if v == 0 else f"Deals won with us: {v:,.0f}"
    if feature == "prior_lost":
        return "No deals lost with us" if v == 0 else f"Deals lost with us: {v:,.0f}"
    if feature == "days_since_last_won":
        return "No deals won with us yet" if missing else f"Last deal won {v:,.0f} days ago"
    if feature == "revenue_won":
        return "No revenue won with us yet" if v == 0 else f"Revenue won with us: {fmt_money(v)}"
    if feature == "prior_win_rate" and not missing:
        return f"Win rate with us (smoothed): {fmt_percent(v)}"
    if feature == "open_deals":
        return "No open deals" if v == 0 else f"Open deals: {v:,.0f}"
    return None


def _shown(value: float, threshold: float, positive: bool) -> bool:
    """Whether a part is shown on a driver: material, and going the driver's way."""
    return value >= threshold if positive else value <= -threshold


def _effect_phrases(
    points: float, pct: float, positive: bool, words: EffectWords = DEAL_WORDS
) -> list[str]:
    phrases = []
    if _shown(points, MIN_POINTS, positive):
        more = words.more_likely if points > 0 else words.less_likely
        phrases.append(f"{more}: {fmt_signed(points, ' pts')}")
    if _shown(pct, MIN_DEAL_SIZE_PCT, positive):
        larger = words.larger if pct > 0 else words.smaller
        phrases.append(f"{larger}: {fmt_signed(pct, words.amount_unit)}")
    return phrases


@functools.lru_cache(maxsize=2**16)  # accounts share most rounded effects
def _effect_short(
    points: float, pct: float, positive: bool, words: EffectWords = DEAL_WORDS
) -> str:
    parts = []
    if _shown(points, MIN_POINTS, positive):
        parts.append(fmt_signed(points, " pts"))
    if _shown(pct, MIN_DEAL_SIZE_PCT, positive):
        parts.append(fmt_signed(pct, words.amount_unit))
    return ", ".join(parts)


def _json_value(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return str(value)


def round_one_decimal(values: np.ndarray) -> np.ndarray:
    """``round(v, 1)`` of every value, as Python rounds (to the nearest tenth of the decimal
    value, ties to even): numpy's scaled rounding, with Python's where a value sits so near a
    half-tenth that the scaling could have moved it across."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # the largest go to Python below
        scaled = values * 10
        out = np.round(scaled) / 10
        fraction = np.abs(scaled - np.trunc(scaled))
    near_tie = np.flatnonzero((np.abs(fraction - 0.5) < 1e-6) | (np.abs(scaled) >= 1e9))
    out[near_tie] = [round(v, 1) for v in values[near_tie].tolist()]
    return out


def _distinct_rows(*columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's number among the distinct rows of ``columns`` (equal values, equal number),
    and the first row of each: one hash pass per column."""
    key = np.zeros(len(columns[0]), dtype=np.int64)
    for column in columns:
        codes, distinct = pd.factorize(column)
        key, _ = pd.factorize(key * len(distinct) + codes)
    _, first = np.unique(key, return_index=True)
    return key, first


@contextlib.contextmanager
def _no_garbage_collection() -> Iterator[None]:
    """The cycle collector paused while many small objects without cycles are built: it would
    otherwise walk every live object again and again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def drivers(
    features: pd.DataFrame,
    win_contrib: pd.DataFrame,
    value_contrib: pd.DataFrame,
    p_win: ArrayLike,
    p_base: ArrayLike,
    *,
    top: int = 3,
    field_of: FieldOf | None = None,
    fmap: FieldMap | None = None,
    words: EffectWords = DEAL_WORDS,
) -> list[list[dict[str, Any]]]:
    """Per account: the top positive then top negative drivers, each a dict with ``field``,
    ``label``, ``feature``, ``value`` (the account's own value), ``value_text``,
    ``effect_points`` (probability part, in probability points), ``deal_size_pct`` (amount
    part, in percent), ``direction`` ("positive"/"negative": effect on expected value) and
    ``text``, which shows only the parts that go the driver's way, phrased with ``words``."""
    if fmap is None:
        fmap = _field_map_of(win_contrib, field_of)
    missing = [c for c in fmap.features if c not in features.columns]
    if missing:
        raise ValueError(f"features: missing column(s) {missing[:5]} that the model explains")
    effects = field_effects(win_contrib, value_contrib, p_win, p_base, fmap)
    pos, pos_ok, neg, neg_ok = top_drivers(effects, top)
    # Every driver of every account as flat arrays, in output order: row by row, positives
    # (best first) then negatives.
    chosen = np.concatenate([pos, neg], axis=1)
    rows, slots = np.nonzero(np.concatenate([pos_ok, neg_ok], axis=1))
    fields = chosen[rows, slots]
    reps = effects.representative[rows, fields]
    negative = slots >= pos.shape[1]
    values, described = _described_values(features, rows, reps, fields, fmap)
    # Text and numbers from the same rounded values, so they never disagree.
    points = round_one_decimal(effects.win_points[rows, fields])
    pcts = round_one_decimal(effects.deal_size_pct[rows, fields])
    # Accounts share most effects once rounded: each is phrased once.
    effect_of_driver, first = _distinct_rows(points, pcts, negative)
    phrased = np.array(
        [
            f" {DASH} " + "; ".join(_effect_phrases(pts, dpct, not down, words))
            for pts, dpct, down in zip(
                points[first].tolist(),
                pcts[first].tolist(),
                negative[first].tolist(),
                strict=True,
            )
        ],
        dtype=object,
    )
    texts = (np.asarray(described, dtype=object) + phrased[effect_of_driver]).tolist()
    with _no_garbage_collection():  # hundreds of thousands of small dicts, no cycles
        return _per_account(
            len(features),
            rows,
            fmap,
            fields,
            reps,
            values,
            described,
            points.tolist(),
            pcts.tolist(),
            np.where(negative, "negative", "positive").tolist(),
            texts,
        )


def _per_account(
    n: int,
    rows: np.ndarray,
    fmap: FieldMap,
    fields: np.ndarray,
    reps: np.ndarray,
    *columns: list[Any],
) -> list[list[dict[str, Any]]]:
    """The drivers' dicts from their columns (values, value texts, points, percents,
    directions, texts), as one list per account of ``n``: drivers come row by row."""
    flat = [
        {
            "field": field,
            "label": label,
            "feature": feature,
            "value": value,
            "value_text": desc,
            "effect_points": pts,
            "deal_size_pct": dpct,
            "direction": direction,
            "text": text,
        }
        for field, label, feature, value, desc, pts, dpct, direction, text in zip(
            np.asarray(fmap.fields, dtype=object)[fields].tolist(),
            np.asarray(fmap.labels, dtype=object)[fields].tolist(),
            np.asarray(fmap.features, dtype=object)[reps].tolist(),
            *columns,
            strict=True,
        )
    ]
    ends = np.cumsum(np.bincount(rows, minlength=n)).tolist()
    return [flat[a:b] for a, b in zip([0, *ends][:-1], ends, strict=True)]


def _described_values(
    features: pd.DataFrame,
    rows: np.ndarray,
    reps: np.ndarray,
    fields: np.ndarray,
    fmap: FieldMap,
) -> tuple[list[Any], list[str]]:
    """Per driver (account ``rows``, quoted feature ``reps``, field ``fields``): the quoted
    value as JSON has it and its text. Accounts share most values (industries, small counts):
    each distinct value of a feature, with its weak-evidence note, is described once."""
    few_deals = _few_deals(features, rows, reps, fmap)
    # One number per (won, closed) pair: 0 when no note is due (no closed deal quoted).
    history = few_deals[:, 0] * (WEAK_EVIDENCE_DEALS + 1) + few_deals[:, 1]
    values: np.ndarray = np.empty(len(rows), dtype=object)
    described: np.ndarray = np.empty(len(rows), dtype=object)
    for j in np.unique(reps).tolist():
        at = np.flatnonzero(reps == j)
        column = features[fmap.features[j]].to_numpy()[rows[at]]
        codes, distinct = pd.factorize(column, use_na_sentinel=True)
        # Missing values (-1) are one value: their text and JSON are the same whatever the
        # marker (None, NaN, pd.NA).
        missing = column[codes < 0][0] if (codes < 0).any() else None
        first = [missing, *distinct]  # the column's own scalars, as the rows hold them
        inverse, keys = pd.factorize(
            (codes + 1).astype(np.int64) * (WEAK_EVIDENCE_DEALS + 1) ** 2 + history[at]
        )
        label = fmap.labels[int(fields[at[0]])]
        texts = []
        for key in keys.tolist():
            value = first[key // (WEAK_EVIDENCE_DEALS + 1) ** 2]
            text = describe_value(fmap.features[j], label, value)
            won, closed = divmod(key % (WEAK_EVIDENCE_DEALS + 1) ** 2, WEAK_EVIDENCE_DEALS + 1)
            if closed:
                text += f" ({_few_deals_note(won, closed)})"
            texts.append(text)
        json_values = [_json_value(v) for v in first]
        values[at] = np.asarray(json_values, dtype=object)[codes + 1]
        described[at] = np.asarray(texts, dtype=object)[inverse]
    return values.tolist(), described.tolist()


PAST_DEAL_FEATURES = frozenset(
    {"prior_won", "prior_lost", "prior_win_rate", "revenue_won", "days_since_last_won"}
)
"""Features whose figure rests on the account's closed deals (open deals are not evidence)."""
WEAK_EVIDENCE_DEALS = 2
"""A driver quoting past deals says so when the account has at most this many."""


def _few_deals(
    features: pd.DataFrame, rows: np.ndarray, reps: np.ndarray, fmap: FieldMap
) -> np.ndarray:
    """Per driver, (deals won, closed deals) when it quotes a past-deal figure that rests on
    1 to ``WEAK_EVIDENCE_DEALS`` closed deals, else (0, 0); shape (drivers, 2), int."""
    out = np.zeros((len(rows), 2), dtype=np.int64)
    if not {"prior_won", "prior_lost"} <= set(features.columns.tolist()) or len(rows) == 0:
        return out
    quotes = np.array([name in PAST_DEAL_FEATURES for name in fmap.features], dtype=bool)[reps]
    won = features["prior_won"].to_numpy(dtype=float, na_value=np.nan)[rows]
    lost = features["prior_lost"].to_numpy(dtype=float, na_value=np.nan)[rows]
    closed = np.nan_to_num(won) + np.nan_to_num(lost)
    weak = quotes & (closed >= 1) & (closed <= WEAK_EVIDENCE_DEALS)
    out[weak, 0] = np.nan_to_num(won[weak]).astype(np.int64)
    out[weak, 1] = closed[weak].astype(np.int64)
    return out


def _few_deals_note(won: int, closed: int) -> str:
    """E.g. 'won 1 of 1 past deals: a single deal, weak evidence'."""
    many = "a single deal" if closed == 1 else f"only {closed} deals"
    return f"won {won} of {closed} past deals: {many}, weak evidence"


# ------------------------------------------------------------------------ tier sentences


def _rank_phrase(assignment: TierAssignment, i: int, pct: float) -> str:
    if assignment.rank is not None:
        return f"rank {int(assignment.rank[i]):,} of {assignment.n_population:,}"
    top = max(1.0, math.ceil((1 - pct) * 100))
    return f"top {top:.0f} % of the reference list ({assignment.as_of})"


def _cut_phrase(
    tier: int, cutoff: float | None, ev_cut: float, icp: float, by_ev: bool, expected: str
) -> str:
    if cutoff is None:
        return f"Tier {tier} reached by nobody"
    if not by_ev:
        return f"Tier {tier} cut-off priority {cutoff:.3f}"
    if math.isnan(ev_cut):
        return f"Tier {tier} out of reach by {expected} at ICP fit {icp:.0f}"
    return f"Tier {tier} cut-off {fmt_money(ev_cut)}"


def tier_texts(
    assignment: TierAssignment,
    priority: ArrayLike,
    expected_value: ArrayLike,
    icp_fit: ArrayLike,
    evidence: ArrayLike,
    icp_missed: Sequence[Sequence[str]] | None,
    reference_ev: ArrayLike,
    policy: TierPolicy,
    *,
    words: EffectWords = DEAL_WORDS,
) -> tuple[list[str], list[str]]:
    """(tier rule per account, what would move it up a tier per account).

    The cut-offs are priorities; they are shown as the expected value that reaches them at the
    account's own ICP fit, so a rep reads "Tier 1 cut-off $180k" rather than "0.71". The
    expected value is named as ``words.expected`` says.
    """
    ev_array = np.asarray(expected_value, dtype=np.float64).reshape(-1)
    fit_array = np.asarray(icp_fit, dtype=np.float64).reshape(-1)
    weights = policy.weights
    by_ev = weights.expected_value > 0
    c1, c2 = assignment.tier1_cutoff, assignment.tier2_cutoff
    inf = float("inf")
    ev_c1 = ev_needed(inf if c1 is None else c1, fit_array, reference_ev, weights).tolist()
    ev_c2 = ev_needed(inf if c2 is None else c2, fit_array, reference_ev, weights).tolist()
    icp_c1 = icp_needed(inf if c1 is None else c1, ev_array, reference_ev, weights).tolist()
    icp_c2 = icp_needed(inf if c2 is None else c2, ev_array, reference_ev, weights).tolist()
    pct = ev_percentile(ev_array, reference_ev).tolist()
    expected = words.expected[:1].upper() + words.expected[1:]
    min_fit, min_ev = policy.min_icp_fit_tier1, policy.min_evidence_tier1
    cuts: dict[str, list[float]] = {
        # For the hint: the expected value Tier 1 needs once the ICP fit meets its minimum.
        "ev1": ev_needed(
            inf if c1 is None else c1, np.maximum(fit_array, min_fit), reference_ev, weights
        ).tolist(),
        "ev2": ev_c2,
        "icp1": icp_c1,
        "icp2": icp_c2,
    }
    rules: list[str] = []
    hints: list[str] = []
    # Python floats: indexed and formatted row by row, several times faster than numpy's.
    prio: list[float] = np.asarray(priority, dtype=np.float64).reshape(-1).tolist()
    ev: list[float] = ev_array.tolist()
    fit: list[float] = fit_array.tolist()
    evid: list[float] = np.asarray(evidence, dtype=np.float64).reshape(-1).tolist()
    tiers = np.asarray(assignment.tier).tolist()
    for i in range(len(prio)):
        tier = int(tiers[i])
        parts = [f"{expected} {fmt_money(ev[i])}, {_rank_phrase(assignment, i, pct[i])}"]
        if tier <= 2:
            parts.append(_cut_phrase(1, c1, ev_c1[i], fit[i], by_ev, words.expected))
        if tier >= 2:
            parts.append(_cut_phrase(2, c2, ev_c2[i], fit[i], by_ev, words.expected))
        text = ", ".join(parts)
        if by_ev:
            # The cut-offs are priorities; in money they depend on the account's own ICP fit.
            text += f" (at ICP fit {fit[i]:.0f})"
        if tier == 1:
            text += f"; ICP fit {fit[i]:.0f} >= {min_fit:.0f}"
        rule = assignment.rule[i]
        if rule != RULE_PRIORITY:
            reached = int(assignment.by_priority[i])
            held = []
            if reached == 1 and fit[i] < min_fit:
                held.append(f"ICP fit {fit[i]:.0f} < {min_fit:.0f} needed for Tier 1")
            need = min_ev if reached == 1 else min_ev / 2
            if evid[i] < need:
                held.append(
                    f"too little known for Tier {reached} (evidence {evid[i]:.2f} < {need:.2f})"
                )
            text += f"; priority reaches Tier {reached} but " + " and ".join(held)
        rules.append(text)
        hints.append(
            _next_tier_hint(
                tier, i, assignment, prio, ev, fit, evid, icp_missed, policy, cuts, by_ev, words
            )
        )
    return rules, hints


def _next_tier_hint(
    tier: int,
    i: int,
    assignment: TierAssignment,
    prio: Sequence[float],
    ev: Sequence[float],
    fit: Sequence[float],
    evid: Sequence[float],
    icp_missed: Sequence[Sequence[str]] | None,
    policy: TierPolicy,
    cuts: dict[str, list[float]],
    by_ev: bool,
    words: EffectWords,
) -> str:
    if tier == 1:
        return "Already in the top tier"
    target = tier - 1
    needs: list[str] = []
    need_evidence = policy.min_evidence_tier1 if target == 1 else policy.min_evidence_tier1 / 2
    if evid[i] < need_evidence:
        needs.append(
            f"more known about the account: evidence {need_evidence:.2f} (now {evid[i]:.2f}; "
            "fill in firmographics, log deals and engagement)"
        )
    cutoff = assignment.tier1_cutoff if target == 1 else assignment.tier2_cutoff
    gated_by_icp = target == 1 and fit[i] < policy.min_icp_fit_tier1
    floor = policy.min_icp_fit_tier1 if target == 1 else 0.0
    missed = list(icp_missed[i]) if icp_missed is not None and gated_by_icp else []
    missed_text = f"; missed: {', '.join(missed[:3])}" if missed else ""
    if cutoff is None:
        needs.append(f"a seat: nobody holds Tier {target} under the current policy")
    elif prio[i] >= cutoff and gated_by_icp:
        needs.append(f"ICP fit {floor:.0f} (now {fit[i]:.0f}{missed_text})")
    elif prio[i] < cutoff:
        # Either raise the ICP fit alone (to at least the Tier 1 minimum), or the expected
        # value at the ICP fit the tier requires anyway.
        icp_cut = cuts[f"icp{target}"][i]
        ev_cut = cuts[f"ev{target}"][i]
        options = []
        if not math.isnan(icp_cut) and max(icp_cut, floor) > fit[i]:
            options.append(f"ICP fit {max(icp_cut, floor):.0f} (now {fit[i]:.0f}{missed_text})")
        if by_ev and not math.isnan(ev_cut) and ev_cut > ev[i]:
            money = f"{words.expected} {fmt_money(ev_cut)} (now {fmt_money(ev[i])})"
            options.append(f"ICP fit {floor:.0f} and {money}" if gated_by_icp else money)
        if not options:
            options.append(f"priority {cutoff:.3f} (now {prio[i]:.3f})")
        needs.append(" or ".join(options))
    elif not needs:
        needs.append(
            f"a seat: it ties the Tier {target} cut-off and the last seat went to an account "
            "listed earlier"
        )
    return f"For Tier {target}: " + "; ".join(needs)


def fmt_chance(share: float) -> str:
    """A probability for a rep: '34 %', and '<1 %' / '>99 %' rather than a flat 0 or 100."""
    if not math.isfinite(share):
        return "unknown"
    if 0 < share < 0.005:
        return "<1 %"
    if 0.995 < share < 1:
        return ">99 %"
    return fmt_percent(share)


def chance_headlines(p: ArrayLike, p_typical: ArrayLike, horizon: str) -> list[str]:
    """Per account, e.g. "likely to buy in the next 6 months: 34 % (a typical account: 9 %)".

    ``p`` is the calibrated probability that the account buys (books a won deal) within the
    horizon, ``horizon`` how a rep says it ("6 months", "two quarters"), and ``p_typical`` the
    probability of a typical account (one value or one per account): the base the drivers'
    points are measured from, so that they add up from it to ``p``."""
    label = horizon.strip()
    if not label:
        raise ValueError("horizon: give the horizon as a rep says it, e.g. '6 months'")
    prob = np.asarray(p, dtype=np.float64).reshape(-1)
    typical = np.broadcast_to(np.asarray(p_typical, dtype=np.float64).reshape(-1), prob.shape)
    return [
        f"likely to buy in the next {label}: {fmt_chance(a)} (a typical account: {fmt_chance(b)})"
        for a, b in zip(prob.tolist(), typical.tolist(), strict=True)
    ]


def value_headlines(low: ArrayLike, high: ArrayLike) -> list[str]:
    """Per account, e.g. "if it buys: $120k-$410k" from the revenue range if it buys (P10 and
    P90); "about $120k" when both ends read alike, "unknown" when neither is known."""
    lo = np.asarray(low, dtype=np.float64).reshape(-1)
    hi = np.broadcast_to(np.asarray(high, dtype=np.float64).reshape(-1), lo.shape)
    out = []
    for a, b in zip(np.fmin(lo, hi).tolist(), np.fmax(lo, hi).tolist(), strict=True):
        first, last = fmt_money(a), fmt_money(b)
        if first == last:
            out.append(
                "if it buys: unknown" if first == "unknown" else f"if it buys: about {first}"
            )
        else:
            out.append(f"if it buys: {first}-{last}")
    return out


def headlines(
    p: ArrayLike, p_typical: ArrayLike, low: ArrayLike, high: ArrayLike, horizon: str
) -> list[list[str]]:
    """Per account, the two headlines a rep reads first: the chance to buy within the horizon
    (:func:`chance_headlines`) and the revenue if it buys (:func:`value_headlines`)."""
    chance = chance_headlines(p, p_typical, horizon)
    value = value_headlines(low, high)
    if len(chance) != len(value):
        raise ValueError(f"headlines: {len(chance)} probabilities but {len(value)} revenue ranges")
    return [[a, b] for a, b in zip(chance, value, strict=True)]


def summaries(
    tier: ArrayLike,
    p_win: ArrayLike,
    expected_value: ArrayLike,
    driver_lists: Sequence[Sequence[dict[str, Any]]],
    rule: Sequence[str],
    positives: int = 2,
    negatives: int = 1,
    *,
    headline: Sequence[Sequence[str]] | None = None,
    words: EffectWords = DEAL_WORDS,
) -> list[str]:
    """One line per account for CRM write-back, e.g. "Tier 1 — win chance 34 %, expected
    value $412k. Up: Meetings in the last 90 days: 4 (+9 pts). Down: No deals won with us yet
    (−3 pts)". With ``headline`` (see :func:`headlines`) the line opens with it instead of the
    chance: "Tier 1 — likely to buy in the next 6 months: 34 % (a typical account: 9 %); if it
    buys: $120k-$410k; expected revenue $96k. Up: ..."."""
    tiers = np.asarray(tier).reshape(-1).tolist()
    p = np.asarray(p_win, dtype=np.float64).reshape(-1).tolist()
    ev = np.asarray(expected_value, dtype=np.float64).reshape(-1).tolist()
    out = []
    for i, items in enumerate(driver_lists):
        if headline is not None:
            opening = "; ".join(headline[i]) + "; "
        else:
            opening = f"{words.chance} {fmt_percent(p[i])}, "
        text = f"Tier {int(tiers[i])} {DASH} {opening}{words.expected} {fmt_money(ev[i])}"
        for direction, label, count in (
            ("positive", "Up", positives),
            ("negative", "Down", negatives),
        ):
            chosen = [d for d in items if d["direction"] == direction][:count]
            if chosen:
                up = direction == "positive"
                text += f". {label}: " + "; ".join(
                    f"{d['value_text']} "
                    f"({_effect_short(d['effect_points'], d['deal_size_pct'], up, words)})"
                    for d in chosen
                )
        if rule[i] != RULE_PRIORITY:
            text += (
                ". Held back by the "
                + (
                    "ICP fit"
                    if rule[i] == "icp_gate"
                    else "evidence"
                    if rule[i] == "evidence_gate"
                    else "ICP fit and evidence"
                )
                + " gate"
            )
        out.append(text)
    return out


def playbooks(tier: ArrayLike, playbook: Playbook) -> list[list[str]]:
    by_tier = {t: list(playbook.for_tier(t)) for t in (1, 2, 3)}
    return [by_tier[int(t)] for t in np.asarray(tier).reshape(-1)]


def reasons(
    features: pd.DataFrame,
    win_contrib: pd.DataFrame,
    value_contrib: pd.DataFrame,
    **kwargs: Any,
) -> pd.DataFrame:
    """Everything a rep reads, one row per account (index of ``features``): ``reasons``
    (structured drivers), ``reason_summary`` (one line), ``tier_rule_text``, ``next_tier_hint``,
    ``playbook``. Keyword arguments as for :func:`reason_columns`."""
    columns = reason_columns(features, win_contrib, value_contrib, **kwargs)
    return pd.DataFrame(columns, index=features.index)


def reason_columns(
    features: pd.DataFrame,
    win_contrib: pd.DataFrame,
    value_contrib: pd.DataFrame,
    *,
    p_win: ArrayLike,
    p_base: ArrayLike,
    expected_value: ArrayLike,
    icp_fit: ArrayLike,
    icp_missed: Sequence[Sequence[str]] | None,
    evidence: ArrayLike,
    priority: ArrayLike,
    assignment: TierAssignment,
    reference_ev: ArrayLike,
    policy: TierPolicy,
    playbook: Playbook,
    top: int = 3,
    field_of: FieldOf | None = None,
    horizon: str | None = None,
    value_low: ArrayLike | None = None,
    value_high: ArrayLike | None = None,
    p_typical: ArrayLike | None = None,
    words: EffectWords | None = None,
) -> dict[str, list[Any]]:
    """The columns of :func:`reasons` as plain lists, one value per account: ``reasons``
    (structured drivers), ``reason_summary``, ``tier_rule_text``, ``next_tier_hint``,
    ``playbook``.

    ``p_win`` and ``p_base`` are the probability part (the calibrated probability and its value
    at the model's base score), ``win_contrib`` and ``value_contrib`` the two models'
    contributions. With ``horizon`` (e.g. "6 months") the target is the account's chance to buy
    within it: a ``headline`` column is added (two texts per account, see :func:`headlines`),
    the summary opens with it, and the words default to ``ACCOUNT_WORDS``. ``value_low`` and
    ``value_high`` (the P10 and P90 of revenue if it buys) are then required; ``p_typical``
    defaults to ``p_base``. Without ``horizon`` the output is as for an open deal."""
    if words is None:
        words = DEAL_WORDS if horizon is None else ACCOUNT_WORDS
    headline = None
    if horizon is not None:
        if value_low is None or value_high is None:
            raise ValueError(
                "reason_columns: with a horizon, pass value_low and value_high (the P10 and "
                "P90 of revenue if the account buys) for the 'if it buys' headline"
            )
        typical = p_base if p_typical is None else p_typical
        headline = headlines(p_win, typical, value_low, value_high, horizon)
    driver_lists = drivers(
        features,
        win_contrib,
        value_contrib,
        p_win,
        p_base,
        top=top,
        field_of=field_of,
        words=words,
    )
    rules, hints = tier_texts(
        assignment,
        priority,
        expected_value,
        icp_fit,
        evidence,
        icp_missed,
        reference_ev,
        policy,
        words=words,
    )
    columns: dict[str, list[Any]] = {}
    if headline is not None:
        columns["headline"] = headline
    columns.update(
        reasons=driver_lists,
        reason_summary=summaries(
            assignment.tier,
            p_win,
            expected_value,
            driver_lists,
            list(assignment.rule),
            headline=headline,
            words=words,
        ),
        tier_rule_text=rules,
        next_tier_hint=hints,
        playbook=playbooks(assignment.tier, playbook),
    )
    return columns
