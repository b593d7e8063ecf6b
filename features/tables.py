"""The canonical tables every other part of the project reads.

A CRM export is mapped onto these by ``features.contract.load_tables``; the demo generator
writes them directly (with some dirt). Columns and their meaning are in DESIGN.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

OUTCOMES = ("won", "lost", "open")

# Columns a table must have; the others are recognised when present.
# Only the account id, a deal's creation date and its outcome are indispensable: firmographics,
# close dates and amounts improve the models when present (DESIGN.md, "Optional columns").
ACCOUNT_REQUIRED = ("account_id",)
ACCOUNT_OPTIONAL = (
    "industry",
    "employees",
    "annual_revenue",
    "name",
    "country",
    "region",
    "founded_year",
    "territory",
    "owner",
)
OPPORTUNITY_REQUIRED = ("opportunity_id", "account_id", "created_at", "outcome")
OPPORTUNITY_OPTIONAL = ("closed_at", "amount", "product", "source")
ACTIVITY_REQUIRED = ("account_id", "occurred_at", "type")
ACTIVITY_OPTIONAL = ("topic", "count")
# Customer tables (optional): a billing export's subscription lines, and product usage and
# support tickets as (account, date, metric, value) rows. See features/customers.py.
SUBSCRIPTION_REQUIRED = ("account_id", "start", "recurring_revenue")
SUBSCRIPTION_OPTIONAL = ("product", "end", "status")
SUBSCRIPTION_STATUSES = ("active", "renewed", "downgraded", "churned")
METRIC_REQUIRED = ("account_id", "date", "metric", "value")

# Activity types the demo generator emits and the feature builder knows by name; other
# types in a real export get features too, under their own (slugged) names.
ACTIVITY_TYPES = (
    "web_visit",
    "content_download",
    "email_click",
    "meeting",
    "event",
    "intent_surge",
)

# Canonical fields that are only known once a deal has closed: never features.
POST_OUTCOME_FIELDS = ("closed_at", "amount", "outcome")


@dataclass(frozen=True)
class Tables:
    """The canonical tables after mapping, cleaning and validation.

    accounts: one row per account, ``account_id`` unique (string).
    opportunities: ``created_at``/``closed_at`` are datetime64, ``outcome`` in OUTCOMES,
        ``amount`` float (booked value when won).
    activities: optional; ``occurred_at`` datetime64, ``count`` int (1 when the export has none).
    subscriptions, usage, tickets: optional customer tables (``features.customers``); without
        subscriptions, customer status and value come from won-deal history.
    """

    accounts: pd.DataFrame
    opportunities: pd.DataFrame
    activities: pd.DataFrame | None = None
    subscriptions: pd.DataFrame | None = None
    usage: pd.DataFrame | None = None
    tickets: pd.DataFrame | None = None

    def end_of_data(self) -> pd.Timestamp:
        """The latest date anywhere in the tables: the default scoring date."""
        dates = [self.opportunities["created_at"].max()]
        if "closed_at" in self.opportunities:
            dates.append(self.opportunities["closed_at"].max())
        if self.activities is not None and len(self.activities):
            dates.append(self.activities["occurred_at"].max())
        return pd.Timestamp(max(d for d in dates if pd.notna(d))).normalize()


def maturity_cutoff(
    opportunities: pd.DataFrame, end: pd.Timestamp, quantile: float = 0.95
) -> pd.Timestamp:
    """Creation date after which closed deals are not yet a fair sample of outcomes.

    Only closed deals are labelled, and wins usually take longer to close than losses, so
    among deals created shortly before the end of the data the quick losses are closed and
    many wins are still open: their win rate is biased low (right-censoring). Deals created
    after ``end`` minus the ``quantile`` of the time to close (of the slower outcome) are
    left out of training and evaluation.

    The loader derives ``closed_at`` when an export has none (``data.closed_after_days``);
    tables built without it have no cycle to measure, so nothing is left out.
    """
    if "closed_at" not in opportunities.columns:
        return pd.Timestamp(end)
    closed = opportunities[
        opportunities["outcome"].isin(["won", "lost"]) & opportunities["closed_at"].notna()
    ]
    if closed.empty:
        return pd.Timestamp(end)
    cycle = (closed["closed_at"] - closed["created_at"]).dt.days.clip(lower=0)
    slowest = max(float(np.quantile(c, quantile)) for _, c in cycle.groupby(closed["outcome"]))
    return (pd.Timestamp(end) - pd.Timedelta(days=int(np.ceil(slowest)))).normalize()
