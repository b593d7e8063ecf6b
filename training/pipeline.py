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
from tiering.bundle import Bundle
from tiering.config import Config
from training.evaluate import (
    WindowEvaluation,
    classification_metrics,
    evaluate_window,
    top_accounts_capture,
    truth_metrics,
    truth_ratios,
    value_metrics,
)
from training.fit import FittedModels, fit_models
from training.registry import GateDecision, GateMetrics
from training.split import TimeSplit, maturity_cutoff, time_split

Progress = Callable[[str, int, int], None]
"""progress(step description, steps done, steps in all): called as each step starts."""

STEPS = (
    "Loading and validating the data",
    "Building point-in-time features",
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
    split: TimeSplit
    models: FittedModels
    evaluation: WindowEvaluation
    metrics: dict[str, float]
    summary: pd.DataFrame
    audit_table: pd.DataFrame
    profile: dict[str, Any]
    test_deals: pd.DataFrame
    account_features_end: pd.DataFrame
    scoring_as_of: pd.Timestamp
    baseline_predictions: dict[str, np.ndarray] = field(default_factory=dict)
    truth_backtest: pd.DataFrame | None = None


@dataclass
class TrainResult:
    run_id: str
    version: str
    metrics: pd.DataFrame  # the summary table: model vs baselines vs truth
    promoted: bool
    run_url: str
    gate: GateDecision
    split: pd.DataFrame
    tracking_uri: str
    all_metrics: dict[str, float] = field(default_factory=dict)


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
    """model | logistic regression | segment baseline | truth | model / truth, per figure."""

    def get(key: str) -> float:
        return metrics.get(key, float("nan"))

    rows = [
        ("ROC-AUC", "test_auc", "logistic_test_auc", "segment_test_auc", "truth_auc"),
        ("PR-AUC", "test_pr_auc", "logistic_test_pr_auc", "segment_test_pr_auc", "truth_pr_auc"),
        ("Brier", "test_brier", "logistic_test_brier", "segment_test_brier", "truth_brier"),
        (
            "Log loss",
            "test_log_loss",
            "logistic_test_log_loss",
            "segment_test_log_loss",
            "truth_log_loss",
        ),
        (
            "ECE (10 equal-mass bins)",
            "test_ece",
            "logistic_test_ece",
            "segment_test_ece",
            "truth_ece",
        ),
        ("Deal value MAE", "value_mae", None, "segment_value_mae", None),
        (
            "Deal value mean |log error|",
            "value_mean_abs_log_error",
            None,
            "segment_value_mean_abs_log_error",
            None,
        ),
        ("P10-P90 coverage (target 0.80)", "value_coverage_p10_p90", None, None, None),
        (
            "Tier 1 share of won revenue",
            "tier1_revenue_share",
            None,
            None,
            "truth_tier1_revenue_share",
        ),
        ("Tier 1 lift", "tier1_lift", None, None, "truth_tier1_lift"),
        (
            "Top-N accounts by EV: revenue share",
            "ev_top_revenue_share",
            None,
            "segment_tier1_revenue_share",
            "truth_ev_top_revenue_share",
        ),
        ("Tier 1 win rate", "tier1_win_rate", None, None, None),
    ]
    out = []
    for label, model, logistic, segment, truth in rows:
        m = get(model)
        t = get(truth) if truth else float("nan")
        out.append(
            {
                "metric": label,
                "model": m,
                "logistic": get(logistic) if logistic else float("nan"),
                "segment": get(segment) if segment else float("nan"),
                "truth": t,
                "model_vs_truth": m / t if truth and t and not math.isnan(t) else float("nan"),
            }
        )
    return pd.DataFrame(out)


def fit_and_evaluate(
    config: Config, *, tables: Tables | None = None, progress: Progress | None = None
) -> TrainingOutcome:
    """Fit on the older deals, evaluate on the newest; nothing is written anywhere."""
    _step(progress, 0)
    if tables is None:
        tables, profile = _load(config)
    else:
        profile = {}

    _step(progress, 1)
    requests = training_requests(tables.opportunities)
    features = build_features(tables, requests, config.features)
    names = feature_columns(features)
    categorical = categorical_columns(features, config.features)

    _step(progress, 2)
    audit_table = _audit(config, features, requests["won"])

    _step(progress, 3)
    dataset = features.assign(
        opportunity_id=requests["opportunity_id"].to_numpy(),
        won=requests["won"].to_numpy(),
        amount=requests["amount"].to_numpy(),
    )
    mature_before = maturity_cutoff(tables.opportunities, tables.end_of_data())
    immature = int((dataset["as_of"] >= mature_before).sum())
    split = time_split(dataset[dataset["as_of"] < mature_before], config.training.split)
    models = fit_models(split.train, split.calibration, names, categorical, config.training)

    metadata: dict[str, Any] = {
        "project": config.name,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training_window": {
            "train": [
                split.train_start.date().isoformat(),
                split.calibration_start.date().isoformat(),
            ],
            "calibration": [
                split.calibration_start.date().isoformat(),
                split.test_start.date().isoformat(),
            ],
            "test": [split.test_start.date().isoformat(), split.test_end.date().isoformat()],
        },
        "feature_config": config.features.model_dump(mode="json"),
        "calibration_method": models.calibrator.method,
        "value_objective": models.value.objective,
        "seed": config.training.seed,
        "mature_before": mature_before.date().isoformat(),
    }
    bundle = Bundle(
        win_model=models.win_model,
        calibrator=models.calibrator,
        value_model=models.value.booster,
        value_objective=models.value.objective,  # type: ignore[arg-type]  # checked by config
        value_interval=models.value_interval,
        feature_names=names,
        categories=models.categories,
        icp=config.icp,
        policy=config.tiers,
        playbook=config.playbook,
        metadata=metadata,
        value_smearing=models.value.smearing,
    )

    _step(progress, 4)
    test = split.test
    test_deals = test[["opportunity_id", "account_id", "as_of", "won", "amount"]]
    account_features_test = build_features(
        tables, scoring_requests(tables.accounts, split.test_start), config.features
    )
    evaluation = evaluate_window(
        bundle,
        tables,
        test_deals,
        split.test_start,
        config.features,
        deal_features=test,
        account_features=account_features_test,
    )
    metrics = dict(evaluation.metrics)
    y = test["won"].to_numpy(dtype=int)
    baseline_predictions = {
        "logistic": models.logistic.predict_proba(test),
        "segment": models.segment_win_rate.predict_proba(test),
    }
    for name, p in baseline_predictions.items():
        metrics.update(
            {
                f"{name}_test_{k}": v
                for k, v in classification_metrics(y, p).items()
                if k not in ("win_rate", "deals")
            }
        )
    won = evaluation.deal_predictions["won"].to_numpy() == 1
    won &= np.isfinite(evaluation.deal_predictions["amount"].to_numpy(dtype=float))
    seg_value = value_metrics(
        test["amount"].to_numpy(dtype=float)[won], models.segment_value.predict(test)[won]
    )
    metrics.update({f"segment_value_{k}": v for k, v in seg_value.items() if k != "won_deals"})
    # Segment baseline for the tier backtest: the same number of Tier 1 accounts, ranked by
    # segment win rate x segment median deal size.
    n_tier1 = int(metrics["tier1_accounts"])
    seg_ev = models.segment_win_rate.predict_proba(
        account_features_test
    ) * models.segment_value.predict(account_features_test)
    metrics["segment_tier1_revenue_share"] = top_accounts_capture(
        pd.Series(seg_ev, index=account_features_test["account_id"].astype(str).to_numpy()),
        test_deals,
        n_tier1,
    )
    if config.data.truth_dir is not None:
        metrics.update(
            truth_metrics(
                Path(config.data.truth_dir),
                test_deals,
                split.test_start,
                evaluation.account_scores,
                config.tiers,
            )
        )
        metrics.update(truth_ratios(metrics))
    metrics["calibration_cv_log_loss"] = float(
        models.calibration_scores.loc[models.calibration_scores["chosen"], "cv_log_loss"].iloc[0]
    )
    metrics["win_model_trees"] = float(models.win_model.current_iteration())
    metrics["deals_left_out_immature"] = float(immature)
    metrics["value_model_trees"] = float(models.value.booster.current_iteration())

    _step(progress, 5)
    scoring_as_of = pd.Timestamp(config.data.as_of) if config.data.as_of else tables.end_of_data()
    account_features_end = build_features(
        tables, scoring_requests(tables.accounts, scoring_as_of), config.features
    )
    bundle.cutoffs = freeze_cutoffs(bundle, account_features_end, scoring_as_of)
    bundle.metadata["metrics"] = {k: v for k, v in metrics.items() if _finite(v)}

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
        test_deals=test_deals,
        account_features_end=account_features_end,
        scoring_as_of=scoring_as_of,
        baseline_predictions=baseline_predictions,
    )


def freeze_cutoffs(bundle: Bundle, account_features: pd.DataFrame, as_of: pd.Timestamp) -> Any:
    """Reference cut-offs from the account list as of the scoring date."""
    from features.build import evidence_score
    from features.icp import icp_fit
    from tiering.policy import reference_cutoffs

    predicted = bundle.predict(account_features)
    fit = icp_fit(account_features, bundle.icp)["icp_fit"].to_numpy(dtype=float)
    evidence = evidence_score(account_features).to_numpy(dtype=float)
    return reference_cutoffs(
        predicted["expected_value"].to_numpy(), fit, evidence, bundle.policy, as_of
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
        "split.train_start": split.train_start.date().isoformat(),
        "split.calibration_start": split.calibration_start.date().isoformat(),
        "split.test_start": split.test_start.date().isoformat(),
        "split.test_end": split.test_end.date().isoformat(),
        "split.mature_before": outcome.bundle.metadata["mature_before"],
        "deals.train": len(split.train),
        "deals.calibration": len(split.calibration),
        "deals.test": len(split.test),
        "features.count": len(outcome.bundle.feature_names),
        "features.categorical": ",".join(outcome.bundle.categories),
        "calibration.method": models.calibrator.method,
        "value.objective": models.value.objective,
        "value.interval": models.value_interval.method,
        "tiers.method": cfg.tiers.method,
        "scoring.as_of": outcome.scoring_as_of.date().isoformat(),
    }
    mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
    mlflow.log_metrics({k: float(v) for k, v in outcome.metrics.items() if _finite(v)})
    mlflow.log_dict(outcome.profile, "data/profile.json")
    for name, frame in {
        "data/leakage_audit.csv": outcome.audit_table,
        "data/split.csv": split.describe(),
        "evaluation/summary.csv": outcome.summary,
        "evaluation/calibration_methods.csv": models.calibration_scores,
        "evaluation/value_objectives.csv": models.value_comparison,
        "evaluation/calibration_curve.csv": outcome.evaluation.calibration,
        "evaluation/tier_backtest.csv": outcome.evaluation.backtest,
    }.items():
        mlflow.log_text(frame.to_csv(index=False), name)
    for name, fig in report_figures(outcome).items():
        mlflow.log_figure(fig, f"plots/{name}.png")
    return log_bundle_model(outcome.bundle, outcome.account_features_end, workdir)


def report_figures(outcome: TrainingOutcome) -> dict[str, Any]:
    """The run's figures by name (also what the notebook draws)."""
    from training import plots
    from training.evaluate import calibration_table

    ev = outcome.evaluation
    y = ev.deal_predictions["won"].to_numpy(dtype=int)
    p_model = ev.deal_predictions["p_win"].to_numpy()
    curves = {"LightGBM (calibrated)": ev.calibration}
    curves.update(
        {f"{k} baseline": calibration_table(y, p) for k, p in outcome.baseline_predictions.items()}
    )
    scores = {"LightGBM (calibrated)": p_model}
    scores.update({f"{k} baseline": p for k, p in outcome.baseline_predictions.items()})
    sample = outcome.split.train.sample(
        n=min(SHAP_SAMPLE, len(outcome.split.train)), random_state=outcome.config.training.seed
    )
    win_contrib, value_contrib = outcome.bundle.contributions(sample)
    encoded = outcome.bundle.encode(sample)
    return {
        "calibration": plots.calibration_plot(curves),
        "roc_pr": plots.roc_pr_plot(y, scores),
        "gain_lift_by_tier": plots.gain_lift_plot({"model": ev.backtest}),
        "tier_distribution": plots.tier_distribution_plot(ev.account_scores),
        "shap_win_model": plots.shap_beeswarm(win_contrib, encoded, "Win model (log-odds)"),
        "shap_value_model": plots.shap_beeswarm(
            value_contrib, encoded, "Deal-value model (log value)"
        ),
    }


def champion_on_window(outcome: TrainingOutcome, bundle: Bundle) -> dict[str, float]:
    """The champion's figures on the challenger's test window (same deals, same start date)."""
    from features.config import FeatureConfig

    cfg = outcome.config
    champion_features = FeatureConfig.model_validate(
        bundle.metadata.get("feature_config", cfg.features.model_dump(mode="json"))
    )
    same = champion_features == cfg.features
    result = evaluate_window(
        bundle,
        outcome.tables,
        outcome.test_deals,
        outcome.split.test_start,
        champion_features,
        deal_features=outcome.split.test if same else None,
        account_features=outcome.evaluation.extra.get("account_features") if same else None,
    )
    return result.metrics


def train(config: Config, *, progress: Progress | None = None) -> TrainResult:
    """Fit, evaluate, log one MLflow run, register a version (alias ``challenger``) and let the
    gate decide whether it becomes ``champion``."""
    import mlflow

    from training import registry

    outcome = fit_and_evaluate(config, progress=progress)
    mcfg = config.mlflow
    _step(progress, 6)
    client = registry.connect(mcfg)
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
                client, name, model_info.model_uri, run_id, outcome.metrics
            )
            champion = registry.alias_version(client, name, registry.CHAMPION)
            challenger_gate = GateMetrics.from_metrics(outcome.metrics)
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
                        [f"champion v{champion} could not be re-evaluated on this window: {exc}"],
                    )
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
        promoted=decision.passed,
        run_url=registry.run_url(uri, experiment_id, run_id),
        gate=decision,
        split=outcome.split.describe(),
        tracking_uri=uri,
        all_metrics=outcome.metrics,
    )
