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
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from tiering import store
from tiering.config import MlflowConfig, PromotionGate

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
PROJECT_TAG = "project"
"""The config ``name`` of the project whose versions a registered model holds."""
# Version tags that carry the key test figures, so listing versions needs no run look-ups.
KEY_METRICS = ("test_auc", "test_ece", "tier1_revenue_share", "value_mean_abs_log_error")


class RegistryError(ValueError):
    """A registry request that cannot be honoured (unknown version, nothing to roll back to)."""


# --------------------------------------------------------------------------- tracking
def tracking_uri(config: MlflowConfig) -> str:
    """``MLFLOW_TRACKING_URI`` wins over the config (e.g. a team's tracking server); a relative
    sqlite path is made absolute against the working directory."""
    return store.resolve_uri(config.tracking_uri)[0]


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
    db = store.sqlite_path(tracking_uri(config))
    if path.is_absolute():
        return path.as_uri()
    if db is not None:
        return (db.parent / path.name).resolve().as_uri()
    return None


def connect(config: MlflowConfig, *, create: bool = True) -> Any:
    """An ``MlflowClient`` bound to the configured store (tracking and registry URI), with no
    process-wide MLflow state set. ``create=False`` for commands that only read: a missing
    store is then a ``StoreNotFoundError`` naming the setting, not a new empty store."""
    return store.open_store(config.tracking_uri, create=create).client


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


def check_project(client: Any, name: str, project: str) -> None:
    """Refuse to train project ``project`` into a registered model that holds another
    project's versions: its champion was fitted on other data, so the gate could not compare
    the two, and scoring would then find the other project's model."""
    from mlflow.exceptions import MlflowException

    try:
        owner = client.get_registered_model(name).tags.get(PROJECT_TAG)
    except MlflowException:
        return  # not registered yet
    if owner is not None and owner != project:
        raise RegistryError(
            f"registered model {name!r} holds the models of project {owner!r}, and this "
            f"config's project is {project!r} (its `name`). Give each project its own: set "
            f'[mlflow] registered_model = "{project}" in this config (and a [history] url and '
            "[scoring] output and snapshot of its own), or run it from another folder."
        )


def register_version(
    client: Any,
    name: str,
    model_uri: str,
    run_id: str,
    metrics: dict[str, float],
    project: str,
) -> str:
    """A new version of ``name`` from ``model_uri``, with the key metrics as tags, aliased
    ``challenger``. The registered model is tagged with ``project`` (see ``check_project``)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description="Account tiering bundle: win + deal-value models, ICP, tier policy."
        )
    check_project(client, name, project)
    client.set_registered_model_tag(name, PROJECT_TAG, project)
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


# An alias move touches several registry objects (the alias, version tags, the history tag,
# the challenger alias). Each move is first written whole as this tag on the registered model,
# then applied, then the tag is removed: a move cut short by a kill is finished by the next
# ``repair_promotion`` (which every training run calls first), never left half-done.
PENDING_TAG = "pending_alias_move"


def _apply_move(client: Any, name: str, move: dict[str, Any]) -> None:
    """Apply a recorded alias move; every step is idempotent, so applying twice is harmless."""
    champion = str(move["champion"])
    client.set_registered_model_alias(name, CHAMPION, champion)
    for version, tags in move.get("tags", {}).items():
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, str(value)[:4900])
    _set_history(client, name, [str(v) for v in move["history"]])
    if alias_version(client, name, CHALLENGER) == champion:
        client.delete_registered_model_alias(name, CHALLENGER)
    client.delete_registered_model_tag(name, PENDING_TAG)


def _move(client: Any, name: str, move: dict[str, Any]) -> None:
    client.set_registered_model_tag(name, PENDING_TAG, json.dumps(move))
    _apply_move(client, name, move)


def repair_promotion(client: Any, name: str) -> str | None:
    """Finish an alias move a killed process left half-done; returns what was repaired.

    A recorded move is applied again whole. Without one (e.g. a store written by an older
    version), the invariants are restored: the champion is not also the challenger, and it is
    the last entry of ``champion_history``.
    """
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return None  # nothing registered yet
    pending = model.tags.get(PENDING_TAG)
    if pending:
        move = json.loads(pending)
        _apply_move(client, name, move)
        return f"finished the interrupted move of {CHAMPION!r} to v{move['champion']}"
    champion = alias_version(client, name, CHAMPION)
    if champion is None:
        return None
    repaired = []
    if alias_version(client, name, CHALLENGER) == champion:
        client.delete_registered_model_alias(name, CHALLENGER)
        repaired.append(f"v{champion} no longer {CHALLENGER!r} as well as {CHAMPION!r}")
    history = _history(client, name)
    if not history or history[-1] != champion:
        _set_history(client, name, [*history, champion])
        repaired.append(f"v{champion} recorded in {HISTORY_TAG}")
    return "; ".join(repaired) or None


def promote(client: Any, name: str, version: str, reason: str, *, by: str = "manual") -> str | None:
    """Move ``champion`` to ``version`` and record why, as one recorded step (see
    ``PENDING_TAG``); returns the previous champion."""
    version = str(version)
    _check_version(client, name, version)
    previous = alias_version(client, name, CHAMPION)
    now = _now()
    tags: dict[str, dict[str, str]] = {
        version: {
            "promotion_reason": reason,
            "promoted_at": now,
            "promoted_by": by,
            "last_event": f"{now} champion ({by}): {reason}",
        }
    }
    if previous is not None and previous != version:
        demoted = f"replaced by v{version}: {reason}"
        tags[previous] = {"demoted_reason": demoted, "last_event": f"{now} {demoted}"}
    history = _history(client, name)
    if not history or history[-1] != version:
        history.append(version)
    _move(client, name, {"champion": version, "history": history, "tags": tags})
    return previous


def rollback(client: Any, name: str, reason: str) -> tuple[str, str]:
    """Give ``champion`` back to the version that held it before the current one, as one
    recorded step. Returns (demoted version, restored version)."""
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
    now = _now()
    demoted = f"rolled back to v{restored}: {reason}"
    tags = {
        restored: {
            "rollback_reason": reason,
            "restored_at": now,
            "last_event": f"{now} champion again (rollback from v{current}): {reason}",
        },
        current: {"demoted_reason": demoted, "last_event": f"{now} {demoted}"},
    }
    _move(client, name, {"champion": restored, "history": history, "tags": tags})
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
    """Download a registered version's model through ``client``'s store and return the path
    of its bundle folder."""
    if (alias is None) == (version is None):
        raise ValueError("pass exactly one of alias or version")
    if alias is not None:
        found = alias_version(client, name, alias)
        if found is None:
            raise RegistryError(f"model {name!r} has no version aliased {alias!r}")
        version = found
    _check_version(client, name, str(version))
    local = store.version_folder(client, name, str(version), Path(dst))
    found_bundles = sorted(p.parent for p in local.rglob("bundle.json"))
    if not found_bundles:
        raise RegistryError(f"model {name!r} v{version}: no bundle in its artifacts")
    return found_bundles[0]


# --------------------------------------------------------------------------- run lifecycle
# Who owns a run: a later training marks RUNNING runs whose owner process is gone as FAILED.
OWNER_HOST_TAG = "tiering.host"
OWNER_PID_TAG = "tiering.pid"
# A RUNNING run without an owner (written by other tools or older versions) counts as
# orphaned only once it is older than this.
UNOWNED_RUN_TIMEOUT_S = 24 * 3600


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM during training: handled like Ctrl+C (the run is marked KILLED)."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def reap_orphaned_runs(client: Any, experiment_id: str) -> list[str]:
    """Mark as FAILED the runs left RUNNING by a training process that no longer exists
    (killed with SIGKILL, or its machine went down); returns their ids."""
    from mlflow.entities import RunStatus, ViewType

    host = socket.gethostname()
    now_ms = time.time() * 1000
    reaped = []
    for run in client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", run_view_type=ViewType.ALL
    ):
        tags = run.data.tags
        owner_pid = tags.get(OWNER_PID_TAG)
        if owner_pid is None:
            orphaned = now_ms - run.info.start_time > UNOWNED_RUN_TIMEOUT_S * 1000
        else:
            orphaned = tags.get(OWNER_HOST_TAG) == host and not _process_alive(int(owner_pid))
        if orphaned:
            client.set_tag(run.info.run_id, "tiering.end_reason", "orphaned: its process is gone")
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
            reaped.append(run.info.run_id)
    return reaped


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises ``TrainingInterrupted`` in the main thread for the block's duration."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise TrainingInterrupted(f"stopped by signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def training_run(
    client: Any, *, experiment_id: str, run_name: str, model_name: str
) -> Iterator[Any]:
    """One training run in ``client``'s store, ended with the status that is true.

    Before it starts: runs orphaned by killed trainings are marked FAILED and a half-finished
    alias move is completed. Inside the block MLflow's fluent API writes to ``client``'s store
    (and only there, only for the block). The run ends FINISHED, FAILED on an error, or KILLED
    on Ctrl+C / SIGTERM (which then propagate).
    """
    import mlflow
    from mlflow.entities import RunStatus

    reap_orphaned_runs(client, experiment_id)
    repair_promotion(client, model_name)
    owner = {OWNER_HOST_TAG: socket.gethostname(), OWNER_PID_TAG: str(os.getpid())}
    with store.fluent_bound_to(client.tracking_uri), _sigterm_interrupts():
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=owner)
        try:
            yield run
        except KeyboardInterrupt:
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
            raise
        except BaseException:
            mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
            raise
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
