"""Request and response bodies of the HTTP service.

Validation happens here, before any model code runs: a bad request is answered with the
field path and the rule it broke (BentoML turns a pydantic ``ValidationError`` into a 400
whose ``detail`` lists ``loc``, ``msg`` and ``type`` of every problem).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
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


class Strict(BaseModel):
    """Unknown keys are refused: a misspelt field must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class AccountFields(Strict):
    """What a CRM knows about an account (firmographics, technographics, declared extras).

    Given alone, they describe a new account: engagement and deal history are unknown, so its
    evidence is low and its tier is capped accordingly.
    """

    name: Text | None = None
    industry: Text | None = None
    employees: Annotated[FiniteFloat, Field(ge=0)] | None = None
    annual_revenue: Annotated[FiniteFloat, Field(ge=0)] | None = Field(
        default=None, description="USD."
    )
    country: Text | None = None
    region: Text | None = None
    founded_year: Annotated[int, Field(ge=1600, le=2100)] | None = None
    territory: Text | None = None
    owner: Text | None = None
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

    account_id: Text | None = None

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
    ]
    reasons: bool = Field(
        default=True, description="Include the drivers and tier rule of each account."
    )


class ExplainRequest(Strict):
    account: AccountRequest


class Driver(BaseModel):
    """One business field's effect on the account's win chance and deal size."""

    field: str
    label: str = Field(description="The field as a rep knows it.")
    feature: str = Field(description="The model input that stands for the field.")
    value: bool | float | int | str | None = Field(description="The account's own value.")
    value_text: str
    effect_points: float = Field(description="Effect on the win chance, in percentage points.")
    deal_size_pct: float = Field(description="Effect on the expected deal size, in percent.")
    direction: Literal["positive", "negative"] = Field(description="Effect on expected value.")
    text: str = Field(description="Phrased for a rep, with the account's own value.")


class Reasons(BaseModel):
    headline: list[str] = Field(
        default_factory=list,
        description="The chance to buy within the horizon beside a typical account's, and the "
        "revenue range if it buys, in a rep's words.",
    )
    summary: str = Field(description="One line for the CRM.")
    positives: list[Driver]
    negatives: list[Driver]
    icp_met: list[str]
    icp_missed: list[str]
    tier_rule: str
    next_tier: str | None = Field(
        default=None, description="What would move the account up a tier."
    )
    playbook: list[str]


class Cutoffs(BaseModel):
    """The cut-offs a tier was assigned with: online answers always use the reference
    cut-offs frozen in the bundle (the account list as of the end of training)."""

    kind: Literal["reference", "population"]
    method: str = Field(description="Tier policy: quantile, capacity or threshold.")
    frozen_at: str | None = Field(default=None, description="Date of the reference account list.")
    n_accounts: int = Field(description="Accounts in the reference list.")
    tier1_min_priority: float | None = Field(
        default=None, description="None: nobody reached Tier 1."
    )
    tier2_min_priority: float | None = None
    description: str
    warnings: list[str] = Field(
        default_factory=list,
        description="Tiers the ICP and evidence gates left more than 10 % below their policy "
        "size on the reference list, with the count and the cause.",
    )


class CustomerScore(BaseModel):
    """A customer's own tier for customer success (see tiering.customers)."""

    recurring_revenue: float = Field(description="Recurring revenue as of the snapshot (currency).")
    p_churn: float | None = Field(
        default=None,
        description="Probability (0-1, calibrated) of churn or downgrade within the horizon; "
        "None without the customer models.",
    )
    revenue_at_risk: float | None = Field(
        default=None, description="recurring_revenue x p_churn (currency)."
    )
    expected_expansion: float | None = Field(
        default=None, description="Expected expansion revenue within the horizon (currency)."
    )
    priority: float = Field(
        description="w_at_risk x revenue_at_risk + w_expansion x expected_expansion (currency)."
    )
    tier: int | None = None
    tier_name: str | None = None
    reasons: list[str] = Field(default_factory=list)
    advocacy: str = Field(default="", description="Renewals, tenure, NPS where the data has them.")
    playbook: list[str] = Field(default_factory=list)
    note: str = Field(default="", description="Customer figures that could not be computed.")


class AccountScore(BaseModel):
    account_id: str | None
    source: Literal["snapshot", "fields", "snapshot+fields"]
    p_convert: float = Field(
        description="Probability (0-1, calibrated) that the account books at least one won "
        "deal within the model's horizon."
    )
    revenue_if_converts: float = Field(
        description="Expected won revenue within the horizon if it converts (currency)."
    )
    revenue_p10: float = Field(description="10th percentile of revenue if it converts (currency).")
    revenue_p90: float = Field(description="90th percentile of revenue if it converts (currency).")
    expected_revenue: float = Field(
        description="p_convert x revenue_if_converts: what tiers rank (currency)."
    )
    p_win_deal: float | None = Field(
        default=None,
        description="Probability (0-1) that a deal opened now is won; None without a deal model.",
    )
    open_pipeline: float | None = Field(
        default=None,
        description="Amounts of the account's open deals x p_win_deal (currency); None when unknown.",
    )
    icp_fit: float
    evidence: float
    priority: float
    tier: int
    tier_name: str
    tier_rule: str = Field(
        description="priority, icp_gate, evidence_gate or icp_and_evidence_gate."
    )
    reasons: Reasons | None = None
    segment: Literal["customer", "prospect"] = Field(
        default="prospect",
        description="customer: pays recurring revenue as of the snapshot (or, without "
        "subscriptions data, has a won deal); prospect: otherwise.",
    )
    customer: CustomerScore | None = Field(
        default=None, description="Customers only: the customer-success tier and its figures."
    )


class ScoreResponse(BaseModel):
    model_version: str
    cutoffs: Cutoffs
    accounts: list[AccountScore]


class ExplainResponse(BaseModel):
    model_version: str
    cutoffs: Cutoffs
    account: AccountScore
    drivers: list[Driver] = Field(
        description="Every business field with a material effect, positive ones first."
    )


class ModelInfo(BaseModel):
    model_version: str
    source: str
    trained: dict[str, Any] = Field(description="Training window and data the model saw.")
    metrics: dict[str, Any]
    policy: dict[str, Any]
    cutoffs: Cutoffs
    snapshot_as_of: str | None = Field(
        default=None, description="Date of the account snapshot in use."
    )
    snapshot_problem: str | None = Field(
        default=None,
        description="Why the snapshot file on disk is not the one in use (unreadable: the "
        "last good one is kept); None when it is.",
    )
    max_accounts_per_request: int
