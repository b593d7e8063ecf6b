"""The demo's customers: subscriptions, product usage and support tickets, with their truth.

Every account whose first deal is won becomes a customer on that deal's close day: one ``core``
subscription line whose recurring revenue is the deal's amount. From then on, month by month,
a hidden health (a mean-reverting walk with sudden collapses) drives what the data shows and
what happens:

- usage (``active_users`` and ``seat_utilisation``, the share of licensed seats in use,
  monthly) follows the health; support tickets (``tickets``,
  monthly) rise as it falls; some customers answer a quarterly NPS survey (``nps``, 0-10);
- churn and downgrade are drawn from a hidden monthly hazard of the usage trend (health now
  against three months ago), support load, tenure, ICP fit and engagement, higher in a renewal
  month (every line is co-termed on the first start's anniversary);
- expansion (a further product line, at most five) is drawn from a hidden per-customer
  propensity, health and fit.

Subscription rows are terms of a product line: ``renewed`` at an anniversary, ``downgraded``
(a line dropped, or the core line cut and continued at a lower revenue from that day),
``churned`` (every line ends), or ``active`` with ``end`` the next renewal date. The truth
beside the data, per customer and month start (the snapshot dates): the true P(churn within H),
P(churn or downgrade within H) and the expected expansion revenue within H (H = six months),
by Monte Carlo over the hidden process from the true state at that date.

The generator calls ``draw_customers`` per chunk with a random stream of its own, so the other
tables are byte for byte what they were without customers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

CUSTOMER_TABLES = ("subscriptions", "usage", "tickets", "customers_truth")
TRUTH_COLUMNS = (
    "account_id",
    "as_of",
    "true_p_churn",
    "true_p_churn_or_downgrade",
    "true_expected_expansion",
    "horizon_days",
)
PRODUCTS = ("core", "analytics", "automation", "integrations", "premium support")
MAX_PRODUCTS = len(PRODUCTS)
HORIZON_MONTHS = 6
HORIZON_DAYS = 182
MC_PATHS = 128
STREAM = 14_014  # the customers' own random stream beside the chunk's

# The hidden process (log-odds per month, health units).
HEALTH_PERSISTENCE = 0.9
HEALTH_NOISE = 0.12
COLLAPSE_P = 0.015
COLLAPSE_DEPTH = (1.0, 2.5)
CHURN = {"base": -5.6, "trend": -2.0, "health": -2.8, "load": 0.6, "tenure": -0.5}
CHURN_FIT, CHURN_ENGAGEMENT, CHURN_RENEWAL, CHURN_SIZE = -0.4, -0.3, 2.2, -0.35
DOWNGRADE = {"base": -5.4, "trend": -1.2, "health": -1.2, "load": 0.35, "tenure": -0.1}
DOWNGRADE_FIT, DOWNGRADE_RENEWAL = -0.2, 0.9
EXPANSION_BASE, EXPANSION_HEALTH, EXPANSION_TREND = -4.2, 1.0, 0.8
EXPANSION_FIT, EXPANSION_ENGAGEMENT, EXPANSION_PER_PRODUCT = 0.3, 0.2, -0.3
EXPANSION_SHARE = (0.25, 0.65)  # a new line's revenue, as a share of the first line's
TICKETS_BASE = 0.35
# Accounts already customers when the data starts (at most twice this share, for good fit),
# with a first start up to this many days before.
LEGACY_SHARE = 0.12
LEGACY_MAX_DAYS = 1_500


@dataclass(frozen=True)
class _Customers:
    """Per customer (index into the chunk's accounts): the hidden, fixed parameters."""

    account: np.ndarray
    start_day: np.ndarray
    start_month: np.ndarray  # negative for customers from before the data
    term_start: np.ndarray  # start of the term running when the data starts (or start_day)
    first_revenue: np.ndarray
    seats: np.ndarray
    mean_health: np.ndarray
    propensity: np.ndarray
    fit: np.ndarray
    engagement: np.ndarray


def _load(seats: np.ndarray, health: np.ndarray) -> np.ndarray:
    """Expected support tickets per month."""
    return TICKETS_BASE * seats**0.4 * np.exp(-0.9 * health)


def hazards(
    health: np.ndarray,
    health_3m_ago: np.ndarray,
    products: np.ndarray,
    months_on: np.ndarray,
    c: _Customers,
    rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Monthly P(churn), P(downgrade | no churn) and P(expansion | neither) of customers
    ``rows`` in the month they have been customers for ``months_on`` months."""
    trend = health - health_3m_ago
    # support load per seat: a big customer files more tickets without being less happy
    load = np.log1p(TICKETS_BASE * np.exp(-0.9 * health))
    size = np.log(c.seats[rows] / 20)
    tenure = np.log1p(months_on / 12)
    renewal = (months_on % 12 == 0) & (months_on > 0)
    fit, eng = c.fit[rows], c.engagement[rows]
    churn = (
        CHURN["base"]
        + CHURN["trend"] * trend
        + CHURN["health"] * health
        + CHURN["load"] * load
        + CHURN["tenure"] * tenure
        + CHURN_FIT * fit
        + CHURN_ENGAGEMENT * eng
        + CHURN_RENEWAL * renewal
        + CHURN_SIZE * size
    )
    down = (
        DOWNGRADE["base"]
        + DOWNGRADE["trend"] * trend
        + DOWNGRADE["health"] * health
        + DOWNGRADE["load"] * load
        + DOWNGRADE["tenure"] * tenure
        + DOWNGRADE_FIT * fit
        + DOWNGRADE_RENEWAL * renewal
    )
    expand = (
        EXPANSION_BASE
        + c.propensity[rows]
        + EXPANSION_HEALTH * health
        + EXPANSION_TREND * trend
        + EXPANSION_FIT * fit
        + EXPANSION_ENGAGEMENT * eng
        + EXPANSION_PER_PRODUCT * (products - 1)
    )
    p_expand = np.where(products < MAX_PRODUCTS, _sigmoid(expand), 0.0)
    return _sigmoid(churn), _sigmoid(down), p_expand


def _next_health(
    rng: np.random.Generator, health: np.ndarray, mean: np.ndarray, size: int
) -> np.ndarray:
    collapse = rng.random(size) < COLLAPSE_P
    depth = rng.uniform(*COLLAPSE_DEPTH, size)
    return (
        mean
        + HEALTH_PERSISTENCE * (health - mean)
        + HEALTH_NOISE * rng.standard_normal(size)
        - collapse * depth
    )


def draw_customers(
    seed: int,
    chunk: int,
    acc: dict[str, np.ndarray],
    deals: dict[str, np.ndarray],
    month_days: np.ndarray,
    span_start: np.datetime64,
    span_days: int,
    account_ids: np.ndarray,
) -> dict[str, pd.DataFrame]:
    """The chunk's ``subscriptions``, ``usage``, ``tickets`` and ``customers_truth`` frames.

    ``month_days``: day offsets of the month starts of the span (the snapshot dates)."""
    rng = np.random.default_rng([seed, chunk, STREAM])
    c = _first_wins(rng, acc, deals, month_days)
    n, n_months = len(c.account), len(month_days)
    bounds = np.r_[month_days, span_days]
    health = np.full((n, n_months), np.nan)
    h0 = c.mean_health + 0.3 * rng.standard_normal(n)
    alive = np.zeros(n, bool)
    products = np.ones(n, np.int64)
    line_revenue = np.zeros((n, MAX_PRODUCTS))
    line_start = np.full((n, MAX_PRODUCTS), -1, np.int64)
    rows: list[dict[str, np.ndarray]] = [_terms_before(c)]
    usage: list[dict[str, np.ndarray]] = []
    tickets: list[dict[str, np.ndarray]] = []
    truth: list[dict[str, np.ndarray]] = []

    def end_lines(who: np.ndarray, lines: np.ndarray, day: np.ndarray, status: str) -> None:
        i, k = np.nonzero(lines)
        if len(i):
            rows.append(
                {
                    "customer": who[i],
                    "product": k,
                    "start": line_start[who[i], k],
                    "end": day[i],
                    "revenue": line_revenue[who[i], k],
                    "status": np.full(len(i), status, dtype=object),
                }
            )

    for m in range(n_months):
        lo, hi = bounds[m], bounds[m + 1]
        # customers from before the data start with it
        new = np.flatnonzero((c.start_month == m) | ((m == 0) & (c.start_month < 0)))
        alive[new] = True
        line_revenue[new, 0] = c.first_revenue[new]
        line_start[new, 0] = c.term_start[new]
        health[new, : m + 1] = h0[new, None]
        active = np.flatnonzero(alive & (c.start_month < m))
        if m > 0:
            mean = c.mean_health[active]
            health[active, m] = _next_health(rng, health[active, m - 1], mean, len(active))
        months_on = m - c.start_month[active]
        # The truth as of this month start, from the state known just before it.
        if len(active):
            truth.append(_truth_at(rng, c, health, active, m, products[active], months_on))
        if not len(active):
            continue
        h = health[active, m]
        lag = health[active, max(m - 3, 0)]
        lag = np.where(np.isnan(lag), h, lag)
        p_churn, p_down, p_expand = hazards(h, lag, products[active], months_on, c, active)
        day = rng.integers(lo, hi, len(active))
        # what the customer shows this month
        usage.append(
            {
                "customer": active,
                "day": rng.integers(lo, hi, len(active)),
                "metric": np.full(len(active), "active_users", dtype=object),
                "value": np.round(
                    c.seats[active] * np.exp(h + 0.08 * rng.standard_normal(len(active)))
                ),
            }
        )
        usage.append(
            {
                "customer": active,
                "day": usage[-1]["day"],
                "metric": np.full(len(active), "seat_utilisation", dtype=object),
                "value": np.round(_sigmoid(h + 0.15 * rng.standard_normal(len(active))), 3),
            }
        )
        surveyed = (months_on % 3 == 1) & (rng.random(len(active)) < 0.5)
        usage.append(
            {
                "customer": active[surveyed],
                "day": day[surveyed],
                "metric": np.full(int(surveyed.sum()), "nps", dtype=object),
                "value": np.clip(
                    np.round(7 + 1.6 * h[surveyed] + rng.standard_normal(int(surveyed.sum()))),
                    0,
                    10,
                ),
            }
        )
        count = rng.poisson(_load(c.seats[active], h))
        some = count > 0
        tickets.append(
            {
                "customer": active[some],
                "day": rng.integers(lo, hi, len(active))[some],
                "metric": np.full(int(some.sum()), "tickets", dtype=object),
                "value": count[some].astype(float),
            }
        )
        # renewals on the anniversary (every line is co-termed on the first start)
        renewal = (months_on % 12 == 0) & (months_on > 0)
        anniversary = np.minimum(
            c.start_day[active] + np.round(months_on * 30.4375).astype(np.int64), hi - 1
        )
        anniversary = np.maximum(anniversary, lo)
        u = rng.random(len(active))
        churn = u < p_churn
        down = ~churn & (u < p_churn + (1 - p_churn) * p_down)
        expand = ~churn & ~down & (rng.random(len(active)) < p_expand)
        event_day = np.where(renewal, anniversary, day)
        held = line_revenue[active] > 0
        # churn: every line ends
        end_lines(active[churn], held[churn], event_day[churn], "churned")
        alive[active[churn]] = False
        line_revenue[active[churn]] = 0
        # renewals of the lines still held, before downgrades and expansions of this month
        renewing = renewal & ~churn
        end_lines(active[renewing], held[renewing], anniversary[renewing], "renewed")
        line_start[active[renewing]] = np.where(
            held[renewing], anniversary[renewing, None], line_start[active[renewing]]
        )
        # downgrade: the newest extra line is dropped, or the core line is cut
        d = active[down]
        last = MAX_PRODUCTS - 1 - np.argmax(held[down][:, ::-1], axis=1)
        drop = last > 0
        lines = np.zeros((len(d), MAX_PRODUCTS), bool)
        lines[np.arange(len(d)), last] = True
        end_lines(d, lines, event_day[down], "downgraded")
        line_revenue[d[drop], last[drop]] = 0
        products[d[drop]] -= 1
        cut = d[~drop]
        line_revenue[cut, 0] = np.round(line_revenue[cut, 0] * rng.uniform(0.4, 0.7, len(cut)), -2)
        line_start[cut, 0] = event_day[down][~drop]
        # expansion: the next product not held
        e = active[expand]
        nxt = np.argmin(line_revenue[e] > 0, axis=1)
        share = rng.uniform(*EXPANSION_SHARE, len(e))
        line_revenue[e, nxt] = np.round(
            c.first_revenue[e] * share * np.exp(0.25 * c.propensity[e]), -2
        )
        line_start[e, nxt] = event_day[expand]
        products[e] += 1

    # the lines still running: their current term, ending at the next renewal
    live = np.flatnonzero(alive)
    months_on = n_months - c.start_month[live]
    next_renewal = c.start_day[live] + np.round(
        np.ceil(np.maximum(months_on, 1) / 12) * 12 * 30.4375
    ).astype(np.int64)
    next_renewal = np.maximum(next_renewal, span_days)
    end_lines(live, line_revenue[live] > 0, next_renewal, "active")
    return _frames(
        c, rows, usage, tickets, truth, month_days, span_start, account_ids, len(acc["engagement"])
    )


def _first_wins(
    rng: np.random.Generator,
    acc: dict[str, np.ndarray],
    deals: dict[str, np.ndarray],
    month_days: np.ndarray,
) -> _Customers:
    """Customers: accounts that were customers before the data starts (more often for good
    fit and engagement), and accounts whose first won deal makes them one."""
    n_acc = len(acc["engagement"])
    fit_all, eng_all = acc["firmographic"], np.log(acc["engagement"])
    legacy = rng.random(n_acc) < LEGACY_SHARE * 2 * _sigmoid(fit_all + 0.3 * eng_all)
    won = deals["won"] & ~legacy[deals["account"]]
    account, closed = deals["account"][won], deals["closed_day"][won]
    amount = deals["amount"][won]
    order = np.lexsort((closed, account))
    account, closed, amount = account[order], closed[order], amount[order]
    first = np.r_[True, account[1:] != account[:-1]] if len(account) else np.array([], bool)
    account, closed, amount = account[first], closed[first], np.maximum(amount[first], 1_000.0)
    old = np.flatnonzero(legacy)
    old_start = -rng.integers(30, LEGACY_MAX_DAYS, len(old))
    old_amount = np.round(np.exp(acc["log_amount"][old] + 0.5 * rng.standard_normal(len(old))), -2)
    account = np.r_[account, old]
    start_day = np.r_[closed, old_start]
    amount = np.r_[amount, np.maximum(old_amount, 1_000.0)]
    order = np.argsort(account, kind="stable")
    account, start_day, amount = account[order], start_day[order], amount[order]
    n = len(account)
    fit = acc["firmographic"][account]
    engagement = np.log(acc["engagement"][account])
    start_month = np.where(
        start_day >= 0,
        np.searchsorted(month_days, start_day, side="right") - 1,
        np.floor(start_day / 30.4375).astype(np.int64),
    )
    years = np.where(start_day < 0, np.floor(-start_day / 365.25), 0)
    term_start = start_day + np.round(years * 365.25).astype(np.int64)
    return _Customers(
        account=account,
        start_day=start_day,
        start_month=start_month,
        term_start=term_start,
        first_revenue=amount,
        seats=np.round(3 + amount / 900),
        # customers from before the data are the ones that stayed: healthier the longer ago
        # they started, so churn does not fall over the years as they thin out
        mean_health=0.3
        + 0.6 * fit
        + 0.3 * engagement
        + 0.6 * rng.standard_normal(n)
        + np.where(start_day < 0, 0.1 + 0.1 * years, 0.0),
        propensity=0.5 * rng.standard_normal(n)
        + 0.35 * np.log(acc["employees"][account] / 120) / np.log(10)
        + 0.4 * fit
        + 0.3 * engagement,
        fit=fit,
        engagement=engagement,
    )


def _terms_before(c: _Customers) -> dict[str, np.ndarray]:
    """The yearly core terms customers from before the data renewed before it starts."""
    years = np.round((c.term_start - c.start_day) / 365.25).astype(np.int64)
    who = np.repeat(np.arange(len(years)), years)
    j = np.arange(len(who)) - np.repeat(np.cumsum(years) - years, years)
    start = c.start_day[who] + np.round(j * 365.25).astype(np.int64)
    end = c.start_day[who] + np.round((j + 1) * 365.25).astype(np.int64)
    return {
        "customer": who,
        "product": np.zeros(len(who), np.int64),
        "start": start,
        "end": end,
        "revenue": c.first_revenue[who],
        "status": np.full(len(who), "renewed", dtype=object),
    }


def _truth_at(
    rng: np.random.Generator,
    c: _Customers,
    health: np.ndarray,
    active: np.ndarray,
    m: int,
    products: np.ndarray,
    months_on: np.ndarray,
) -> dict[str, np.ndarray]:
    """P(churn), P(churn or downgrade) and the expected expansion revenue in the six months
    from month ``m``'s start, by Monte Carlo from the true state just before it. Uses a stream
    of its own (one draw of ``rng`` seeds it) so the data do not depend on the number of
    paths."""
    mc = np.random.default_rng(int(rng.integers(2**62)))
    k = MC_PATHS
    rows = np.repeat(active, k)
    last = health[active, max(m - 1, 0)]
    hist = [
        np.repeat(np.where(np.isnan(health[active, j]), last, health[active, j]), k)
        if j >= 0
        else np.repeat(last, k)
        for j in (m - 3, m - 2, max(m - 1, 0))
    ]
    prods = np.repeat(products, k).astype(float)
    on = np.repeat(months_on, k)
    alive = np.ones(len(rows), bool)
    churned = np.zeros(len(rows), bool)
    risk = np.zeros(len(rows), bool)
    expansion = np.zeros(len(rows))
    mean = c.mean_health[rows]
    share = np.mean(EXPANSION_SHARE)
    for step in range(HORIZON_MONTHS):
        h = _next_health(mc, hist[-1], mean, len(rows))
        p_churn, p_down, p_expand = hazards(h, hist[0], prods, on + step, c, rows)
        u = mc.random(len(rows))
        churn = alive & (u < p_churn)
        down = alive & ~churn & (u < p_churn + (1 - p_churn) * p_down)
        grows = alive & ~churn & ~down
        expansion += np.where(
            grows,
            p_expand * c.first_revenue[rows] * share * np.exp(0.25 * c.propensity[rows]),
            0.0,
        )
        expand = alive & ~churn & ~down & (mc.random(len(rows)) < p_expand)
        churned |= churn
        risk |= churn | down
        prods = prods - (down & (prods > 1)) + expand
        alive &= ~churn
        hist = [hist[1], hist[2], h]
    shape = (len(active), k)
    return {
        "customer": active,
        "month": np.full(len(active), m),
        "p_churn": churned.reshape(shape).mean(axis=1),
        "p_risk": risk.reshape(shape).mean(axis=1),
        "expansion": expansion.reshape(shape).mean(axis=1),
    }


def _frames(
    c: _Customers,
    rows: list[dict[str, np.ndarray]],
    usage: list[dict[str, np.ndarray]],
    tickets: list[dict[str, np.ndarray]],
    truth: list[dict[str, np.ndarray]],
    month_days: np.ndarray,
    span_start: np.datetime64,
    account_ids: np.ndarray,
    n_accounts: int,
) -> dict[str, pd.DataFrame]:
    def cat(parts: list[dict[str, np.ndarray]], key: str, dtype: Any) -> np.ndarray:
        return np.concatenate([p[key] for p in parts]) if parts else np.array([], dtype=dtype)

    def dates(days: np.ndarray) -> np.ndarray:
        return (span_start + days.astype("timedelta64[D]")).astype("datetime64[ns]")

    def ids(customer: np.ndarray) -> np.ndarray:
        return np.asarray(account_ids, dtype=object)[c.account[customer]]

    sub_customer = cat(rows, "customer", np.int64)
    sub_start = cat(rows, "start", np.int64)
    order = np.lexsort((cat(rows, "product", np.int64), sub_start, c.account[sub_customer]))
    subscriptions = pd.DataFrame(
        {
            "account_id": ids(sub_customer)[order],
            "product": np.asarray(PRODUCTS, dtype=object)[cat(rows, "product", np.int64)][order],
            "start": dates(sub_start)[order],
            "end": dates(cat(rows, "end", np.int64))[order],
            "recurring_revenue": cat(rows, "revenue", float)[order],
            "status": cat(rows, "status", object)[order],
        }
    )

    def metric_frame(parts: list[dict[str, np.ndarray]]) -> pd.DataFrame:
        who, day = cat(parts, "customer", np.int64), cat(parts, "day", np.int64)
        order = np.lexsort((day, c.account[who]))
        return pd.DataFrame(
            {
                "account_id": ids(who)[order],
                "date": dates(day)[order],
                "metric": cat(parts, "metric", object)[order],
                "value": cat(parts, "value", float)[order],
            }
        )

    who = cat(truth, "customer", np.int64)
    order = np.lexsort((cat(truth, "month", np.int64), c.account[who]))
    customers_truth = pd.DataFrame(
        {
            "account_id": ids(who)[order],
            "as_of": dates(month_days[cat(truth, "month", np.int64)])[order],
            "true_p_churn": np.round(cat(truth, "p_churn", float)[order], 6),
            "true_p_churn_or_downgrade": np.round(cat(truth, "p_risk", float)[order], 6),
            "true_expected_expansion": np.round(cat(truth, "expansion", float)[order], 2),
            "horizon_days": np.full(len(who), HORIZON_DAYS, dtype=np.int64),
        }
    )
    del n_accounts
    return {
        "subscriptions": subscriptions,
        "usage": metric_frame(usage),
        "tickets": metric_frame(tickets),
        "customers_truth": customers_truth,
    }


def customer_paths(out: Path, fmt: str) -> dict[str, Path]:
    """Where ``write_demo`` writes the customer tables (the truth under ``truth/``)."""
    return {
        "subscriptions": out / f"subscriptions.{fmt}",
        "usage": out / f"usage.{fmt}",
        "tickets": out / f"tickets.{fmt}",
        "customers_truth": out / "truth" / f"customers_truth.{fmt}",
    }


def customer_schemas() -> dict[str, pa.Schema]:
    text, day = pa.string(), pa.timestamp("ns")
    metric = pa.schema(
        [("account_id", text), ("date", day), ("metric", text), ("value", pa.float64())]
    )
    return {
        "subscriptions": pa.schema(
            [
                ("account_id", text),
                ("product", text),
                ("start", day),
                ("end", day),
                ("recurring_revenue", pa.float64()),
                ("status", text),
            ]
        ),
        "usage": metric,
        "tickets": metric,
        "customers_truth": pa.schema(
            [
                ("account_id", text),
                ("as_of", day),
                ("true_p_churn", pa.float64()),
                ("true_p_churn_or_downgrade", pa.float64()),
                ("true_expected_expansion", pa.float64()),
                ("horizon_days", pa.int64()),
            ]
        ),
    }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
