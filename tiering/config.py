"""The project's typed configuration, loaded from TOML.

One file configures a deployment: where the data is and how it maps (``[data]``), the ICP
(``[icp]``), features, the leakage audit, training, the tier policy, the per-tier playbook
and MLflow. Every section has documented defaults; unknown keys are refused.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from features.config import (
    DataConfig,
    FeatureConfig,
    IcpConfig,
    LeakageConfig,
    StrictModel,
    TableSource,
)

ValueObjective = Literal["log_l2", "gamma", "tweedie"]
TIERS = (1, 2, 3)
TIER_NAMES = {1: "Tier 1 - strategic", 2: "Tier 2 - named", 3: "Tier 3 - program"}


class PriorityWeights(StrictModel):
    """priority = (w_ev * percentile(expected revenue) + w_icp * ICP fit / 100) / (w_ev + w_icp).

    Percentiles are taken against the reference population (the account list as of the end of
    training) so that one online request and a batch run rank on the same scale. The default
    gives ICP fit no weight: the conversion model already learns what fit does to buying, the
    ICP floor already gates Tier 1, and weighting fit again measurably moved revenue out of
    Tier 1 (`tiering train` reports the capture with and without the ICP weight).
    """

    expected_value: float = Field(
        1.0, ge=0, description="Weight of the expected-revenue percentile."
    )
    icp_fit: float = Field(0.0, ge=0, description="Weight of ICP fit / 100.")

    @model_validator(mode="after")
    def _not_both_zero(self) -> PriorityWeights:
        if self.expected_value + self.icp_fit <= 0:
            raise ValueError("priority weights must not both be zero")
        return self


class TierPolicy(StrictModel):
    method: Literal["quantile", "capacity", "threshold"] = Field(
        "quantile",
        description="quantile: shares of the list; capacity: reps x accounts per rep; "
        "threshold: fixed priority cut-offs.",
    )
    tier1_share: float = Field(
        0.2, gt=0, lt=1, description="quantile: share of accounts in Tier 1."
    )
    tier2_share: float = Field(
        0.6, gt=0, lt=1, description="quantile: share of accounts in Tier 2."
    )
    reps: int | None = Field(None, gt=0, description="capacity: account managers.")
    tier1_per_rep: int = Field(25, gt=0, description="capacity: Tier 1 accounts one rep can serve.")
    tier2_per_rep: int = Field(
        150, gt=0, description="capacity: Tier 2 accounts one rep can serve."
    )
    tier1_min_priority: float | None = Field(None, description="threshold: priority for Tier 1.")
    tier2_min_priority: float | None = Field(None, description="threshold: priority for Tier 2.")
    min_icp_fit_tier1: float = Field(60.0, ge=0, le=100, description="Tier 1 needs this ICP fit.")
    min_evidence_tier1: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Evidence score (0-1: share of key fields known, history, engagement) below which "
        "an account cannot be Tier 1; below half of it, not Tier 2 either.",
    )
    weights: PriorityWeights = Field(default_factory=PriorityWeights)

    @model_validator(mode="after")
    def _method_has_its_parameters(self) -> TierPolicy:
        if self.method == "quantile" and self.tier1_share + self.tier2_share >= 1:
            raise ValueError("tier1_share + tier2_share must be below 1")
        if self.method == "capacity" and self.reps is None:
            raise ValueError("method 'capacity' needs 'reps'")
        if self.method == "threshold":
            if self.tier1_min_priority is None or self.tier2_min_priority is None:
                raise ValueError(
                    "method 'threshold' needs tier1_min_priority and tier2_min_priority"
                )
            if self.tier1_min_priority < self.tier2_min_priority:
                raise ValueError("tier1_min_priority must be >= tier2_min_priority")
        return self


class Playbook(StrictModel):
    """What each tier is entitled to; rides along with every tier decision."""

    tier1: list[str] = Field(
        default_factory=lambda: [
            "Dedicated account manager",
            "Custom content and account plan",
            "Executive meetings",
        ]
    )
    tier2: list[str] = Field(
        default_factory=lambda: ["Industry campaigns", "Webinars", "Scheduled touchpoints"]
    )
    tier3: list[str] = Field(
        default_factory=lambda: [
            "Automated nurture",
            "Self-service content",
            "Event-triggered outreach",
        ]
    )

    def for_tier(self, tier: int) -> list[str]:
        return {1: self.tier1, 2: self.tier2, 3: self.tier3}[tier]


class SplitConfig(StrictModel):
    """Time-based split of closed deals by creation date, cut on month starts."""

    test_share: float = Field(
        0.2, gt=0, lt=0.5, description="Newest deals: the untouched test slice."
    )
    calibration_share: float = Field(
        0.15,
        gt=0,
        lt=0.5,
        description="Deals before the test slice: early stopping and calibration.",
    )


class TrainingConfig(StrictModel):
    horizon_days: int = Field(
        182,
        ge=28,
        le=730,
        description="H: tiers rank the revenue an account is expected to book within this many "
        "days. Choose about one sales cycle plus one review period (two quarters by default).",
    )
    snapshot_warmup_days: int = Field(
        90,
        ge=0,
        description="Account snapshots start this long after the first deal, so the first ones "
        "have some history to see.",
    )
    seed: int = 42
    n_jobs: int = Field(2, ge=1, description="LightGBM threads; set explicitly on shared machines.")
    split: SplitConfig = Field(default_factory=SplitConfig)
    num_boost_round: int = Field(2000, gt=0)
    early_stopping_rounds: int = Field(50, gt=0)
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(31, gt=1)
    min_data_in_leaf: int = Field(100, gt=0)
    feature_fraction: float = Field(0.8, gt=0, le=1)
    lambda_l2: float = Field(1.0, ge=0)
    value_objectives: list[ValueObjective] = Field(
        default_factory=lambda: list[ValueObjective](["log_l2", "gamma"]),
        description="Deal-value objectives compared on the calibration slice; the better is kept.",
    )
    prefer_smaller: bool = Field(
        True,
        description="Fit a second, smaller candidate of the conversion and revenue boosters "
        "(smaller_num_leaves, smaller_learning_rate) and keep the one with fewer trees x leaves "
        "(what explaining an account costs) unless the other scores better on the calibration "
        "slice by more than the noise (a paired bootstrap). Both are logged in the MLflow run.",
    )
    smaller_num_leaves: int | None = Field(
        None,
        gt=1,
        description="Leaves per tree of the smaller candidate; default: half of num_leaves.",
    )
    smaller_learning_rate: float | None = Field(
        None,
        gt=0,
        description="Learning rate of the smaller candidate; default: twice learning_rate, so "
        "early stopping needs about half the trees.",
    )
    selection_confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1,
        description="The larger candidate is kept only if it scores better in at least this "
        "share of the bootstrap resamples of the calibration slice.",
    )
    selection_resamples: int = Field(
        500, ge=50, description="Paired bootstrap resamples of the size comparison."
    )
    cluster: str | None = Field(
        None,
        description="Fit the boosters of large snapshot sets on Dask (lightgbm.dask): local, "
        "local:N or a scheduler address such as tcp://scheduler:8786. Default: one process. "
        "`tiering train --cluster` overrides.",
    )
    cluster_pilot_rows: int = Field(
        200_000,
        gt=0,
        description="With a cluster, boosters whose training rows exceed this are fitted on it; "
        "an early-stopped fit on a sample of this many rows sizes their number of trees.",
    )


class PromotionGate(StrictModel):
    """A challenger becomes champion only if, on the same test window, it is not worse by more
    than these tolerances."""

    max_auc_drop: float = Field(0.005, ge=0)
    max_ece_rise: float = Field(0.005, ge=0)
    max_tier1_capture_drop: float = Field(0.02, ge=0, description="Share of won revenue in Tier 1.")
    max_baseline_shortfall: float = Field(
        0.02,
        ge=0,
        description="The challenger's Tier 1 revenue capture may fall below the best naive "
        "account baseline's capture at the same size by at most this much.",
    )


class MlflowConfig(StrictModel):
    tracking_uri: str = Field(
        "sqlite:///mlruns/mlflow.db",
        description="Relative sqlite paths are relative to the working directory; "
        "override with MLFLOW_TRACKING_URI for a team's server.",
    )
    artifact_location: str = Field("mlruns/artifacts", description="For new experiments.")
    experiment: str = "account-tiering"
    registered_model: str = "account-tiering"
    gate: PromotionGate = Field(default_factory=PromotionGate)


class ScoringConfig(StrictModel):
    chunk_size: int = Field(50_000, gt=0, description="Accounts per batch-scoring chunk.")
    top_reasons: int = Field(3, gt=0, description="Positive and negative drivers per account.")
    output: Path = Field(
        Path("outputs/tiers.parquet"),
        description="Where `tiering score` writes the scores (.parquet or .csv; a cluster run writes a "
        "directory of Parquet parts named after it without its suffix, outputs/tiers), the CRM write-back beside them; `--out` overrides.",
    )
    snapshot: Path = Field(
        Path("outputs/account_snapshot.parquet"),
        description="Account features as of the scoring date, written by batch scoring, read by the service.",
    )
    cluster: str | None = Field(
        None,
        description="Score on Dask: local, local:N (N worker processes) or a scheduler address "
        "such as tcp://scheduler:8786; the scores are then a directory of Parquet parts. "
        "Default: one process. `tiering score --cluster` overrides.",
    )
    partition_size: int | None = Field(
        None,
        gt=0,
        description="Accounts per Dask partition; default: two partitions per worker.",
    )


class CrmConfig(StrictModel):
    """The CRM write-back file that `tiering score` writes beside the scores (see
    ``serving.crm``): a CRM's import format, its encoding and its text limit."""

    preset: Literal["generic", "salesforce", "hubspot"] = Field(
        "generic",
        description="generic: tiers_crm.csv only; salesforce: an upsert file keyed by an "
        "External ID field; hubspot: a company import matched on record id or domain.",
    )
    encoding: str = Field(
        "utf-8",
        description="Text encoding of the CRM file, e.g. utf-8, utf-8-sig (with a BOM, for "
        "Excel), cp1252.",
    )
    max_text: int = Field(
        255, ge=16, le=131_072, description="Most characters and bytes of one text field."
    )
    hubspot_match: Literal["record_id", "domain"] = Field(
        "record_id",
        description="hubspot: match companies on the Record ID (the account_id) or on the "
        "company domain (from domain_column).",
    )
    domain_column: str = Field(
        "domain", description="hubspot, domain matching: the account column with the domain."
    )


class HistoryConfig(StrictModel):
    """Where every batch run's tiers are kept (the tier history store)."""

    url: str | None = Field(
        None,
        description="SQLAlchemy database URL, e.g. postgresql+psycopg://user:pass@host/tiering; "
        "default: a SQLite file history.db beside the MLflow store. TIERING_HISTORY_URL overrides.",
    )
    enabled: bool = Field(True, description="Record batch runs in the history store.")
    reuse_reasons: bool = Field(
        True,
        description="Reuse the SHAP values of accounts whose model input and models did not "
        "change since they were last explained, instead of running TreeSHAP again; "
        "`tiering score --fresh-reasons` recomputes them all.",
    )


class StabilityConfig(StrictModel):
    """Tiers that hold between reviews (see ``tiering.stability``). Margins are in priority
    units (0-1); tier sizes hold exactly whatever the margins. The default margins take the
    demo's Tier 1 monthly churn from about 10 % to under 2 % at no loss of revenue captured
    by Tier 1 (`tiering backtest`); replay your own data before changing them."""

    enabled: bool = Field(True, description="Apply the stability policy to batch runs.")
    review_months: int = Field(
        3,
        ge=1,
        le=12,
        description="Review cadence in months (3: quarterly); a run in the first month of a "
        "new cadence period, or the first run after one was skipped, is a review.",
    )
    review_margin: float = Field(
        0.12,
        ge=0,
        le=1,
        description="Hysteresis at a review: a challenger must beat an incumbent's priority "
        "by this much to take its seat.",
    )
    change_margin: float = Field(
        0.20,
        ge=0,
        le=1,
        description="Between reviews an account moves only when its priority passes the next "
        "cut-off by more than this, or a gate changes.",
    )


class CapacityConfig(StrictModel):
    """Tiers within each rep's book or each territory instead of across the whole list
    (``tiering.capacity``). The rule for accounts without an owner (or territory) is
    ``unowned``; a run reports how many there were."""

    within: Literal["global", "owner", "territory"] = Field(
        "global",
        description="global: one ranking of the whole list ([tiers] as configured); owner: each "
        "owner's Tier 1 / Tier 2 hold at most that rep's capacity, filled by priority among the "
        "owner's accounts; territory: [tiers] method applied inside each territory (quantile "
        "shares of the territory, or the capacity of the territory's reps).",
    )
    tier1_per_rep: int = Field(
        25, ge=0, description="Tier 1 accounts a rep serves unless the reps table says otherwise."
    )
    tier2_per_rep: int = Field(
        150, ge=0, description="Tier 2 accounts a rep serves unless the reps table says otherwise."
    )
    reps: TableSource | None = Field(
        None,
        description="Optional reps table (owner, territory, tier1_capacity, tier2_capacity; "
        "mapped like the other tables). Without it every owner of the account list is a rep "
        "with the default capacities.",
    )
    unowned: Literal["pool", "tier3"] = Field(
        "pool",
        description="Accounts without an owner (within = owner) or territory (within = "
        "territory): pool = one extra group '(unowned)' tiered like a rep with the default "
        "capacity (territory: the [tiers] policy over the pool); tier3 = no rep serves them, "
        "so they stay in Tier 3 until assigned.",
    )


class ElevationConfig(StrictModel):
    """Intent-based temporary elevation (``tiering.elevation``): a strong, recent buying
    signal gives Tier 1 treatment for a limited time, in seats reserved for it. Off by
    default: on the demo, elevated accounts did not convert more than their base-tier peers
    (benchmarks/bench_capacity.py); replay your own data before turning it on."""

    enabled: bool = Field(False, description="Elevate accounts at batch runs (needs the history).")
    window_days: int = Field(30, ge=7, le=180, description="N: the recent window of the signal.")
    history_windows: int = Field(
        6, ge=2, le=24, description="Earlier windows of N days the recent one is set against."
    )
    min_z: float = Field(3.0, gt=0, description="z-score of recent engagement that elevates.")
    min_recent: float = Field(
        5.0, ge=0, description="Engagement (activity counts + intent strengths) at least this."
    )
    elevated_days: int = Field(30, ge=1, le=365, description="How long an elevation lasts.")
    reserved_share: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of each group's Tier 1 seats kept back from the policy for "
        "elevations (while enabled); seats no elevation takes stay empty.",
    )
    activity_types: list[str] = Field(
        default_factory=list, description="Activity types that count; empty = all."
    )
    intent: TableSource | None = Field(
        None,
        description="Optional intent-signal table (account_id, date, topic, strength), mapped "
        "like the other tables.",
    )
    intent_weight: float = Field(
        1.0, ge=0, description="Engagement one unit of intent strength counts as."
    )


class CustomerPlaybook(StrictModel):
    """What each customer-success tier is entitled to."""

    tier1: list[str] = Field(
        default_factory=lambda: ["Dedicated customer-success manager", "Executive business reviews"]
    )
    tier2: list[str] = Field(
        default_factory=lambda: ["Scheduled check-ins", "Adoption review each quarter"]
    )
    tier3: list[str] = Field(
        default_factory=lambda: ["Digital success programme", "Automated health alerts"]
    )

    def for_tier(self, tier: int) -> list[str]:
        return {1: self.tier1, 2: self.tier2, 3: self.tier3}[tier]


class CustomerConfig(StrictModel):
    """Customer tiers for customer success (see ``tiering.customers``): priority, in currency,
    = w_at_risk x recurring revenue x P(churn or downgrade within H) + w_expansion x expected
    expansion revenue within H; Tier 1 and Tier 2 hold what the customer-success managers can
    serve."""

    enabled: bool = Field(
        True, description="Train the churn and expansion models and tier customers."
    )
    weight_at_risk: float = Field(1.0, ge=0, description="Weight of revenue at risk.")
    weight_expansion: float = Field(1.0, ge=0, description="Weight of expected expansion.")
    csms: int = Field(4, gt=0, description="Customer-success managers.")
    tier1_per_csm: int = Field(25, gt=0, description="Tier 1 customers one CSM can serve.")
    tier2_per_csm: int = Field(100, gt=0, description="Tier 2 customers one CSM can serve.")
    products_offered: int | None = Field(
        None,
        gt=0,
        description='Products a customer could hold ("3 products of 5"); None = the number of '
        "distinct products in the subscriptions.",
    )
    playbook: CustomerPlaybook = Field(default_factory=CustomerPlaybook)

    @model_validator(mode="after")
    def _some_weight(self) -> CustomerConfig:
        if self.weight_at_risk + self.weight_expansion <= 0:
            raise ValueError("customers: weight_at_risk and weight_expansion must not both be zero")
        return self


class Config(StrictModel):
    name: str = "account-tiering"
    data: DataConfig
    icp: IcpConfig = Field(default_factory=IcpConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    leakage: LeakageConfig = Field(default_factory=LeakageConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tiers: TierPolicy = Field(default_factory=TierPolicy)
    playbook: Playbook = Field(default_factory=Playbook)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    crm: CrmConfig = Field(default_factory=CrmConfig)
    stability: StabilityConfig = Field(default_factory=StabilityConfig)
    capacity: CapacityConfig = Field(default_factory=CapacityConfig)
    elevation: ElevationConfig = Field(default_factory=ElevationConfig)
    customers: CustomerConfig = Field(default_factory=CustomerConfig)


class ConfigError(ValueError):
    """A config file that cannot be read or does not match the schema."""


def load_config(path: str | Path) -> Config:
    """Read a TOML config; data paths are resolved relative to the config file's folder."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
    return resolve_paths(config, path.parent)


def resolve_paths(config: Config, base: Path) -> Config:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    data = config.data
    sources = {
        name: src.model_copy(update={"path": resolve(src.path)})
        for name, src in data.sources().items()
    }
    if data.truth_dir is not None:
        sources["truth_dir"] = resolve(data.truth_dir)  # type: ignore[assignment]  # a Path, not a source
    update: dict[str, object] = {"data": data.model_copy(update=sources)}
    reps = config.capacity.reps
    if reps is not None:
        update["capacity"] = config.capacity.model_copy(
            update={"reps": reps.model_copy(update={"path": resolve(reps.path)})}
        )
    intent = config.elevation.intent
    if intent is not None:
        update["elevation"] = config.elevation.model_copy(
            update={"intent": intent.model_copy(update={"path": resolve(intent.path)})}
        )
    return config.model_copy(update=update)
