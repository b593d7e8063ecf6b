"""Point-in-time features: one pure function for training and for scoring.

``build_features(tables, requests, config)`` answers, for every request (an account and an
``as_of`` timestamp), "what did we know about this account just before ``as_of``?". Training
asks for every closed deal as of its ``created_at`` (``training_requests``); scoring asks for
every account as of one date (``scoring_requests``). Because both go through the same code,
training and serving cannot drift apart, and a deal's features equal its account's features
scored on the day the deal was created.

What "before" means, exactly:

- Activities count when ``occurred_at < as_of``: an activity on ``as_of`` itself or later never
  counts. A window of ``d`` days is ``[as_of - d days, as_of)``.
- An earlier deal's outcome is known from ``max(created_at, closed_at)`` on (a close date
  before the creation date is dirt, not knowledge). It counts when that moment is strictly
  before ``as_of``, so a deal never sees its own outcome, amount or close date (its own
  ``created_at`` equals ``as_of``), nor a deal that closes on ``as_of``.
- Open pipeline at ``as_of``: deals created before ``as_of`` whose outcome was not yet known.
- The global win rate behind the smoothed prior win rate is the rate of the deals whose outcome
  was known before ``as_of`` (Laplace-smoothed so that it is defined on the first day), never
  the rate over the whole history: the whole history would tell early deals about later years.

The features, in column order:

- account columns under their canonical names: ``FeatureConfig.categorical`` (plain strings),
  ``numeric``, ``technographics`` (1.0 / 0.0 / NaN, read by ``features.values.yes_no`` as the
  ICP reads them) and ``extra``, those present in the data;
- per activity type present in the data (known types first): ``<type>_<d>d`` summed ``count``
  over each window of ``FeatureConfig.windows_days``; ``days_since_<type>`` (NaN if never);
  ``<type>_trend`` = log((count in the last T days + 1) / (per-T count in the 2T days
  before + 1)), T = ``trend_days``, positive when rising; and ``intent_topics_<d>d``, the
  distinct intent topics in the longest window. No activities table, no engagement columns;
- relationship history: ``prior_won``, ``prior_lost``, ``prior_win_rate`` (``prior_smoothing``
  pseudo-deals at the global rate; NaN only if the smoothing is 0 and there is no history),
  ``revenue_won``, ``days_since_last_won`` (NaN if none), ``open_deals``.

Firmographics, technographics and declared extra columns come from the accounts table, which
is a snapshot: they are as of the export, not as of each deal. That is the usual CRM situation;
a field that is only filled once an account has bought (e.g. "customer since") is what the
leakage audit looks for, which is why training runs it before fitting.

Deal-only fields (``product``, ``source``) are not features unless listed in
``FeatureConfig.deal_fields`` (empty by default): scoring an account has no deal, so a model
that learned from them would see something at serving time it never saw in training. When they
are listed, a request supplies them as its own columns (scoring) or through its
``opportunity_id`` (training).

Everything is vectorised: events are sorted once by (account, time) and every window, recency
and history count is one ``np.searchsorted`` against cumulative sums.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from features.config import FeatureConfig
from features.customers import customer_features, is_customer_column
from features.distinct import positions
from features.tables import ACTIVITY_TYPES, POST_OUTCOME_FIELDS, Tables
from features.values import yes_no

ID_COLUMNS = ("account_id", "as_of")
INTENT_TYPE = "intent_surge"

# Relationship history: point in time by construction (see the module docstring), so the
# leakage audit does not refuse them for names like "won" or "lost".
HISTORY_FEATURES = (
    "prior_won",
    "prior_lost",
    "prior_win_rate",
    "revenue_won",
    "revenue_won_365d",
    "days_since_last_won",
    "open_deals",
)
# Carried beside the features for the output, never a model input: the amounts on deals still
# open at as_of. In an export, a deal's amount is often filled or corrected when it is won, so
# the amount of a deal that was open at a past date would tell the model its outcome.
CONTEXT_COLUMNS = ("open_amount",)

_DAY_NS = np.int64(86_400 * 10**9)

_ACTIVITY_LABELS = {
    "web_visit": "Web visits",
    "content_download": "Content downloads",
    "email_click": "Email clicks",
    "meeting": "Meetings",
    "event": "Event attendance",
    "intent_surge": "Intent surges",
}
_FIELD_LABELS = {
    "industry": "Industry",
    "employees": "Company size (employees)",
    "annual_revenue": "Annual revenue",
    "founded_year": "Founded",
    "country": "Country",
    "region": "Region",
    "territory": "Territory",
    "owner": "Account owner",
    "product": "Product",
    "source": "Lead source",
    "tech_cloud": "Uses a cloud platform",
    "tech_crm": "Uses a CRM",
    "tech_marketing_automation": "Uses marketing automation",
    "tech_data_warehouse": "Uses a data warehouse",
}
_HISTORY_FIELDS = {
    "prior_won": ("history", "Past deals with us"),
    "prior_lost": ("history", "Past deals with us"),
    "prior_win_rate": ("history", "Past deals with us"),
    "revenue_won": ("history", "Past deals with us"),
    "revenue_won_365d": ("history", "Past deals with us"),
    "days_since_last_won": ("history", "Past deals with us"),
    "open_deals": ("pipeline", "Open deals"),
}
_WINDOW = re.compile(r"^(?P<field>.+)_(?P<days>\d+)d$")
_TOPICS = re.compile(r"^intent_topics_(?P<days>\d+)d$")


# --------------------------------------------------------------------------------- requests


def training_requests(opportunities: pd.DataFrame) -> pd.DataFrame:
    """Every closed (won or lost) deal as of its creation: ``opportunity_id``, ``account_id``,
    ``as_of`` (= ``created_at``), ``won`` (0/1) and ``amount`` (NaN unless won).

    Sorted by ``as_of`` (then ``opportunity_id``) so that a time-based split is a slice.
    """
    closed = opportunities[opportunities["outcome"].isin(["won", "lost"])]
    won = (closed["outcome"] == "won").to_numpy()
    amount = (
        closed["amount"].to_numpy(dtype=float, na_value=np.nan)
        if "amount" in closed
        else np.full(len(closed), np.nan)
    )
    out = pd.DataFrame(
        {
            "opportunity_id": closed["opportunity_id"].to_numpy(dtype=object),
            "account_id": closed["account_id"].to_numpy(dtype=object),
            "as_of": pd.to_datetime(closed["created_at"]).to_numpy(dtype="datetime64[ns]"),
            "won": won.astype(np.int64),
            "amount": np.where(won, amount, np.nan),
        }
    )
    return out.sort_values(["as_of", "opportunity_id"], kind="stable").reset_index(drop=True)


def scoring_requests(accounts: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Every account as of one moment (usually ``Tables.end_of_data()`` or the configured date)."""
    as_of = pd.Timestamp(as_of)
    return pd.DataFrame(
        {
            "account_id": accounts["account_id"].to_numpy(dtype=object),
            "as_of": np.full(len(accounts), as_of.to_datetime64().astype("datetime64[ns]")),
        }
    )


# --------------------------------------------------------------------------------- features


def build_features(
    tables: Tables,
    requests: pd.DataFrame,
    config: FeatureConfig,
    *,
    global_deals: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Features of each request's account as known strictly before the request's ``as_of``.

    One row per request, same order and index; columns ``account_id``, ``as_of``, then the
    features: account columns under their canonical names (categoricals as plain strings,
    NaN when unknown), then deal fields (only those in ``config.deal_fields``), engagement and
    relationship history (floats).

    ``global_deals`` (see :func:`global_deal_counts`) stands in for the deals of every account
    when ``tables`` hold only some accounts (one partition of a distributed run), so that
    ``prior_win_rate`` is smoothed towards the same global rate; the requests must then share
    one as_of.
    """
    _check_requests(requests)
    account_ids = pd.Index(tables.accounts["account_id"].astype(str))
    if not account_ids.is_unique:
        raise ValueError("accounts.account_id must be unique to build features")
    codes = positions(account_ids, requests["account_id"])
    times = _as_ns(requests["as_of"])
    # Searching sorted events with requests sorted the same way keeps memory access local
    # (several times faster on millions of rows); results are put back in request order.
    order = np.lexsort((times, codes))
    req_codes, as_of = codes[order], times[order]
    timed: dict[str, np.ndarray] = {}
    if tables.activities is not None:
        timed.update(_engagement_features(tables.activities, account_ids, req_codes, as_of, config))
    if global_deals is not None and len(np.unique(times)) > 1:
        raise ValueError("global_deals: give it only for requests that share one as_of")
    timed.update(
        _history_features(tables.opportunities, account_ids, req_codes, as_of, config, global_deals)
    )
    back = np.empty_like(order)
    back[order] = np.arange(len(order))

    parts: dict[str, np.ndarray] = {
        "account_id": requests["account_id"].to_numpy(dtype=object),
        "as_of": times.view("datetime64[ns]"),
    }
    parts.update(_account_features(tables.accounts, codes, config))
    parts.update(_deal_fields(tables.opportunities, requests, config))
    parts.update({name: values[back] for name, values in timed.items()})
    parts.update(customer_features(tables, account_ids, codes, times, parts))
    # Object columns stay object: pandas would otherwise infer its string dtype, and the
    # contract promises plain strings.
    return pd.DataFrame(
        {
            name: pd.Series(values, index=requests.index, dtype=object)
            if values.dtype == object
            else values
            for name, values in parts.items()
        },
        index=requests.index,
    )


def account_features(
    accounts: pd.DataFrame, as_of: pd.Timestamp, config: FeatureConfig
) -> pd.DataFrame:
    """Features of accounts known only by their own fields (a new account in an online
    request): no deals and no activities with us, as of ``as_of``. The same builder as every
    other path, so the fields are cleaned and typed exactly as training saw them."""
    no_deals = pd.DataFrame(
        {
            "opportunity_id": pd.Series(dtype=object),
            "account_id": pd.Series(dtype=object),
            "created_at": pd.Series(dtype="datetime64[ns]"),
            "closed_at": pd.Series(dtype="datetime64[ns]"),
            "outcome": pd.Series(dtype=object),
            "amount": pd.Series(dtype=float),
        }
    )
    tables = Tables(accounts=accounts, opportunities=no_deals)
    return build_features(tables, scoring_requests(accounts, as_of), config)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The model inputs: every column but the request's ``account_id`` and ``as_of``
    (and the training labels, should they ride along)."""
    skip = {*ID_COLUMNS, *CONTEXT_COLUMNS, "opportunity_id", "won"}
    return [c for c in frame.columns if c not in skip and not is_customer_column(c)]


def categorical_columns(frame: pd.DataFrame, config: FeatureConfig) -> list[str]:
    """Feature columns the model treats as categories: the configured categoricals and any
    non-numeric extra or deal field."""
    declared = set(config.categorical) | set(config.extra) | set(config.deal_fields)
    return [
        c
        for c in feature_columns(frame)
        if c in set(config.categorical)
        or (c in declared and not pd.api.types.is_numeric_dtype(frame[c]))
    ]


def feature_field(feature_name: str) -> tuple[str, str]:
    """(business field key, label a rep knows) of a feature, so that explanations can group
    e.g. ``web_visit_30d``, ``web_visit_90d`` and ``days_since_web_visit`` as "Web visits"."""
    if feature_name in _HISTORY_FIELDS:
        return _HISTORY_FIELDS[feature_name]
    if feature_name in _FIELD_LABELS:
        return feature_name, _FIELD_LABELS[feature_name]
    if _TOPICS.match(feature_name):
        return INTENT_TYPE, _ACTIVITY_LABELS[INTENT_TYPE]
    activity = None
    if feature_name.startswith("days_since_"):
        activity = feature_name.removeprefix("days_since_")
    elif feature_name.endswith("_trend"):
        activity = feature_name.removesuffix("_trend")
    elif match := _WINDOW.match(feature_name):
        activity = match["field"]
    if activity is not None:
        return activity, _ACTIVITY_LABELS.get(activity, _humanise(activity))
    if feature_name.startswith("tech_"):
        tool = feature_name.removeprefix("tech_").replace("_", " ").strip()
        # "tech_uses_sap" reads "Uses sap", not "Uses uses sap".
        if tool.casefold().startswith(("uses ", "has ")):
            return feature_name, tool.capitalize()
        return feature_name, "Uses " + tool
    return feature_name, _humanise(feature_name)


def evidence_score(features: pd.DataFrame) -> pd.Series:
    """How much we know about each account, 0-1: the share of key firmographics known (weight
    0.4), any closed deal history (0.3) and any engagement or open deal (0.3). Parts whose
    columns the frame lacks (e.g. no activities in the export) are left out and the weights
    renormalised. A cold-start account with known firmographics scores 0.4."""
    parts: list[tuple[float, np.ndarray]] = []
    key = [c for c in ("industry", "employees", "annual_revenue", "region") if c in features]
    if key:
        known = np.column_stack([_populated(features[c]) for c in key])
        parts.append((0.4, known.mean(axis=1)))
    if {"prior_won", "prior_lost"} <= set(features.columns.tolist()):
        deals = features["prior_won"].fillna(0) + features["prior_lost"].fillna(0)
        parts.append((0.3, (deals.to_numpy() > 0).astype(float)))
    engagement = [
        c for c in features.columns.tolist() if _WINDOW.match(c) and c not in _FIELD_LABELS
    ]
    if "open_deals" in features:
        engagement.append("open_deals")
    if engagement:
        # Column by column: one frame of the columns costs more than the test on one account.
        any_touch = np.zeros(len(features), dtype=bool)
        for c in engagement:
            any_touch |= features[c].to_numpy(dtype=float, na_value=np.nan) > 0
        parts.append((0.3, any_touch.astype(float)))
    if not parts:
        return pd.Series(0.0, index=features.index, name="evidence")
    total = sum(w for w, _ in parts)
    score = sum(w * v for w, v in parts) / total
    return pd.Series(np.clip(score, 0.0, 1.0), index=features.index, name="evidence")


# ---------------------------------------------------------------------------- internals


class _Timeline:
    """Events sorted by (key, time), answering "how many events of key k before time t" with
    one ``searchsorted`` for any number of queries.

    Times are replaced by their rank among the distinct event times, so (key, rank) packs into
    one int64 exactly, whatever the time resolution. Keys below zero (unknown accounts) find
    no events.
    """

    def __init__(self, keys: np.ndarray, times: np.ndarray) -> None:
        # Dense ranks from one sort (cheaper than np.unique + searchsorted on millions of rows);
        # equal times get one rank whatever their order, so the sort need not be stable.
        by_time = np.argsort(times)
        sorted_times = times[by_time]
        new = np.ones(len(times), dtype=bool)
        new[1:] = sorted_times[1:] != sorted_times[:-1]
        self.grid = sorted_times[new]
        rank = np.empty(len(times), dtype=np.int64)
        rank[by_time] = np.cumsum(new) - 1
        self.stride = np.int64(len(self.grid) + 1)
        packed = keys.astype(np.int64) * self.stride + rank
        self.order = np.argsort(packed, kind="stable")
        self.packed = packed[self.order]
        self.times = times[self.order]

    def rank(self, times: np.ndarray) -> np.ndarray:
        """How many distinct event times lie strictly before each of ``times``."""
        return np.searchsorted(self.grid, times, side="left")

    def before(
        self, keys: np.ndarray, times: np.ndarray, rank: np.ndarray | None = None
    ) -> np.ndarray:
        """Position in sorted order of the first event of ``keys`` at or after ``times``
        (``rank`` = ``self.rank(times)`` when the caller reuses it across keys)."""
        if rank is None:
            rank = self.rank(times)
        return np.searchsorted(self.packed, keys.astype(np.int64) * self.stride + rank, "left")

    def start(self, keys: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.packed, keys.astype(np.int64) * self.stride, "left")

    def cumulative(self, values: np.ndarray) -> np.ndarray:
        """Prefix sums in sorted order with a leading 0: sum over [i, j) is c[j] - c[i]."""
        return np.concatenate([[0.0], np.cumsum(values[self.order], dtype=float)])

    def days_since_last(
        self, keys: np.ndarray, times: np.ndarray, pos: np.ndarray | None = None
    ) -> np.ndarray:
        """Days from the last event of each key strictly before ``times``; NaN when none."""
        if pos is None:
            pos = self.before(keys, times)
        has = pos > self.start(keys)
        last = self.times[np.maximum(pos - 1, 0)] if len(self.times) else np.zeros(len(pos))
        return np.where(has, (times - last) / _DAY_NS, np.nan)


class _EventCounts(Protocol):
    """Per request key (-1: none), the weighted events in a window before the request's
    moment, and the days since the last event before it."""

    def total(self, req_keys: np.ndarray, start_days: int, end_days: int) -> np.ndarray:
        """Sum over the key's events at ``as_of - start_days <= t < as_of - end_days``."""
        ...

    def days_since_last(self, req_keys: np.ndarray) -> np.ndarray:
        """Days from the key's last event strictly before ``as_of``; NaN when none."""
        ...


class _AtEachMoment:
    """:class:`_EventCounts` for requests at any moments (training: one per deal): a
    :class:`_Timeline` and prefix sums, each window boundary ranked once."""

    def __init__(
        self,
        keys: np.ndarray,
        times: np.ndarray,
        weights: np.ndarray,
        as_of: np.ndarray,
        boundaries: set[int],
    ) -> None:
        self.timeline = _Timeline(keys, times)
        self.cum = self.timeline.cumulative(weights)
        self.as_of = as_of
        self.ranks = {d: self.timeline.rank(as_of - np.int64(d) * _DAY_NS) for d in boundaries}

    def total(self, req_keys: np.ndarray, start_days: int, end_days: int) -> np.ndarray:
        end = self.timeline.before(req_keys, self.as_of, self.ranks[end_days])
        return (
            self.cum[end]
            - self.cum[self.timeline.before(req_keys, self.as_of, self.ranks[start_days])]
        )

    def days_since_last(self, req_keys: np.ndarray) -> np.ndarray:
        return self.timeline.days_since_last(req_keys, self.as_of)


class _AtOneMoment:
    """:class:`_EventCounts` for requests all at one moment (scoring the list), no sort and
    one pass over the events: the window boundaries cut the time before the moment into bands,
    each event falls in one, a weighted count per (key, band) is one ``bincount``, and a window
    is a run of bands."""

    def __init__(
        self,
        keys: np.ndarray,
        times: np.ndarray,
        weights: np.ndarray,
        n_keys: int,
        as_of: np.ndarray,
        boundaries: set[int],
    ) -> None:
        self.keys, self.times = keys, times
        self.n_keys = n_keys
        self.as_of = as_of
        self.moment = np.int64(as_of[0])
        days = sorted(boundaries, reverse=True)  # the widest first: the edges ascend in time
        self.edge = {d: i for i, d in enumerate(days)}
        edges = self.moment - np.asarray(days, dtype=np.int64) * _DAY_NS
        # Band b holds the events at edges[b - 1] <= t < edges[b]: band 0 is before the widest
        # window, the last band at or after the moment.
        bands = len(edges) + 1
        slot = keys.astype(np.int64) * bands
        slot += np.searchsorted(edges, times, side="right")
        self.bands = np.bincount(slot, weights=weights, minlength=n_keys * bands).reshape(
            n_keys, bands
        )
        self.last: np.ndarray | None = None

    def total(self, req_keys: np.ndarray, start_days: int, end_days: int) -> np.ndarray:
        first, stop = self.edge[start_days] + 1, self.edge[end_days] + 1
        if not self.n_keys:
            return np.zeros(len(req_keys))
        sums = self.bands[np.maximum(req_keys, 0), first:stop].sum(axis=1)
        return np.where(req_keys >= 0, sums, 0.0)

    def days_since_last(self, req_keys: np.ndarray) -> np.ndarray:
        never = np.iinfo(np.int64).min
        if self.last is None:  # every key's last event, once for all activity types
            before = self.times < self.moment
            self.last = np.full(self.n_keys, never, dtype=np.int64)
            np.maximum.at(self.last, self.keys[before], self.times[before])
        found = self.last[np.maximum(req_keys, 0)] if self.n_keys else np.full(len(req_keys), never)
        has = (req_keys >= 0) & (found > never)
        return np.where(has, (self.as_of - found) / _DAY_NS, np.nan)


def _check_requests(requests: pd.DataFrame) -> None:
    missing = [c for c in ID_COLUMNS if c not in requests]
    if missing:
        raise ValueError(f"requests: missing column(s) {missing}; need 'account_id' and 'as_of'")
    if requests["as_of"].isna().any():
        bad = requests.loc[requests["as_of"].isna(), "account_id"].head(3).tolist()
        raise ValueError(f"requests.as_of: empty for some requests (e.g. accounts {bad})")


def _as_ns(values: pd.Series) -> np.ndarray:
    """Timestamps as int64 nanoseconds, time zones dropped (NaT becomes the int64 minimum;
    callers filter it)."""
    stamps = pd.to_datetime(pd.Series(values))
    if isinstance(stamps.dtype, pd.DatetimeTZDtype):
        stamps = stamps.dt.tz_convert(None)
    return stamps.to_numpy(dtype="datetime64[ns]").view(np.int64)


def _humanise(name: str) -> str:
    return name.replace("_", " ").strip().capitalize()


def _slug(value: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(value).strip().lower()).strip("_") or "other"


def _populated(column: pd.Series) -> np.ndarray:
    """1.0 where the value is known: not missing and, printed, not blank."""
    if pd.api.types.is_numeric_dtype(column):
        return (~np.isnan(column.to_numpy(dtype=np.float64, na_value=np.nan))).astype(float)
    values = column.to_numpy(dtype=object)
    known = ~pd.isna(values)
    if known.any():
        values = values[known]
        if pd.api.types.infer_dtype(values, skipna=False) in ("string", "empty"):
            # Text repeats (industries, regions): test each distinct value once.
            codes, uniques = pd.factorize(values)
            filled = np.array([bool(u.strip()) for u in uniques] + [False], dtype=bool)[codes]
        else:
            filled = np.array([bool(str(v).strip()) for v in values], dtype=bool)
        known[known] = filled
    return known.astype(float)


def _as_feature(values: pd.Series) -> np.ndarray:
    """Numbers and booleans as float, anything else as categories."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return _as_category(values)


def _as_category(values: pd.Series) -> np.ndarray:
    """Plain strings (object dtype), NaN when unknown or blank."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    labels = np.array([str(u).strip() for u in uniques] + [""], dtype=object)
    text = labels[codes]  # code -1 picks the trailing "" (missing)
    text[text == ""] = np.nan
    return text


def _account_features(
    accounts: pd.DataFrame, req_codes: np.ndarray, config: FeatureConfig
) -> dict[str, np.ndarray]:
    columns = _dedupe([*config.categorical, *config.numeric, *config.technographics, *config.extra])
    present = [c for c in columns if c in accounts and c not in ID_COLUMNS]
    take = np.where(req_codes >= 0, req_codes, 0)
    unknown = req_codes < 0
    out: dict[str, np.ndarray] = {}
    for col in present:
        if col in config.categorical:
            values = _as_category(accounts[col])
        elif col in config.technographics:
            values = yes_no(accounts[col])
        else:
            values = _as_feature(accounts[col])
        feature = values[take] if len(accounts) else np.full(len(take), np.nan)
        if unknown.any():
            feature = feature.copy()
            feature[unknown] = np.nan
        out[col] = feature
    return out


def _dedupe(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _deal_fields(
    opportunities: pd.DataFrame, requests: pd.DataFrame, config: FeatureConfig
) -> dict[str, np.ndarray]:
    leaking = [f for f in config.deal_fields if f in POST_OUTCOME_FIELDS]
    if leaking:
        raise ValueError(
            f"features.deal_fields: {leaking} are only known after a deal's outcome, "
            "so they cannot be features"
        )
    out: dict[str, np.ndarray] = {}
    by_id = None
    if "opportunity_id" in requests:
        by_id = pd.Index(opportunities["opportunity_id"].astype(str)).get_indexer(
            pd.Index(requests["opportunity_id"].astype(str))
        )
    for field in config.deal_fields:
        if field in requests:
            out[field] = _as_feature(requests[field])
        elif by_id is not None and field in opportunities:
            values = _as_feature(opportunities[field])
            picked = values[np.where(by_id >= 0, by_id, 0)].copy() if len(values) else None
            if picked is None:
                picked = np.full(len(requests), np.nan)
            picked[by_id < 0] = np.nan
            out[field] = picked
        else:
            # A scoring request without the field: unknown, as LightGBM sees a missing value.
            out[field] = np.full(len(requests), np.nan)
    return out


def _engagement_features(
    activities: pd.DataFrame,
    account_ids: pd.Index,
    req_codes: np.ndarray,
    as_of: np.ndarray,
    config: FeatureConfig,
) -> dict[str, np.ndarray]:
    when = activities["occurred_at"]
    acc = positions(account_ids, activities["account_id"])
    times = _as_ns(when)
    keep = (acc >= 0) & when.notna().to_numpy()
    raw_codes, raw_types = pd.factorize(activities["type"])
    # Slug the few distinct labels, not the millions of rows; two labels may share a slug.
    slug_codes, slugs = pd.factorize(pd.Series([_slug(t) for t in raw_types], dtype=object))
    type_codes = np.where(raw_codes >= 0, slug_codes[raw_codes] if len(slug_codes) else 0, -1)
    keep &= type_codes >= 0
    names = [str(s) for s in slugs]
    # Known types first, in their documented order, then the export's own.
    ordered = [t for t in ACTIVITY_TYPES if t in names] + sorted(
        t for t in names if t not in ACTIVITY_TYPES
    )
    if not ordered:
        return {}
    n_types = np.int64(len(names))
    counts = (
        pd.to_numeric(activities["count"], errors="coerce").fillna(1).to_numpy(dtype=float)
        if "count" in activities
        else np.ones(len(activities))
    )
    keys = acc[keep] * n_types + type_codes[keep]
    windows = sorted(set(config.windows_days))
    trend = config.trend_days
    boundaries = {0, *windows, trend, 3 * trend}
    counter: _EventCounts
    if len(as_of) and (as_of == as_of[0]).all():
        # Scoring: every account as of one moment.
        counter = _AtOneMoment(
            keys,
            times[keep],
            counts[keep],
            int(len(account_ids) * n_types),
            as_of,
            boundaries,
        )
    else:
        counter = _AtEachMoment(keys, times[keep], counts[keep], as_of, boundaries)

    out: dict[str, np.ndarray] = {}
    for name in ordered:
        req_keys = np.where(req_codes >= 0, req_codes * n_types + names.index(name), -1)
        for days in windows:
            out[f"{name}_{days}d"] = counter.total(req_keys, days, 0)
        out[f"days_since_{name}"] = counter.days_since_last(req_keys)
        recent = counter.total(req_keys, trend, 0)
        before = counter.total(req_keys, 3 * trend, trend)
        # Log ratio of the last period's count to the average period's count before it; +1
        # keeps it finite and pulls sparse accounts towards "flat" (0).
        out[f"{name}_trend"] = np.log((recent + 1.0) / (before / 2.0 + 1.0))
    if INTENT_TYPE in names and "topic" in activities and windows:
        days = windows[-1]
        intent = keep & (type_codes == names.index(INTENT_TYPE))
        out[f"intent_topics_{days}d"] = _distinct_topics(
            acc[intent],
            times[intent],
            activities["topic"].iloc[np.flatnonzero(intent)].to_numpy(dtype=object),
            req_codes,
            as_of - np.int64(days) * _DAY_NS,
            as_of,
        )
    return out


def _distinct_topics(
    acc: np.ndarray,
    times: np.ndarray,
    topics: np.ndarray,
    req_codes: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
) -> np.ndarray:
    """Distinct non-empty topics per request among events in [start, end).

    Each (account, topic) pair is tested on its own: requests are expanded to the pairs of
    their account (a handful each), and a pair counts when it has an event in the window.
    """
    text = pd.Series(topics, dtype=object).fillna("").astype(str).str.strip().str.lower()
    named = text.ne("").to_numpy()
    if not named.any():
        return np.zeros(len(req_codes))
    topic_codes, topic_names = pd.factorize(text[named])
    pair_codes, pairs = pd.factorize(acc[named] * np.int64(len(topic_names)) + topic_codes)
    pair_acc = np.asarray(pairs, dtype=np.int64) // np.int64(len(topic_names))
    timeline = _Timeline(pair_codes, times[named])

    by_acc = np.argsort(pair_acc, kind="stable")
    sorted_acc = pair_acc[by_acc]
    first = np.searchsorted(sorted_acc, req_codes, "left")
    n_pairs = np.searchsorted(sorted_acc, req_codes, "right") - first
    n_pairs[req_codes < 0] = 0
    req_index = np.repeat(np.arange(len(req_codes)), n_pairs)
    offsets = np.arange(len(req_index)) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
    pair = by_acc[first[req_index] + offsets]
    present = timeline.before(pair, end[req_index]) > timeline.before(pair, start[req_index])
    return np.bincount(req_index, weights=present.astype(float), minlength=len(req_codes))


def _decided_before(
    known_at: np.ndarray, won: np.ndarray, as_of: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per as_of: deals decided before it, and how many of them were won (all accounts)."""
    # One key for everybody.
    global_tl = _Timeline(np.zeros(len(known_at), dtype=np.int64), known_at)
    g_pos = global_tl.before(np.zeros(len(as_of), dtype=np.int64), as_of)
    return g_pos, global_tl.cumulative(won.astype(float))[g_pos]


def _smoothed_win_rate(
    n_won: np.ndarray,
    n_closed: np.ndarray,
    g_pos: np.ndarray,
    g_won: np.ndarray,
    config: FeatureConfig,
) -> np.ndarray:
    """The account's win rate smoothed towards the global one (``prior_smoothing`` deals)."""
    global_rate = (g_won + 1.0) / (g_pos + 2.0)
    k = config.prior_smoothing
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((n_won + k * global_rate) / (n_closed + k), dtype=float)


def with_global_deals(
    features: pd.DataFrame, global_deals: tuple[int, int], config: FeatureConfig
) -> pd.DataFrame:
    """``features`` with ``prior_win_rate`` smoothed towards the global rate of
    ``global_deals``: equal to ``build_features(..., global_deals=global_deals)`` on the same
    tables and requests, since the rate is the only feature the global counts enter. A run
    that reads its data part by part featurises each part once, before the whole list's counts
    are known, and applies them after."""
    n_won = features["prior_won"].to_numpy(dtype=float)
    n_closed = n_won + features["prior_lost"].to_numpy(dtype=float)
    g_pos = np.full(len(features), float(global_deals[0]))
    g_won = np.full(len(features), float(global_deals[1]))
    rate = _smoothed_win_rate(n_won, n_closed, g_pos, g_won, config)
    return features.assign(prior_win_rate=rate)


def global_deal_counts(tables: Tables, as_of: pd.Timestamp) -> tuple[int, int]:
    """Deals of the listed accounts decided before ``as_of``, and how many were won: the global
    win rate ``prior_win_rate`` is smoothed towards. A run that builds features part by part
    (``build_features(global_deals=...)``) takes it from the whole list."""
    requests = pd.DataFrame(
        {"account_id": tables.accounts["account_id"].iloc[:1], "as_of": [as_of]}
    )
    account_ids = pd.Index(tables.accounts["account_id"].astype(str))
    counts: dict[str, tuple[int, int]] = {}
    _history_features(
        tables.opportunities,
        account_ids,
        np.zeros(len(requests), dtype=np.int64),
        _as_ns(requests["as_of"]),
        FeatureConfig(),
        report=counts,
    )
    return counts["global"]


def _history_features(
    opportunities: pd.DataFrame,
    account_ids: pd.Index,
    req_codes: np.ndarray,
    as_of: np.ndarray,
    config: FeatureConfig,
    global_deals: tuple[int, int] | None = None,
    report: dict[str, tuple[int, int]] | None = None,
) -> dict[str, np.ndarray]:
    opps = opportunities
    acc = positions(account_ids, opps["account_id"])
    created = _as_ns(opps["created_at"])
    has_created = opps["created_at"].notna().to_numpy() & (acc >= 0)
    outcome = opps["outcome"].astype(str).to_numpy()
    if "closed_at" in opps:
        closed = _as_ns(opps["closed_at"])
        has_closed = opps["closed_at"].notna().to_numpy()
    else:
        closed, has_closed = created, np.zeros(len(opps), dtype=bool)
    # The outcome is known from the later of creation and close (see the module docstring).
    known_at = np.maximum(created, closed)
    decided = has_created & has_closed & np.isin(outcome, ["won", "lost"])
    won = outcome == "won"
    amount = (
        pd.to_numeric(opps["amount"], errors="coerce").fillna(0.0).to_numpy(dtype=float)
        if "amount" in opps
        else np.zeros(len(opps))
    )

    closed_tl = _Timeline(acc[decided], known_at[decided])
    pos = closed_tl.before(req_codes, as_of)
    start = closed_tl.start(req_codes)
    n_closed = (pos - start).astype(float)
    won_cum = closed_tl.cumulative(won[decided].astype(float))
    n_won = won_cum[pos] - won_cum[start]
    rev_cum = closed_tl.cumulative(np.where(won[decided], amount[decided], 0.0))
    revenue = rev_cum[pos] - rev_cum[start]
    year_ago = closed_tl.before(req_codes, as_of - np.int64(365) * _DAY_NS)
    revenue_365d = rev_cum[pos] - rev_cum[year_ago]

    won_tl = _Timeline(acc[decided & won], known_at[decided & won])
    days_since_won = won_tl.days_since_last(req_codes, as_of)

    created_tl = _Timeline(acc[has_created], created[has_created])
    n_created = (created_tl.before(req_codes, as_of) - created_tl.start(req_codes)).astype(float)
    # Amounts on deals created before as_of minus those decided before it: what is open.
    amount_created = created_tl.cumulative(amount[has_created])
    created_pos = created_tl.before(req_codes, as_of)
    closed_amount = closed_tl.cumulative(amount[decided])
    open_amount = (
        amount_created[created_pos]
        - amount_created[created_tl.start(req_codes)]
        - (closed_amount[pos] - closed_amount[start])
    )

    if global_deals is None:
        g_pos, g_won = _decided_before(known_at[decided], won[decided], as_of)
    else:
        g_pos = np.full(len(as_of), float(global_deals[0]))
        g_won = np.full(len(as_of), float(global_deals[1]))
    if report is not None and len(as_of):
        report["global"] = (int(g_pos[0]), int(g_won[0]))
    return {
        "prior_won": n_won,
        "prior_lost": n_closed - n_won,
        "prior_win_rate": _smoothed_win_rate(n_won, n_closed, g_pos, g_won, config),
        "revenue_won": revenue,
        "revenue_won_365d": revenue_365d,
        "days_since_last_won": days_since_won,
        "open_deals": n_created - n_closed,
        "open_amount": np.maximum(open_amount, 0.0),
    }
