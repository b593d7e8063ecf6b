"""Point-in-time features of customers: what a customer-success manager knows about an account
as of a date, from the optional subscriptions, usage and tickets tables.

Pure functions of DataFrames, called by ``features.build.build_features`` (the one feature
path), so training snapshots, backtests, batch scoring and the service's snapshot all see the
same columns. Every column starts with ``cs_`` and is not an input of the account models
(``features.build.feature_columns`` leaves them out): the churn and expansion models read them.

As of t, only what was known strictly before t counts:

- a subscription row adds its recurring revenue from its ``start`` and takes it away at its
  ``end`` only once that date has passed: a row that will end as churned a month after t is
  still running at t, and its status is read only for rows that ended before t;
- days to renewal come from the first start's anniversary, never from a row's recorded end
  (which, for a churned term, is the churn date);
- usage and ticket values count in windows ending the day before t.

Without a subscriptions table, customer status and value come from won-deal history: a customer
is an account with a won deal, its recurring revenue is its won revenue of the last 365 days,
and the figures only subscriptions give are missing (``missing_customer_figures`` names them).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.distinct import positions
from features.tables import Tables

PREFIX = "cs_"
NPS = "nps"
WINDOW_DAYS = 90
_KEY = np.int64(1) << np.int64(24)  # days since 1900 fit below this
_EPOCH = np.datetime64("1900-01-01", "D")

# What each figure needs; said when a table is absent.
FIGURES_FROM_SUBSCRIPTIONS = (
    "churn risk",
    "revenue at risk",
    "expected expansion",
    "products held",
    "tenure and renewals",
)


def is_customer_column(name: str) -> bool:
    return name.startswith(PREFIX)


def missing_customer_figures(tables: Tables) -> list[str]:
    """Customer figures the export cannot give, in a user's words (empty: all can be given)."""
    missing: list[str] = []
    if tables.subscriptions is None:
        missing.extend(FIGURES_FROM_SUBSCRIPTIONS)
    if tables.usage is None:
        missing.append("usage trend")
    if tables.tickets is None:
        missing.append("support load")
    return missing


def _days(values: pd.Series | np.ndarray) -> np.ndarray:
    """Whole days since 1900 (int64); NaT becomes a day far in the future."""
    d = np.asarray(pd.to_datetime(values), dtype="datetime64[ns]").astype("datetime64[D]")
    out = (d - _EPOCH).astype(np.int64)
    return np.where(np.isnat(d), np.int64(_KEY - 1), out)


class Events:
    """Events keyed by (account code, day), answering window sums for requests."""

    def __init__(self, codes: np.ndarray, days: np.ndarray, values: np.ndarray) -> None:
        keep = codes >= 0
        key = codes[keep].astype(np.int64) * _KEY + days[keep]
        order = np.argsort(key, kind="stable")
        self.key = key[order]
        self.cum = np.r_[0.0, np.cumsum(values[keep][order].astype(float))]

    def total(self, codes: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        """Sum of values with start <= day < stop, per request."""
        base = codes.astype(np.int64) * _KEY
        lo = np.searchsorted(self.key, base + np.clip(start, 0, _KEY - 1), "left")
        hi = np.searchsorted(self.key, base + np.clip(stop, 0, _KEY - 1), "left")
        return self.cum[hi] - self.cum[lo]

    def count(self, codes: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        base = codes.astype(np.int64) * _KEY
        lo = np.searchsorted(self.key, base + np.clip(start, 0, _KEY - 1), "left")
        hi = np.searchsorted(self.key, base + np.clip(stop, 0, _KEY - 1), "left")
        return (hi - lo).astype(float)

    def last(self, codes: np.ndarray, stop: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The value of the latest event before ``stop`` (NaN if none); ``values`` in the
        order given to __init__ is not kept, so it is passed sorted by the caller."""
        base = codes.astype(np.int64) * _KEY
        hi = np.searchsorted(self.key, base + np.clip(stop, 0, _KEY - 1), "left")
        lo = np.searchsorted(self.key, base, "left")
        out = np.full(len(codes), np.nan)
        has = hi > lo
        out[has] = values[hi[has] - 1]
        return out


def expansion_rows(subscriptions: pd.DataFrame) -> np.ndarray:
    """Rows that start a product line after the account's first subscription: expansions."""
    product = (
        subscriptions["product"].astype(str)
        if "product" in subscriptions
        else pd.Series("", index=subscriptions.index)
    )
    start = pd.to_datetime(subscriptions["start"])
    account = subscriptions["account_id"].astype(str)
    first_of_line = start == start.groupby([account, product]).transform("min")
    first_of_account = start == start.groupby(account).transform("min")
    return (first_of_line & ~first_of_account).to_numpy()


def customer_features(
    tables: Tables,
    account_ids: pd.Index,
    codes: np.ndarray,
    as_of_ns: np.ndarray,
    history: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """The ``cs_`` columns of each request (account code into ``account_ids``, as-of time).

    ``history`` holds the request's deal-history features (``prior_won``,
    ``revenue_won_365d``) for the fallback without subscriptions."""
    t = (as_of_ns.astype("datetime64[ns]").astype("datetime64[D]") - _EPOCH).astype(np.int64)
    n = len(codes)
    nan = np.full(n, np.nan)
    out: dict[str, np.ndarray] = {}
    subs = tables.subscriptions
    if subs is None:
        won = np.nan_to_num(history.get("prior_won", np.zeros(n)))
        out["cs_customer"] = (won > 0).astype(float)
        out["cs_recurring_revenue"] = np.where(
            won > 0, np.nan_to_num(history.get("revenue_won_365d", np.zeros(n))), 0.0
        )
        for name in (
            "cs_products",
            "cs_tenure_days",
            "cs_days_to_renewal",
            "cs_renewals",
            "cs_downgrades",
            "cs_expansions",
            "cs_expansion_revenue_365",
            "cs_former_customer",
        ):
            out[name] = nan.copy()
    else:
        acc = positions(account_ids, subs["account_id"])
        start, end = _days(subs["start"]), _days(subs["end"]) if "end" in subs else None
        revenue = pd.to_numeric(subs["recurring_revenue"], errors="coerce").fillna(0.0).to_numpy()
        status = (
            subs["status"].astype(str).to_numpy()
            if "status" in subs
            else np.full(len(subs), "", dtype=object)
        )
        ends = end if end is not None else np.full(len(subs), _KEY - 1)
        flow = Events(np.r_[acc, acc], np.r_[start, ends], np.r_[revenue, -revenue])
        one = np.ones(len(acc))
        lines = Events(np.r_[acc, acc], np.r_[start, ends], np.r_[one, -one])
        zero = np.zeros(n, dtype=np.int64)
        arr = np.maximum(flow.total(codes, zero, t), 0.0)
        arr = np.where(arr < 1e-6, 0.0, arr)
        products = np.maximum(lines.total(codes, zero, t), 0.0)
        first = pd.Series(start).groupby(acc).min()
        first_start = first.reindex(codes).to_numpy(dtype=float)
        started = first_start < t
        tenure = np.where(started, t - first_start, np.nan)
        # one renewal per account and date, however many lines renewed together
        renewal = pd.DataFrame({"a": acc, "d": ends})[status == "renewed"].drop_duplicates()
        renewed = Events(renewal["a"].to_numpy(), renewal["d"].to_numpy(), np.ones(len(renewal)))
        down = status == "downgraded"
        downgraded = Events(acc[down], ends[down], one[down])
        expand = expansion_rows(subs)
        expansions = Events(acc[expand], start[expand], revenue[expand])
        out["cs_customer"] = (arr > 0).astype(float)
        out["cs_recurring_revenue"] = arr
        out["cs_products"] = np.where(started, products, np.nan)
        out["cs_tenure_days"] = tenure
        out["cs_days_to_renewal"] = np.where(
            arr > 0, 365.25 - np.mod(np.nan_to_num(tenure), 365.25), np.nan
        )
        out["cs_renewals"] = np.where(started, renewed.count(codes, zero, t), np.nan)
        out["cs_downgrades"] = np.where(started, downgraded.count(codes, zero, t), np.nan)
        out["cs_expansions"] = np.where(started, expansions.count(codes, zero, t), np.nan)
        out["cs_expansion_revenue_365"] = np.where(
            started, expansions.total(codes, t - 365, t), np.nan
        )
        out["cs_former_customer"] = (started & (arr <= 0)).astype(float)
    out.update(_metric_features(tables.usage, "usage", account_ids, codes, t))
    out.update(_metric_features(tables.tickets, "tickets", account_ids, codes, t))
    return out


def _metric_features(
    frame: pd.DataFrame | None,
    table: str,
    account_ids: pd.Index,
    codes: np.ndarray,
    t: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per metric: the mean (usage) or total (tickets) over the last 90 days and its change
    against the 90 days before; ``nps``: its latest value."""
    if frame is None:
        return {}
    out: dict[str, np.ndarray] = {}
    acc = positions(account_ids, frame["account_id"])
    days = _days(frame["date"])
    value = pd.to_numeric(frame["value"], errors="coerce").to_numpy(dtype=float)
    metric = frame["metric"].astype(str).to_numpy()
    w = WINDOW_DAYS
    for name in sorted(set(metric)):
        rows = (metric == name) & np.isfinite(value)
        events = Events(acc[rows], days[rows], value[rows])
        slug = "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")
        if name.lower() == NPS:
            order = np.argsort(acc[rows].astype(np.int64) * _KEY + days[rows], kind="stable")
            kept = acc[rows][order] >= 0
            out["cs_nps"] = events.last(codes, t, value[rows][order][kept])
            continue
        recent_sum, before_sum = (
            events.total(codes, t - w, t),
            events.total(codes, t - 2 * w, t - w),
        )
        if table == "usage":
            recent_n, before_n = (
                events.count(codes, t - w, t),
                events.count(codes, t - 2 * w, t - w),
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                recent = np.where(recent_n > 0, recent_sum / recent_n, np.nan)
                before = np.where(before_n > 0, before_sum / before_n, np.nan)
            out[f"cs_usage_mean_{slug}"] = recent
        else:
            recent, before = recent_sum, before_sum
            out[f"cs_tickets_recent_{slug}"] = recent
        with np.errstate(invalid="ignore", divide="ignore"):
            change = np.where(before > 0, recent / before - 1.0, np.nan)
        out[f"cs_{table}_change_{slug}"] = change
    return out
