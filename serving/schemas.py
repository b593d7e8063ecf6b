"""Request and response bodies of the HTTP service.

Validation happens here, before any model code runs: a bad request is answered with the
field path and the rule it broke (a 400 whose ``errors`` list the ``path``, ``rule`` and ``message`` of every problem:
``serving.contract`` gives every error answer that one shape).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    StringConstraints,
    ValidationError,
    model_validator,
)

from serving.settings import MAX_ACCOUNTS_PER_REQUEST

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
AttributeValue = bool | FiniteFloat | Text

# What the answers promise about numbers: probabilities 0-1 to 4 places, money to the cent,
# percentage points and 0-100 scores to 2 places (beyond that the digits are noise).
Probability = Annotated[float, AfterValidator(lambda v: round(v, 4))]
Money = Annotated[float, AfterValidator(lambda v: round(v, 2))]
Points = Annotated[float, AfterValidator(lambda v: round(v, 2))]

EXAMPLE_ACCOUNT = {
    "industry": "software",
    "employees": 1200,
    "annual_revenue": 150_000_000,
    "country": "Germany",
    "region": "europe",
}
"""A new account described by its own fields: the example request of the API's schema."""


class Strict(BaseModel):
    """Unknown keys are refused: a misspelt field must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class AccountFields(Strict):
    """What a CRM knows about an account (firmographics, technographics, declared extras).

    Given alone, they describe a new account: engagement and deal history are unknown, so its
    evidence is low and its tier is capped accordingly.
    """

    name: Text | None = Field(default=None, description="Account name (text).")
    industry: Text | None = Field(
        default=None,
        description="Industry (text). A value the model never saw is accepted and named in "
        "the answer's warnings.",
    )
    employees: Annotated[FiniteFloat, Field(ge=0)] | None = Field(
        default=None, description="Head count (people, >= 0)."
    )
    annual_revenue: Annotated[FiniteFloat, Field(ge=0)] | None = Field(
        default=None, description="Annual revenue of the account (USD, >= 0)."
    )
    country: Text | None = Field(default=None, description="Country (text).")
    region: Text | None = Field(default=None, description="Sales region (text).")
    founded_year: Annotated[int, Field(ge=1600, le=2100)] | None = Field(
        default=None, description="Year founded (calendar year, 1600-2100)."
    )
    territory: Text | None = Field(default=None, description="Sales territory (text).")
    owner: Text | None = Field(default=None, description="Account owner, the rep (text).")
    technographics: dict[str, bool] = Field(
        default_factory=dict, description="Installed technologies, e.g. {'tech_crm': true}."
    )
    attributes: dict[str, AttributeValue] = Field(
        default_factory=dict, description="Further account columns the model declares as features."
    )

    @model_validator(mode="after")
    def _attributes_pass_the_field_checks(self) -> AccountFields:
        """An account field sent under ``attributes`` gets the same checks as sent directly
        (``{"attributes": {"employees": -5}}`` is as wrong as ``{"employees": -5}``)."""
        own = set(AccountFields.model_fields) - {"technographics", "attributes"}
        for key, value in self.attributes.items():
            if key in own:
                try:
                    AccountFields.model_validate({key: value})
                except ValidationError as exc:
                    problem = exc.errors(include_url=False)[0]["msg"]
                    raise ValueError(f"attributes.{key}: {problem}") from None
        return self

    def given(self) -> dict[str, Any]:
        """The account columns this request sets, flattened to canonical column names."""
        fields = self.model_dump(exclude={"technographics", "attributes"}, exclude_none=True)
        return {**fields, **self.technographics, **self.attributes}


class AccountRequest(AccountFields):
    """One account: by ``account_id`` (features from the account snapshot), by its fields (a
    new account), or both (the snapshot row with the given fields overriding it)."""

    account_id: Text | None = Field(
        default=None, description="The CRM's account id, as in the account snapshot (text)."
    )

    @model_validator(mode="after")
    def _identified_or_described(self) -> AccountRequest:
        if self.account_id is None and not self.given():
            raise ValueError(
                "an account needs an account_id or its own fields (industry, employees, ...)"
            )
        return self


class ScoreRequest(Strict):
    accounts: Annotated[
        list[AccountRequest], Field(min_length=1, max_length=MAX_ACCOUNTS_PER_REQUEST)
    ] = Field(description="1 to 1,000 accounts, by account_id, by their own fields, or both.")
    reasons: bool = Field(
        default=True, description="Include the drivers and tier rule of each account."
    )


class ExplainRequest(Strict):
    account: AccountRequest = Field(description="One account, by account_id or its own fields.")


class Driver(BaseModel):
    """One business field's effect on the account's win chance and deal size."""

    field: str = Field(description="The business field (canonical column name).")
    label: str = Field(description="The field as a rep knows it.")
    feature: str = Field(description="The model input that stands for the field.")
    value: bool | float | int | str | None = Field(description="The account's own value.")
    value_text: str = Field(description="The account's value as a rep reads it (text).")
    effect_points: Points = Field(
        description="Effect on the chance to buy within the horizon, in percentage points "
        "(signed, 2 decimals)."
    )
    deal_size_pct: Points = Field(
        description="Effect on the expected deal size, in percent (signed, 2 decimals)."
    )
    direction: Literal["positive", "negative"] = Field(description="Effect on expected value.")
    text: str = Field(description="Phrased for a rep, with the account's own value.")


class Reasons(BaseModel):
    headline: list[str] = Field(
        default_factory=list,
        description="The chance to buy within the horizon beside a typical account's, and the "
        "revenue range if it buys, in a rep's words.",
    )
    summary: str = Field(description="One line for the CRM.")
    positives: list[Driver] = Field(description="Drivers that raise expected revenue.")
    negatives: list[Driver] = Field(description="Drivers that lower expected revenue.")
    icp_met: list[str] = Field(description="ICP criteria the account meets.")
    icp_missed: list[str] = Field(description="ICP criteria the account misses.")
    tier_rule: str = Field(description="The tier rule that placed the account, in words.")
    next_tier: str | None = Field(
        default=None, description="What would move the account up a tier."
    )
    playbook: list[str] = Field(description="What to do with an account of this tier.")


class Cutoffs(BaseModel):
    """The cut-offs a tier was assigned with: online answers always use the reference
    cut-offs frozen in the bundle (the account list as of the end of training)."""

    kind: Literal["reference", "population"] = Field(
        description="reference: the cut-offs frozen in the bundle; population: this list's own."
    )
    method: str = Field(description="Tier policy: quantile, capacity or threshold.")
    frozen_at: str | None = Field(default=None, description="Date of the reference account list.")
    n_accounts: int = Field(description="Accounts in the reference list.")
    tier1_min_priority: Probability | None = Field(
        default=None, description="Lowest priority (0-1) in Tier 1; None: nobody reached it."
    )
    tier2_min_priority: Probability | None = Field(
        default=None, description="Lowest priority (0-1) in Tier 2; None: nobody reached it."
    )
    description: str = Field(description="The cut-offs used, in words.")
    warnings: list[str] = Field(
        default_factory=list,
        description="Tiers the ICP and evidence gates left more than 10 % below their policy "
        "size on the reference list, with the count and the cause.",
    )


class CustomerScore(BaseModel):
    """A customer's own tier for customer success (see tiering.customers)."""

    recurring_revenue: Money = Field(description="Recurring revenue as of the snapshot (currency).")
    p_churn: Probability | None = Field(
        default=None,
        description="Probability (0-1, calibrated) of churn or downgrade within the horizon; "
        "None without the customer models.",
    )
    revenue_at_risk: Money | None = Field(
        default=None, description="recurring_revenue x p_churn (currency)."
    )
    expected_expansion: Money | None = Field(
        default=None, description="Expected expansion revenue within the horizon (currency)."
    )
    priority: Money = Field(
        description="w_at_risk x revenue_at_risk + w_expansion x expected_expansion (currency)."
    )
    tier: int | None = Field(
        default=None,
        ge=1,
        le=3,
        description="Customer-success tier: 1 dedicated CSM, 2 scheduled check-ins, 3 digital; "
        "None when it could not be computed.",
    )
    tier_name: str | None = Field(default=None, description="The customer-success tier's name.")
    reasons: list[str] = Field(
        default_factory=list, description="Why, in a customer-success manager's words."
    )
    advocacy: str = Field(default="", description="Renewals, tenure, NPS where the data has them.")
    playbook: list[str] = Field(
        default_factory=list, description="What the customer-success tier is entitled to."
    )
    note: str = Field(default="", description="Customer figures that could not be computed.")


class AccountScore(BaseModel):
    account_id: str | None = Field(description="The account's id; None for a new account.")
    source: Literal["snapshot", "fields", "snapshot+fields"] = Field(
        description="Where the features came from: the account snapshot, the request's fields, "
        "or the snapshot with the request's fields laid over it."
    )
    p_convert: Probability = Field(
        description="Probability (0-1, calibrated, 4 decimals) that the account books at least "
        "one won deal within the model's horizon."
    )
    revenue_if_converts: Money = Field(
        description="Expected won revenue within the horizon if it converts (currency, cents)."
    )
    revenue_p10: Money = Field(
        description="10th percentile of revenue if it converts (currency, cents)."
    )
    revenue_p90: Money = Field(
        description="90th percentile of revenue if it converts (currency, cents)."
    )
    expected_revenue: Money = Field(
        description="p_convert x revenue_if_converts: what tiers rank (currency, cents)."
    )
    p_win_deal: Probability | None = Field(
        default=None,
        description="Probability (0-1, 4 decimals) that a deal opened now is won; None "
        "without a deal model.",
    )
    open_pipeline: Money | None = Field(
        default=None,
        description="Amounts of the account's open deals x p_win_deal (currency, cents); None "
        "when unknown.",
    )
    icp_fit: Points = Field(
        description="Fit to the Ideal Customer Profile (0-100: share of the weighted criteria met)."
    )
    evidence: Probability = Field(
        description="How much the model knows about the account (0-1: share of the fields and "
        "history it has)."
    )
    priority: Probability = Field(
        description="What tiers rank (0-1): the expected revenue's percentile against the "
        "reference list, with ICP fit weighed in by the config."
    )
    tier: int = Field(ge=1, le=3, description="1 strategic, 2 named, 3 program.")
    tier_name: str = Field(description="The tier's name.")
    tier_rule: str = Field(
        description="priority, icp_gate, evidence_gate or icp_and_evidence_gate."
    )
    reasons: Reasons | None = Field(
        default=None, description="Why, in a rep's words; None when reasons=false."
    )
    cutoffs_used: str | None = Field(
        default=None,
        description="With tiers within owners or territories: whose cut-offs placed this account.",
    )
    segment: Literal["customer", "prospect"] = Field(
        default="prospect",
        description="customer: pays recurring revenue as of the snapshot (or, without "
        "subscriptions data, has a won deal); prospect: otherwise.",
    )
    customer: CustomerScore | None = Field(
        default=None, description="Customers only: the customer-success tier and its figures."
    )


class Problem(BaseModel):
    """One problem with a request: the error shape of every 4xx/5xx answer, and of warnings."""

    path: str = Field(
        description="Where in the request, e.g. accounts[0].employees; empty for the request "
        "as a whole."
    )
    rule: str = Field(description="The rule broken, e.g. greater_than_equal, unknown_category.")
    message: str = Field(description="What is wrong and how to fix it.")


class ErrorResponse(BaseModel):
    """Every error answer of the service has this shape."""

    error: Problem = Field(description="The first (or only) problem.")
    errors: list[Problem] = Field(description="Every problem found, the first one included.")


class ScoreResponse(BaseModel):
    model_version: str = Field(description="Registry version of the model that scored.")
    scored_at: dt.datetime = Field(description="When the answer was computed (UTC, ISO 8601).")
    cutoffs: Cutoffs = Field(description="The tier cut-offs used.")
    accounts: list[AccountScore] = Field(description="One per request account, same order.")
    warnings: list[Problem] = Field(
        default_factory=list,
        description="Accepted but worth a look, e.g. a category the model never saw (it is "
        "scored as unknown).",
    )


class ExplainResponse(BaseModel):
    model_version: str = Field(description="Registry version of the model that scored.")
    scored_at: dt.datetime = Field(description="When the answer was computed (UTC, ISO 8601).")
    cutoffs: Cutoffs = Field(description="The tier cut-offs used.")
    account: AccountScore = Field(description="The account's score and reasons.")
    drivers: list[Driver] = Field(
        description="Every business field with a material effect, positive ones first."
    )
    warnings: list[Problem] = Field(
        default_factory=list,
        description="Accepted but worth a look, e.g. a category the model never saw.",
    )


class ModelInfo(BaseModel):
    model_version: str = Field(description="Registry version of the model in use.")
    source: str = Field(description="Where the model was loaded from (models:/ URI or folder).")
    trained: dict[str, Any] = Field(description="Training window and data the model saw.")
    metrics: dict[str, Any] = Field(description="Test-slice metrics and baselines.")
    policy: dict[str, Any] = Field(description="The tier policy of the bundle.")
    cutoffs: Cutoffs = Field(description="The reference cut-offs online answers use.")
    snapshot_as_of: str | None = Field(
        default=None, description="Date of the account snapshot in use."
    )
    snapshot_problem: str | None = Field(
        default=None,
        description="Why the snapshot file on disk is not the one in use (unreadable: the "
        "last good one is kept); None when it is.",
    )
    max_accounts_per_request: int = Field(description="Most accounts one /score request takes.")
    precomputed_accounts: int = Field(
        default=0,
        description="Accounts of the snapshot in use whose answers by id are scored ahead "
        "(0 while they are being scored, or when the snapshot is above "
        "TIERING_PRECOMPUTE_MAX_ACCOUNTS); the others are scored per request, to the same "
        "answer.",
    )
