"""`tiering train`: data -> features -> leakage audit -> time split -> models + baselines ->
evaluation (against the demo's truth where known) -> one MLflow run -> registry + promotion gate.

``fit_and_evaluate`` is the part without MLflow (what the determinism test runs twice);
``train`` wraps it with the run, the registered version and the gate.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.build import (
    build_features,
    categorical_columns,
    feature_columns,
    scoring_requests,
    training_requests,
)
from features.tables import Tables
from tiering.bundle import CONVERSION, DEAL_WIN, REVENUE, Bundle, Model
from tiering.config import Config
from tiering.customers import reference_cutoffs as customer_cutoffs
from training.customers import CUSTOMER_SUMMARY_ROWS, CustomerFit, fit_customer_models
from training.customers import attach as attach_customers
from training.evaluate import (
    WindowEvaluation,
    best_baseline,
    classification_metrics,
    evaluate_window,
    truth_ratios,
)
from training.fit import FittedModels, boosters_on, fit_models
from training.registry import GateDecision, GateMetrics
from training.snapshots import (
    SnapshotSplit,
    horizon_labels,
    labelled_dates,
    snapshot_requests,
    split_snapshots,
)
from training.split import maturity_cutoff
from training.truth import demo_truth

Progress = Callable[[str, int, int], None]
"""progress(step description, steps done, steps in all): called as each step starts."""

STEPS = (
    "Loading and validating the data",
    "Building point-in-time account snapshots",
    "Auditing features for leakage",
    "Fitting models and baselines",
    "Evaluating on the test window",
    "Freezing reference cut-offs",
    "Logging the MLflow run",
    "Registering and gating",
)
SHAP_SAMPLE = 2000
INPUT_EXAMPLE_ROWS = 5


# --------------------------------------------------------------------------- results
@dataclass
class TrainingOutcome:
    """Everything fitted and measured, before anything is logged."""

    config: Config
    tables: Tables
    bundle: Bundle
    split: SnapshotSplit
    models: FittedModels
    evaluation: WindowEvaluation
    metrics: dict[str, float]
    summary: pd.DataFrame
    audit_table: pd.DataFrame
    profile: dict[str, Any]
    account_features_end: pd.DataFrame
    scoring_as_of: pd.Timestamp
    truth: pd.DataFrame | None = None
    deal_test: pd.DataFrame | None = None
    deal_predictions: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    customers: CustomerFit | None = None


@dataclass
class TrainResult:
    run_id: str
    version: str
    metrics: pd.DataFrame  # the summary table: model vs baselines vs truth
    capture: pd.DataFrame  # ranking x share of accounts: captured revenue
    promoted: bool
    run_url: str
    gate: GateDecision
    split: pd.DataFrame
    tracking_uri: str
    all_metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sizes: pd.DataFrame | None = None  # each booster beside its smaller candidate


def _step(progress: Progress | None, index: int) -> None:
    if progress is not None:
        progress(STEPS[index], index, len(STEPS))


# --------------------------------------------------------------------------- fitting + evaluation
def _load(config: Config) -> tuple[Tables, dict[str, Any]]:
    from features.contract import load_tables

    loaded = load_tables(config.data)
    try:
        from features.quality import quality_report

        profile = quality_report(loaded.tables, loaded.report).to_dict()
    except ImportError:  # the profile is a report, not a requirement
        profile = {}
    return loaded.tables, profile


def _audit(config: Config, features: pd.DataFrame, won: pd.Series) -> pd.DataFrame:
    from features.leakage import audit, require_clean

    # Every model input is offered; the audit refuses known post-outcome fields and flags
    # any feature that alone predicts the outcome implausibly well.
    report = audit(features, won.to_numpy(), None, config.leakage, config.data.post_outcome)
    require_clean(report)
    return report.table


def _summary(metrics: dict[str, float]) -> pd.DataFrame:
    """Figure | model | naive baseline | truth | model / truth, each at the level it claims."""

    def get(key: str) -> float:
        return metrics.get(key, float("nan"))

    rows = [
        # (figure, model, baseline, baseline name, truth)
        (
            "Account: ROC-AUC of P(convert in H)",
            "test_auc",
            "segment_test_auc",
            "segment conversion rate",
            "truth_auc",
        ),
        (
            "Account: Brier of P(convert)",
            "test_brier",
            "segment_test_brier",
            "segment conversion rate",
            "truth_brier",
        ),
        (
            "Account: ECE of P(convert)",
            "test_ece",
            "segment_test_ece",
            "segment conversion rate",
            "truth_ece",
        ),
        (
            "Account: revenue if converts, MAE",
            "value_mae",
            "segment_value_mae",
            "segment median",
            None,
        ),
        (
            "Account: revenue if converts, mean |log error|",
            "value_mean_abs_log_error",
            "segment_value_mean_abs_log_error",
            "segment median",
            None,
        ),
        ("Account: P10-P90 coverage (target 0.80)", "value_coverage_p10_p90", None, "", None),
        (
            "Account: Tier 1 share of won revenue in H",
            "tier1_revenue_share",
            "best_baseline_tier1_capture",
            "best naive ranking, same size",
            None,
        ),
        (
            "Deal: ROC-AUC of P(win | open deal)",
            "deal_test_auc",
            "deal_logistic_test_auc",
            "logistic regression",
            "truth_deal_auc",
        ),
        (
            "Deal: ECE of P(win | open deal)",
            "deal_test_ece",
            "deal_segment_test_ece",
            "segment win rate",
            "truth_deal_ece",
        ),
    ]
    rows.extend(row for row in CUSTOMER_SUMMARY_ROWS if row[1] in metrics)
    out = []
    for label, model, baseline, name, truth in rows:
        m = get(model)
        t = get(truth) if truth else float("nan")
        out.append(
            {
                "metric": label,
                "model": m,
                "baseline": get(baseline) if baseline else float("nan"),
                "baseline_name": name,
                "truth": t,
                "model_vs_truth": m / t if truth and t and not math.isnan(t) else float("nan"),
            }
        )
    return pd.DataFrame(out)


def _deal_rows(tables: Tables, config: Config) -> pd.DataFrame:
    """Every closed deal as of its creation with its features, ``won`` and ``amount``; the
    newest deals, whose outcomes are still right-censored, left out."""
    requests = training_requests(tables.opportunities)
    features = build_features(tables, requests, config.features).assign(
        opportunity_id=requests["opportunity_id"].to_numpy(),
        won=requests["won"].to_numpy(),
        amount=requests["amount"].to_numpy(),
    )
    mature_before = maturity_cutoff(tables.opportunities, tables.end_of_data())
    return features[(pd.to_datetime(features["as_of"]) < mature_before).to_numpy()]


def _deal_slices(
    deals: pd.DataFrame, split: SnapshotSplit
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The deal-win model's train / calibration / test rows, cut at the snapshot split's
    first calibration and first test dates."""
    when = pd.to_datetime(deals["as_of"])
    cal0, test0 = split.calibration_dates[0], split.test_dates[0]
    return (
        deals[(when < cal0).to_numpy()],
        deals[((when >= cal0) & (when < test0)).to_numpy()],
        deals[(when >= test0).to_numpy()],
    )


def fit_and_evaluate(
    config: Config, *, tables: Tables | None = None, progress: Progress | None = None
) -> TrainingOutcome:
    """Fit on the older snapshots, evaluate on the newest; nothing is written anywhere."""
    _step(progress, 0)
    if tables is None:
        tables, profile = _load(config)
    else:
        profile = {}
    horizon = config.training.horizon_days

    _step(progress, 1)
    dates = labelled_dates(
        tables.opportunities, tables.end_of_data(), horizon, config.training.snapshot_warmup_days
    )
    requests = snapshot_requests(tables.accounts["account_id"].astype(str), dates)
    features = build_features(tables, requests, config.features)
    snapshots = features.join(horizon_labels(tables.opportunities, requests, horizon))
    names = feature_columns(features)
    categorical = categorical_columns(features, config.features)

    _step(progress, 2)
    # The audit asks each field whether it alone tells won deals from lost ones, on the deals as
    # of their creation: the level where a field filled in after the outcome gives itself away.
    # (At the account level, a point-in-time count such as open deals rightly predicts buying.)
    deals = _deal_rows(tables, config)
    audit_table = _audit(config, deals[["account_id", "as_of", *names]], deals["won"])

    _step(progress, 3)
    split = split_snapshots(snapshots, dates, config.training.split, horizon)
    deals_train, deals_cal, deals_test = _deal_slices(deals, split)
    with boosters_on(config.training.cluster) as cluster_notes:
        models = fit_models(
            split.train,
            split.calibration,
            names,
            categorical,
            config.training,
            deals_train=deals_train,
            deals_calibration=deals_cal,
            default_deal_value=config.data.default_deal_value,
        )
        customers = fit_customer_models(config, tables, split, names, categorical)
    models.notes.extend(cluster_notes)
    named: dict[str, Model] = {CONVERSION: models.conversion, REVENUE: models.revenue}
    if models.deal_win is not None:
        named[DEAL_WIN] = models.deal_win
    metadata: dict[str, Any] = {
        "project": config.name,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "horizon_days": horizon,
        "training_window": {
            name: [d[0].date().isoformat(), d[-1].date().isoformat()]
            for name, d in (
                ("train", split.train_dates),
                ("calibration", split.calibration_dates),
                ("test", split.test_dates),
            )
        },
        "feature_config": config.features.model_dump(mode="json"),
        "calibration_method": models.conversion.calibrator.method,
        "revenue_objective": models.revenue.objective,
        "seed": config.training.seed,
        "notes": models.notes,
    }
    bundle = Bundle(
        models=named,
        feature_names=names,
        categories=models.categories,
        horizon_days=horizon,
        icp=config.icp,
        policy=config.tiers,
        playbook=config.playbook,
        metadata=metadata,
    )

    attach_customers(bundle, customers)

    _step(progress, 4)
    truth, deal_truth = demo_truth(config, tables, split.test_dates)
    evaluation = evaluate_window(bundle, split.test, models.segment_conversion, truth=truth)
    metrics = dict(evaluation.metrics)
    y = split.test["converted"].to_numpy(dtype=int)
    seg = models.segment_conversion.predict_proba(split.test)
    metrics.update(
        {f"segment_test_{k}": v for k, v in classification_metrics(y, seg).items() if k != "deals"}
    )
    conv = (y == 1) & (split.test["revenue"].to_numpy(dtype=float) > 0)
    seg_value = models.segment_revenue.predict(split.test[conv])
    actual = split.test["revenue"].to_numpy(dtype=float)[conv]
    metrics["segment_value_mae"] = float(np.mean(np.abs(actual - seg_value)))
    metrics["segment_value_mean_abs_log_error"] = float(
        np.mean(np.abs(np.log(actual) - np.log(seg_value)))
    )
    notes = list(models.notes)
    if metrics["value_mean_abs_log_error"] >= metrics["segment_value_mean_abs_log_error"]:
        notes.append(
            "revenue if converts: the segment median does as well as the model on the test "
            f"window (mean |log error| {metrics['segment_value_mean_abs_log_error']:.3f} vs "
            f"{metrics['value_mean_abs_log_error']:.3f})"
        )
    deal_predictions: dict[str, np.ndarray] = {}
    if models.deal_win is not None and len(deals_test) and deals_test["won"].nunique() == 2:
        yd = deals_test["won"].to_numpy(dtype=int)
        deal_predictions = {"model": bundle.predict(deals_test)["p_win_deal"].to_numpy()}
        if models.deal_logistic is not None and models.deal_segment is not None:
            deal_predictions["logistic"] = models.deal_logistic.predict_proba(deals_test)
            deal_predictions["segment"] = models.deal_segment.predict_proba(deals_test)
        if deal_truth is not None:
            true_p = (
                deals_test["opportunity_id"]
                .astype(str)
                .map(deal_truth.set_index(deal_truth["opportunity_id"].astype(str))["true_p_win"])
            )
            if true_p.notna().all():
                deal_predictions["truth"] = true_p.to_numpy(dtype=float)
        for name, p in deal_predictions.items():
            prefix = {"model": "deal_test", "truth": "truth_deal"}.get(name, f"deal_{name}_test")
            metrics.update(
                {
                    f"{prefix}_{k}": v
                    for k, v in classification_metrics(yd, p).items()
                    if k != "deals"
                }
            )
    if truth is not None:
        merged = evaluation.predictions.merge(
            truth.assign(account_id=truth["account_id"].astype(str)),
            on=["account_id", "as_of"],
            how="left",
        )
        if "true_p_convert" in merged and merged["true_p_convert"].notna().all():
            metrics.update(
                {
                    f"truth_{k}": v
                    for k, v in classification_metrics(
                        merged["converted"].to_numpy(dtype=int), merged["true_p_convert"].to_numpy()
                    ).items()
                    if k in ("auc", "brier", "ece", "log_loss")
                }
            )
        metrics.update(truth_ratios(metrics))
    name, value = best_baseline(evaluation.capture)
    notes.append(
        f"best naive ranking at Tier 1's size: {name} ({value:.1%} of the window's won revenue; "
        f"the model's tiers: {metrics['tier1_revenue_share']:.1%})"
    )
    for key, model in bundle.models.items():
        if model.booster is not None:
            metrics[f"{key}_trees"] = float(model.booster.current_iteration())
    metrics.update(size_metrics(models.size_selection))

    _step(progress, 5)
    scoring_as_of = pd.Timestamp(config.data.as_of) if config.data.as_of else tables.end_of_data()
    account_features_end = build_features(
        tables, scoring_requests(tables.accounts, scoring_as_of), config.features
    )
    bundle.cutoffs = freeze_cutoffs(bundle, account_features_end, scoring_as_of)
    notes.extend(bundle.cutoffs.warnings)  # a tier the gates left short, with count and cause
    if customers is not None:
        metrics.update(customers.metrics)
        notes.extend(customers.notes)
    if bundle.has_customer_models:
        bundle.customer["cutoffs"] = customer_cutoffs(bundle, account_features_end)
    bundle.metadata["metrics"] = {k: v for k, v in metrics.items() if _finite(v)}
    bundle.metadata["best_baseline"] = name

    return TrainingOutcome(
        config=config,
        tables=tables,
        bundle=bundle,
        split=split,
        models=models,
        evaluation=evaluation,
        metrics=metrics,
        summary=_summary(metrics),
        audit_table=audit_table,
        profile=profile,
        account_features_end=account_features_end,
        scoring_as_of=scoring_as_of,
        truth=truth,
        deal_test=deals_test,
        deal_predictions=deal_predictions,
        notes=notes,
        customers=customers,
    )


SIZE_FIGURES = ("num_leaves", "trees", "trees_x_leaves", "total_leaves", "score")


def size_metrics(sizes: pd.DataFrame | None) -> dict[str, float]:
    """Both candidates of each booster as metrics: ``size_{model}_{candidate}_{figure}`` (the
    score is the calibration-slice loss named in the table), plus the bootstrap share in which
    the larger scored better and 1.0 / 0.0 for the smaller candidate kept."""
    out: dict[str, float] = {}
    if sizes is None:
        return out
    for row in sizes.to_dict("records"):
        prefix = f"size_{row['model']}_{row['candidate']}"
        out.update({f"{prefix}_{k}": float(row[k]) for k in SIZE_FIGURES})
        out[f"size_{row['model']}_larger_better_share"] = float(row["larger_better_share"])
        if row["chosen"]:
            out[f"size_{row['model']}_smaller_kept"] = float(row["candidate"] == "smaller")
    return out


def size_choices(sizes: pd.DataFrame | None) -> dict[str, str]:
    """The kept candidate of each booster in words, e.g. "smaller (15 leaves, 120 trees)"."""
    if sizes is None:
        return {}
    kept = sizes[sizes["chosen"]]
    return {
        str(row["model"]): f"{row['candidate']} ({row['num_leaves']} leaves, {row['trees']} trees)"
        for row in kept.to_dict("records")
    }


def freeze_cutoffs(bundle: Bundle, account_features: pd.DataFrame, as_of: pd.Timestamp) -> Any:
    """Reference cut-offs from the account list as of the scoring date."""
    from tiering.policy import reference_cutoffs
    from tiering.scoring import rank

    ranked = rank(bundle, account_features)
    return reference_cutoffs(
        ranked["expected_revenue"].to_numpy(),
        ranked["icp_fit"].to_numpy(),
        ranked["evidence"].to_numpy(),
        bundle.policy,
        as_of,
    )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


# --------------------------------------------------------------------------- MLflow
def pip_requirements() -> list[str]:
    """Explicit requirements of the logged model (inferring them costs seconds per model)."""
    from importlib.metadata import version

    def floor(package: str) -> str:
        return f"{package}>={version(package)}"

    return [floor(p) for p in ("mlflow", "lightgbm", "pandas", "numpy", "scikit-learn", "pydantic")]


def _package_dir(package: str) -> str:
    """The folder of one of our packages (an editable install may import it as a namespace
    package without ``__file__``, so ask for its search locations)."""
    import importlib

    module = importlib.import_module(package)
    for location in getattr(module, "__path__", []):
        if Path(location, "__init__.py").is_file():
            return str(Path(location).resolve())
    raise RuntimeError(f"cannot locate the source folder of package {package!r}")


def log_bundle_model(bundle: Bundle, example_features: pd.DataFrame, workdir: Path) -> Any:
    """Log the bundle as an MLflow pyfunc "from code": the entry file's source, the
    ``features`` and ``tiering`` packages as code, the bundle as an artifact folder."""
    import mlflow
    from mlflow.models import infer_signature

    import tiering.pyfunc_model as entry
    from tiering.scoring import score

    bundle_dir = bundle.save(workdir / "bundle")
    example = example_features.head(INPUT_EXAMPLE_ROWS).reset_index(drop=True)
    output = score(bundle, example, reasons=False, population=False)[entry.PYFUNC_COLUMNS]
    with warnings.catch_warnings():
        # "integer columns cannot hold missing values": only the output's tier is an integer.
        warnings.simplefilter("ignore", UserWarning)
        signature = infer_signature(example, output)
    with warnings.catch_warnings():
        # MLflow suggests type hints on predict for schema inference; the signature above is
        # the schema, inferred from real feature rows.
        warnings.filterwarnings("ignore", message=".*type hint", category=UserWarning)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(entry.__file__ or "")),
            artifacts={"bundle": str(bundle_dir)},
            code_paths=[_package_dir("features"), _package_dir("tiering")],
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
        )


def _next_version(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return "1"
    return str(max((int(v.version) for v in versions), default=0) + 1)


def _log_run(outcome: TrainingOutcome, workdir: Path) -> Any:
    import mlflow

    cfg = outcome.config
    split = outcome.split
    models = outcome.models
    params: dict[str, Any] = {
        **{f"training.{k}": v for k, v in cfg.training.model_dump(exclude={"split"}).items()},
        "split.test_share": cfg.training.split.test_share,
        "split.calibration_share": cfg.training.split.calibration_share,
        **{
            f"split.{name}": f"{d[0].date()}..{d[-1].date()}"
            for name, d in (
                ("train", split.train_dates),
                ("calibration", split.calibration_dates),
                ("test", split.test_dates),
            )
        },
        "snapshots.train": len(split.train),
        "snapshots.calibration": len(split.calibration),
        "snapshots.test": len(split.test),
        "features.count": len(outcome.bundle.feature_names),
        "features.categorical": ",".join(outcome.bundle.categories),
        "conversion.calibration": models.conversion.calibrator.method,
        "revenue.objective": models.revenue.objective,
        "revenue.interval": models.revenue.interval.method,
        **{
            f"size.{model}.kept": kept
            for model, kept in size_choices(models.size_selection).items()
        },
        "deal_win": models.deal_win is not None,
        "tiers.method": cfg.tiers.method,
        "tiers.weights": cfg.tiers.weights.model_dump(),
        "scoring.as_of": outcome.scoring_as_of.date().isoformat(),
    }
    mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
    mlflow.log_metrics({k: float(v) for k, v in outcome.metrics.items() if _finite(v)})
    mlflow.log_dict(outcome.profile, "data/profile.json")
    frames = {
        "data/leakage_audit.csv": outcome.audit_table,
        "data/split.csv": split.describe(),
        "evaluation/summary.csv": outcome.summary,
        "evaluation/capture_by_ranking.csv": outcome.evaluation.capture,
        "evaluation/calibration_methods.csv": models.calibration_scores,
        "evaluation/revenue_objectives.csv": models.revenue_comparison,
        "evaluation/calibration_curve.csv": outcome.evaluation.calibration,
        "evaluation/tier_backtest.csv": outcome.evaluation.backtest,
    }
    if models.size_selection is not None:
        frames["evaluation/model_sizes.csv"] = models.size_selection
        mlflow.set_tags(
            {f"size.{m}": kept for m, kept in size_choices(models.size_selection).items()}
        )
    for name, frame in frames.items():
        mlflow.log_text(frame.to_csv(index=False), name)
    mlflow.log_text("\n".join(outcome.notes), "evaluation/notes.txt")
    for name, fig in report_figures(outcome).items():
        mlflow.log_figure(fig, f"plots/{name}.png")
    return log_bundle_model(outcome.bundle, outcome.account_features_end, workdir)


def report_figures(outcome: TrainingOutcome) -> dict[str, Any]:
    """The run's figures by name (also what the notebook draws)."""
    from tiering.bundle import segment_key  # noqa: F401  # the baseline's segments, documented there
    from training import plots
    from training.evaluate import calibration_table

    ev = outcome.evaluation
    y = ev.predictions["converted"].to_numpy(dtype=int)
    p_model = ev.predictions["p_convert"].to_numpy()
    seg = outcome.models.segment_conversion.predict_proba(outcome.split.test)
    curves = {
        "P(convert), LightGBM calibrated": ev.calibration,
        "segment conversion rate": calibration_table(y, seg),
    }
    scores = {"P(convert), LightGBM calibrated": p_model, "segment conversion rate": seg}
    sample = outcome.split.train.sample(
        n=min(SHAP_SAMPLE, len(outcome.split.train)), random_state=outcome.config.training.seed
    )
    conv_contrib, revenue_contrib = outcome.bundle.contributions(sample)
    encoded = outcome.bundle.encode(sample)
    figures = {
        "calibration": plots.calibration_plot(curves),
        "roc_pr": plots.roc_pr_plot(y, scores),
        "capture_by_ranking": plots.capture_plot(ev.capture),
        "gain_lift_by_tier": plots.gain_lift_plot({"model": ev.backtest}),
        "tier_distribution": plots.tier_distribution_plot(ev.account_scores),
        "shap_conversion_model": plots.shap_beeswarm(
            conv_contrib, encoded, "Conversion model (log-odds)"
        ),
    }
    if outcome.bundle.revenue.booster is not None:
        figures["shap_revenue_model"] = plots.shap_beeswarm(
            revenue_contrib, encoded, "Revenue model (log revenue)"
        )
    return figures


def champion_on_window(outcome: TrainingOutcome, bundle: Bundle) -> dict[str, float]:
    """The champion's figures on the challenger's test snapshots (same accounts, same dates)."""
    from features.config import FeatureConfig

    cfg = outcome.config
    champion_features = FeatureConfig.model_validate(
        bundle.metadata.get("feature_config", cfg.features.model_dump(mode="json"))
    )
    test = outcome.split.test
    if champion_features != cfg.features:
        labels = test[["converted", "revenue", "won_deals"]]
        test = build_features(
            outcome.tables, test[["account_id", "as_of"]], champion_features
        ).join(labels)
    result = evaluate_window(bundle, test, outcome.models.segment_conversion)
    return result.metrics


def train(config: Config, *, progress: Progress | None = None) -> TrainResult:
    """Fit, evaluate, log one MLflow run, register a version (alias ``challenger``) and let the
    gate decide whether it becomes ``champion``."""
    import mlflow

    from training import registry

    mcfg = config.mlflow
    client = registry.connect(mcfg)
    registry.check_project(client, mcfg.registered_model, config.name)
    outcome = fit_and_evaluate(config, progress=progress)
    _step(progress, 6)
    experiment_id = registry.ensure_experiment(client, mcfg)
    name = mcfg.registered_model
    outcome.bundle.metadata["registered_model"] = name
    outcome.bundle.metadata["model_version"] = _next_version(client, name)
    with tempfile.TemporaryDirectory(prefix="tiering-train-") as tmp:
        run_name = f"{config.name} {outcome.split.test_start.date()} seed {config.training.seed}"
        with registry.training_run(
            client, experiment_id=experiment_id, run_name=run_name, model_name=name
        ) as run:
            outcome.bundle.metadata["run_id"] = run.info.run_id
            model_info = _log_run(outcome, Path(tmp))
            run_id = run.info.run_id

            _step(progress, 7)
            version = registry.register_version(
                client, name, model_info.model_uri, run_id, outcome.metrics, config.name
            )
            champion = registry.alias_version(client, name, registry.CHAMPION)
            challenger_gate = GateMetrics.from_metrics(
                outcome.metrics, str(outcome.bundle.metadata.get("best_baseline", ""))
            )
            if champion is None:
                decision = registry.gate_decision(challenger_gate, None, mcfg.gate)
            else:
                try:
                    path = registry.download_bundle(
                        client, name, version=champion, dst=Path(tmp) / "champion"
                    )
                    champ_metrics = champion_on_window(outcome, Bundle.load(path))
                    mlflow.log_metrics(
                        {
                            f"champion_v{champion}_{k}": v
                            for k, v in champ_metrics.items()
                            if _finite(v)
                        }
                    )
                    decision = registry.gate_decision(
                        challenger_gate, GateMetrics.from_metrics(champ_metrics), mcfg.gate
                    )
                except (
                    Exception
                ) as exc:  # a champion that cannot be evaluated must not be replaced blindly
                    decision = GateDecision(
                        False,
                        [
                            f"champion v{champion} could not be re-evaluated on this window: "
                            f"{exc}; compare the runs and promote by hand if this version should "
                            f"serve (tiering promote {version} --reason ...)"
                        ],
                    )
            # Not reasons to refuse the model, but nobody should promote it without reading them.
            decision.reasons.extend(f"warning: {w}" for w in outcome.bundle.cutoffs.warnings)
            registry.record_gate(client, name, version, decision)
            mlflow.set_tags(
                {"gate": "passed" if decision.passed else "failed", "model_version": version}
            )
            mlflow.log_text("\n".join(decision.reasons), "evaluation/gate.txt")
            if decision.passed:
                registry.promote(client, name, version, decision.summary(), by="gate")
    uri = registry.tracking_uri(mcfg)
    return TrainResult(
        run_id=run_id,
        version=version,
        metrics=outcome.summary,
        capture=outcome.evaluation.capture,
        notes=outcome.notes,
        promoted=decision.passed,
        run_url=registry.run_url(uri, experiment_id, run_id),
        gate=decision,
        split=outcome.split.describe(),
        tracking_uri=uri,
        all_metrics=outcome.metrics,
        sizes=outcome.models.size_selection,
    )
