"""Typed configuration of the data side: where the CRM export is, how it maps onto the
canonical tables, the ICP, the feature windows and the leakage audit.

These models live in ``features`` because ``features`` imports nothing of ours; the
top-level config (``tiering.config.Config``) composes them with the tier policy, training
and MLflow sections.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a config must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class TableSource(StrictModel):
    """One table of a CRM export and how it maps onto a canonical table."""

    path: Path = Field(
        description="CSV or Parquet file; relative paths are relative to the config file."
    )
    delimiter: str = Field(",", description="CSV field delimiter.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="canonical column -> column name in the export (only where they differ).",
    )
    labels: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="canonical column -> {export label -> canonical label}; labels are trimmed and "
        "case-folded before the lookup, e.g. outcome = {won = 'won', engaging = 'open'}.",
    )
    scale: dict[str, float] = Field(
        default_factory=dict,
        description="canonical column -> factor, e.g. annual_revenue = 1_000_000 for revenue in millions.",
    )
    fixes: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="canonical column -> {wrong value -> right value}, e.g. industry = {technolgy = 'technology'}.",
    )
    drop_if_missing: list[str] = Field(
        default_factory=list,
        description="canonical columns whose empty rows are dropped (and reported) instead of refused.",
    )
    date_format: str | None = Field(
        None,
        description="strftime format of date columns (e.g. '%d-%b-%y' for 27-Mar-12, '%m/%d/%y' "
        "for 03/27/12), or 'excel' for Excel serial day numbers (45123); None = ISO 8601.",
    )
    encoding: str = Field(
        "utf-8",
        description="Text encoding of a CSV file, e.g. 'latin-1' or 'cp1252' for many Excel exports.",
    )
    decimal: str = Field(
        ".", min_length=1, max_length=1, description="Decimal mark of numbers ('.' or ',')."
    )
    thousands: str | None = Field(
        None,
        description="Thousands separator of numbers (',', '.', ' ' or \"'\"); None = ',' when the "
        "decimal mark is '.', else none.",
    )

    @model_validator(mode="after")
    def _separators_differ(self) -> TableSource:
        if self.thousands is not None and self.thousands == self.decimal:
            raise ValueError(f"decimal and thousands are both {self.decimal!r}")
        return self


class DealsSource(TableSource):
    """A flat deal-level export: one row per deal with the account's fields on every row.

    The accounts table is derived from it: one account per distinct ``account_key``, its
    fields taken from the account's latest deal (by ``created_at``; an empty value there falls
    back to the latest deal that has one), and accounts whose deals disagree are reported.
    Column names in ``account_key``, ``account_fields`` and ``deal_fields`` may be the file's
    names or the canonical names ``columns`` maps them to.
    """

    account_key: list[str] = Field(
        default_factory=lambda: ["account_id"],
        min_length=1,
        description="Column(s) that identify an account; several columns form a composite key "
        "(values joined with ' | ' into account_id).",
    )
    account_fields: list[str] | None = Field(
        None,
        description="Columns that describe the account (firmographics, region, owner, ...); "
        "None = the canonical account columns the file has.",
    )
    deal_fields: list[str] | None = Field(
        None,
        description="Columns kept on the deals besides the canonical ones (product, source, "
        "...); None = every column that is neither in the key nor an account field. Columns "
        "left out are reported as ignored.",
    )


class DataConfig(StrictModel):
    accounts: TableSource | None = Field(
        None, description="One row per account (with 'opportunities'); or use 'deals'."
    )
    opportunities: TableSource | None = Field(
        None, description="One row per deal (with 'accounts'); or use 'deals'."
    )
    deals: DealsSource | None = Field(
        None,
        description="A flat deal-level export with the account's fields on every row, instead "
        "of 'accounts' + 'opportunities'.",
    )
    activities: TableSource | None = None
    subscriptions: TableSource | None = Field(
        None,
        description="Optional billing export: one row per subscription line or term (account_id, "
        "product, start, end or renewal date, recurring_revenue, status). Without it, customers "
        "and their value come from won-deal history and churn / expansion are not scored.",
    )
    usage: TableSource | None = Field(
        None, description="Optional product usage: account_id, date, metric, value."
    )
    tickets: TableSource | None = Field(
        None, description="Optional support tickets: account_id, date, metric, value."
    )
    post_outcome: list[str] = Field(
        default_factory=list,
        description="Export columns known to be filled only after a deal's outcome (besides the "
        "canonical closed_at, amount and outcome); the leakage audit refuses them as features.",
    )
    as_of: date | None = Field(
        None, description="End of the data (the scoring date); None = the latest date in the data."
    )
    truth_dir: Path | None = Field(
        None,
        description="Demo only: the generator's ground truth, read by evaluation and tests, never by features.",
    )
    closed_after_days: int = Field(
        90,
        ge=0,
        description="Without a closed_at column: a won or lost deal's outcome counts as known this "
        "many days after its created_at (the typical sales cycle), for deal history features and "
        "for leaving out deals too recent to have closed.",
    )
    default_deal_value: float = Field(
        1.0,
        gt=0,
        description="Without won deals with an amount: every won deal counts as this value, so "
        "expected revenue = P(win) x default_deal_value and tiers rank by the chance to convert; "
        "no deal-value model is trained.",
    )

    @model_validator(mode="after")
    def _one_shape(self) -> DataConfig:
        split = self.accounts is not None or self.opportunities is not None
        if self.deals is not None and split:
            raise ValueError(
                "give either [data.deals] (a flat deal export) or [data.accounts] and "
                "[data.opportunities], not both"
            )
        if self.deals is None and (self.accounts is None or self.opportunities is None):
            missing = "accounts" if self.accounts is None else "opportunities"
            raise ValueError(
                f"[data.{missing}] is missing: give [data.accounts] and [data.opportunities], "
                "or one flat deal export as [data.deals]"
            )
        return self

    def sources(self) -> dict[str, TableSource]:
        """The configured files by table name ('deals' for a flat export)."""
        named = {
            "accounts": self.accounts,
            "opportunities": self.opportunities,
            "deals": self.deals,
            "activities": self.activities,
            "subscriptions": self.subscriptions,
            "usage": self.usage,
            "tickets": self.tickets,
        }
        return {name: source for name, source in named.items() if source is not None}


IcpOp = Literal["in", "not_in", "between", ">=", "<=", "is_true"]


class IcpCriterion(StrictModel):
    """One criterion of the Ideal Customer Profile, phrased for reps by ``label``."""

    label: str = Field(description="How a rep reads it, e.g. 'Industry is software or fintech'.")
    column: str = Field(description="Canonical account column or a declared extra column.")
    op: IcpOp
    values: list[str] | None = Field(None, description="For in / not_in.")
    min: float | None = Field(None, description="For >= and between.")
    max: float | None = Field(None, description="For <= and between.")
    weight: float = Field(1.0, gt=0)
    must_have: bool = Field(
        False,
        description="An account missing a must-have scores at most 'cap_if_must_have_missed'.",
    )

    @model_validator(mode="after")
    def _operands_match_op(self) -> IcpCriterion:
        needs = {
            "in": self.values is not None,
            "not_in": self.values is not None,
            "between": self.min is not None and self.max is not None,
            ">=": self.min is not None,
            "<=": self.max is not None,
            "is_true": True,
        }
        if not needs[self.op]:
            raise ValueError(f"ICP criterion {self.label!r}: op {self.op!r} lacks its operand(s)")
        return self


class IcpConfig(StrictModel):
    criteria: list[IcpCriterion] = Field(default_factory=list)
    cap_if_must_have_missed: float = Field(
        40.0, ge=0, le=100, description="Highest fit score of an account that misses a must-have."
    )


class FeatureConfig(StrictModel):
    windows_days: list[int] = Field(default_factory=lambda: [30, 90, 180])
    trend_days: int = Field(
        30, description="Trend: last N days against the 2N days before, per day."
    )
    prior_smoothing: float = Field(
        5.0, ge=0, description="Pseudo-deals at the global win rate in the smoothed prior win rate."
    )
    categorical: list[str] = Field(
        default_factory=lambda: ["industry", "region", "country", "territory"],
        description="Account columns used as LightGBM categoricals (those present in the data).",
    )
    numeric: list[str] = Field(
        default_factory=lambda: ["employees", "annual_revenue", "founded_year"],
        description="Numeric account columns used as features (those present in the data).",
    )
    technographics: list[str] = Field(
        default_factory=list, description="Boolean account columns (installed technologies)."
    )
    extra: list[str] = Field(
        default_factory=list, description="Further account columns declared as features."
    )
    deal_fields: list[str] = Field(
        default_factory=list,
        description="Opportunity columns offered as features. Empty by default: scoring an account "
        "has no deal, so deal-only fields (product, source) would skew training against serving.",
    )


class LeakageConfig(StrictModel):
    max_single_feature_auc: float = Field(0.9, gt=0.5, le=1.0)
    max_missing_win_rate_gap: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Flag a feature whose 'not populated' rows win this much less (absolute) than the rest.",
    )
    min_rows_for_missing_check: int = 50
    allow: dict[str, str] = Field(
        default_factory=dict,
        description="feature -> written reason: a flagged feature that is allowed all the same.",
    )
