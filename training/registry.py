"""MLflow plumbing: where runs go, the registered model, its ``champion`` / ``challenger``
aliases, the promotion gate, promotion and rollback with the reason recorded.

Every alias move is recorded twice: as tags on the model version (``promotion_reason``,
``promoted_at``, ``gate``, ...) so `tiering models` can show why a version is where it is, and
in the registered model's ``champion_history`` tag (versions that held ``champion``, oldest
first), which is what ``rollback`` walks back along.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from tiering.config import MlflowConfig, PromotionGate

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
# Version tags that carry the key test figures, so listing versions needs no run look-ups.
KEY_METRICS = ("test_auc", "test_ece", "tier1_revenue_share", "value_mean_abs_log_error")


class RegistryError(ValueError):
    """A registry request that cannot be honoured (unknown version, nothing to roll back to)."""


# --------------------------------------------------------------------------- tracking
def tracking_uri(config: MlflowConfig) -> str:
    """``MLFLOW_TRACKING_URI`` wins over the config (e.g. a team's tracking server)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or config.tracking_uri


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


def artifact_root(config: MlflowConfig) -> str | None:
    """Where a new experiment's artifacts go.

    A URI is used as given. With a local sqlite store, a relative path lives beside the
    database (``<db folder>/<last part of the path>``: the default ``mlruns/mlflow.db`` +
    ``mlruns/artifacts`` stays in ``mlruns/``, and a store moved with MLFLOW_TRACKING_URI takes
    its artifacts along). With a tracking server, the server's own default is used unless an
    absolute path is configured.
    """
    location = config.artifact_location
    if "://" in location:
        return location
    path = Path(location)
    db = _sqlite_path(tracking_uri(config))
    if path.is_absolute():
        return path.as_uri()
    if db is not None:
        return (db.parent / path.name).resolve().as_uri()
    return None


def connect(config: MlflowConfig) -> Any:
    """Point MLflow at the configured store (creating a local sqlite folder if needed) and
    return an ``MlflowClient``. Called at run time only, never at import."""
    import mlflow
    from mlflow import MlflowClient

    # Downloads of model artifacts would otherwise draw progress bars into the CLI's output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri(config)
    db = _sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    user_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # set_tracking_uri also exports MLFLOW_TRACKING_URI; left there, it would override the
    # next config's store in this process (the environment wins over the config, above).
    if user_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_env
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: Any, config: MlflowConfig) -> str:
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is not None:
        return str(experiment.experiment_id)
    return str(client.create_experiment(config.experiment, artifact_location=artifact_root(config)))


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """A link to the run in the MLflow UI (for a local store: after `mlflow ui`)."""
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}"


def ui_command(uri: str) -> str:
    return f"mlflow ui --backend-store-uri {uri}"


# --------------------------------------------------------------------------- the gate
@dataclass(frozen=True)
class GateMetrics:
    """What the gate compares, measured on ONE test window for both models."""

    auc: float  # of P(convert in H) on the test snapshots
    ece: float
    tier1_capture: float  # share of the window's won revenue in Tier 1
    # The best naive account ranking's capture at Tier 1's size, on the same window.
    baseline_capture: float = float("nan")
    baseline_name: str = ""

    @classmethod
    def from_metrics(cls, metrics: dict[str, float], baseline_name: str = "") -> GateMetrics:
        return cls(
            auc=float(metrics["test_auc"]),
            ece=float(metrics["test_ece"]),
            tier1_capture=float(metrics["tier1_revenue_share"]),
            baseline_capture=float(metrics.get("best_baseline_tier1_capture", float("nan"))),
            baseline_name=baseline_name,
        )


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    challenger: GateMetrics | None = None
    champion: GateMetrics | None = None

    def summary(self) -> str:
        verdict = "passed" if self.passed else "failed"
        return f"gate {verdict}: " + "; ".join(self.reasons)


def gate_decision(
    challenger: GateMetrics, champion: GateMetrics | None, gate: PromotionGate
) -> GateDecision:
    """The challenger passes unless a naive account baseline beats its Tier 1 by more than
    ``max_baseline_shortfall`` (a model that a one-line ranking beats is not worth serving, first
    model or not), or it is worse than the champion by more than a tolerance on any of AUC, ECE
    or Tier 1 revenue capture. No champion and no baseline win: it passes."""
    reasons, passed = [], True
    if not math.isnan(challenger.baseline_capture):
        short = challenger.baseline_capture - challenger.tier1_capture
        ok = short <= gate.max_baseline_shortfall + 1e-12
        passed &= ok
        reasons.append(
            f"Tier 1 revenue capture {challenger.tier1_capture:.4f} vs best naive baseline "
            f"'{challenger.baseline_name or 'baseline'}' {challenger.baseline_capture:.4f} at the same size "
            f"({'ok' if ok else 'FAIL'}: "
            f"{'beaten by ' + format(short, '.4f') if short > 0 else 'ahead by ' + format(-short, '.4f')}"
            f", shortfall allowed up to {gate.max_baseline_shortfall:.4f})"
        )
    if champion is None:
        reasons.append(
            "no champion yet: the first model becomes champion if it beats the baselines"
        )
        return GateDecision(passed, reasons, challenger)
    checks = [
        (
            "AUC",
            challenger.auc - champion.auc,
            -gate.max_auc_drop,
            "drop",
            challenger.auc,
            champion.auc,
        ),
        (
            "ECE",
            champion.ece - challenger.ece,
            -gate.max_ece_rise,
            "rise",
            challenger.ece,
            champion.ece,
        ),
        (
            "Tier 1 revenue capture",
            challenger.tier1_capture - champion.tier1_capture,
            -gate.max_tier1_capture_drop,
            "drop",
            challenger.tier1_capture,
            champion.tier1_capture,
        ),
    ]
    for name, better_by, floor, word, new, old in checks:
        ok = better_by >= floor - 1e-12
        passed &= ok
        reasons.append(
            f"{name} {new:.4f} vs champion {old:.4f} "
            f"({'ok' if ok else 'FAIL'}: {word} allowed up to {abs(floor):.4f})"
        )
    return GateDecision(passed, reasons, challenger, champion)


# --------------------------------------------------------------------------- registry
def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _note(client: Any, name: str, version: str, text: str) -> None:
    """The latest thing that happened to a version, shown by `tiering models`."""
    client.set_model_version_tag(name, version, "last_event", f"{_now()} {text}"[:4900])


def _history(client: Any, name: str) -> list[str]:
    tags = client.get_registered_model(name).tags
    try:
        return [str(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]
    except json.JSONDecodeError:
        return []


def _set_history(client: Any, name: str, history: list[str]) -> None:
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))


def alias_version(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def register_version(
    client: Any, name: str, model_uri: str, run_id: str, metrics: dict[str, float]
) -> str:
    """A new version of ``name`` from ``model_uri``, with the key metrics as tags, aliased
    ``challenger``."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description="Account tiering bundle: win + deal-value models, ICP, tier policy."
        )
    tags = {k: f"{metrics[k]:.6g}" for k in KEY_METRICS if k in metrics}
    version = client.create_model_version(name, model_uri, run_id=run_id, tags=tags)
    client.set_registered_model_alias(name, CHALLENGER, str(version.version))
    return str(version.version)


def _check_version(client: Any, name: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        known = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        raise RegistryError(
            f"model {name!r} has no version {version!r} (versions: {known or 'none'})"
        ) from None


def promote(client: Any, name: str, version: str, reason: str, *, by: str = "manual") -> str | None:
    """Move ``champion`` to ``version`` and record why; returns the previous champion."""
    version = str(version)
    _check_version(client, name, version)
    previous = alias_version(client, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    client.set_model_version_tag(name, version, "promoted_at", _now())
    client.set_model_version_tag(name, version, "promoted_by", by)
    _note(client, name, version, f"champion ({by}): {reason}")
    if previous is not None and previous != version:
        demoted = f"replaced by v{version}: {reason}"
        client.set_model_version_tag(name, previous, "demoted_reason", demoted)
        _note(client, name, previous, demoted)
    history = _history(client, name)
    if not history or history[-1] != version:
        history.append(version)
    _set_history(client, name, history)
    if alias_version(client, name, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    return previous


def rollback(client: Any, name: str, reason: str) -> tuple[str, str]:
    """Give ``champion`` back to the version that held it before the current one.
    Returns (demoted version, restored version)."""
    history = _history(client, name)
    current = alias_version(client, name, CHAMPION)
    if current is None:
        raise RegistryError(f"model {name!r} has no champion to roll back")
    # Walk back past the current champion (it is the last entry unless someone moved the
    # alias by hand, in which case the history still says what came before it).
    while history and history[-1] == current:
        history.pop()
    if not history:
        raise RegistryError(f"model {name!r}: no previous champion recorded before v{current}")
    restored = history[-1]
    client.set_registered_model_alias(name, CHAMPION, restored)
    client.set_model_version_tag(name, restored, "rollback_reason", reason)
    client.set_model_version_tag(name, restored, "restored_at", _now())
    demoted = f"rolled back to v{restored}: {reason}"
    client.set_model_version_tag(name, current, "demoted_reason", demoted)
    _note(client, name, restored, f"champion again (rollback from v{current}): {reason}")
    _note(client, name, current, demoted)
    _set_history(client, name, history)
    return current, restored


def record_gate(client: Any, name: str, version: str, decision: GateDecision) -> None:
    client.set_model_version_tag(name, version, "gate", "passed" if decision.passed else "failed")
    client.set_model_version_tag(name, version, "gate_reasons", " | ".join(decision.reasons)[:4900])
    if not decision.passed:
        _note(client, name, version, "challenger: " + decision.summary())


def list_versions(client: Any, name: str) -> pd.DataFrame:
    """One row per version, newest first: aliases, key metrics, gate result, reasons."""
    versions = client.search_model_versions(f"name='{name}'")
    aliases: dict[str, list[str]] = {}
    if versions:
        # Search results do not carry aliases on every store; the registered model does.
        for alias, version in client.get_registered_model(name).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in versions:
        tags = dict(mv.tags or {})
        row: dict[str, Any] = {
            "version": int(mv.version),
            "aliases": ", ".join(sorted(aliases.get(str(mv.version), []))),
            "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).strftime(
                "%Y-%m-%d %H:%M"
            ),
            "run_id": mv.run_id,
        }
        for key in KEY_METRICS:
            row[key] = float(tags[key]) if key in tags else float("nan")
        row["gate"] = tags.get("gate", "")
        row["reason"] = tags.get("last_event", "")
        rows.append(row)
    columns = ["version", "aliases", "created", "run_id", *KEY_METRICS, "gate", "reason"]
    return (
        pd.DataFrame(rows, columns=columns)
        .sort_values("version", ascending=False)
        .reset_index(drop=True)
    )


def download_bundle(
    client: Any, name: str, *, alias: str | None = None, version: str | None = None, dst: str | Path
) -> Path:
    """Download a registered version's model and return the path of its bundle folder."""
    import mlflow

    if (alias is None) == (version is None):
        raise ValueError("pass exactly one of alias or version")
    if alias is not None:
        found = alias_version(client, name, alias)
        if found is None:
            raise RegistryError(f"model {name!r} has no version aliased {alias!r}")
        version = found
    _check_version(client, name, str(version))
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)
        )
    )
    found_bundles = sorted(p.parent for p in local.rglob("bundle.json"))
    if not found_bundles:
        raise RegistryError(f"model {name!r} v{version}: no bundle in its artifacts")
    return found_bundles[0]
