"""Risk: a worse model silently replaces the champion, a better one is held back, a rollback
restores the wrong version, or an alias moves without the reason being recorded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tiering.config import MlflowConfig, PromotionGate
from tiering.store import StoreNotFoundError
from training import registry
from training.registry import GateMetrics, RegistryError, gate_decision

GATE = PromotionGate(max_auc_drop=0.005, max_ece_rise=0.005, max_tier1_capture_drop=0.02)
CHAMPION = GateMetrics(auc=0.80, ece=0.010, tier1_capture=0.60)


@pytest.mark.parametrize(
    ("challenger", "passes"),
    [
        (GateMetrics(0.81, 0.008, 0.62), True),  # better everywhere
        (GateMetrics(0.796, 0.014, 0.59), True),  # worse, within every tolerance
        (GateMetrics(0.79, 0.010, 0.60), False),  # AUC drops 0.01 > 0.005
        (GateMetrics(0.80, 0.020, 0.60), False),  # ECE rises 0.01 > 0.005
        (GateMetrics(0.85, 0.005, 0.55), False),  # better model, Tier 1 captures 5 points less
    ],
    ids=["better", "within-tolerance", "auc-drop", "ece-rise", "capture-drop"],
)
def test_gate_compares_each_figure_with_its_tolerance(
    challenger: GateMetrics, passes: bool
) -> None:
    decision = gate_decision(challenger, CHAMPION, GATE)
    assert decision.passed is passes
    assert len(decision.reasons) == 3
    assert any("FAIL" in r for r in decision.reasons) is not passes


def test_first_model_passes_the_gate() -> None:
    decision = gate_decision(GateMetrics(0.5, 0.3, 0.1), None, GATE)
    assert decision.passed and "first model" in decision.reasons[0]


# --------------------------------------------------------------------------- the registry
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # One temporary store for the module (creating the sqlite schema takes seconds); each
    # test registers its own model name.
    tmp_path = tmp_path_factory.mktemp("mlflow")
    config = MlflowConfig(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "artifacts"),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        client = registry.connect(config)
        client.experiment_id = registry.ensure_experiment(client, config)
    return client


@pytest.fixture
def client(store: Any) -> Any:
    return store


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    return request.node.name.removeprefix("test_")[:60]


def new_version(client: Any, name: str, metrics: GateMetrics) -> str:
    """A registered version with the given test figures (the artifact itself does not matter),
    written through the client alone: nothing lands in MLflow's default store."""
    run = client.create_run(client.experiment_id)
    client.log_text(run.info.run_id, "stand-in", "model/README.txt")
    client.set_terminated(run.info.run_id)
    figures = {
        "test_auc": metrics.auc,
        "test_ece": metrics.ece,
        "tier1_revenue_share": metrics.tier1_capture,
    }
    return registry.register_version(
        client, name, f"runs:/{run.info.run_id}/model", run.info.run_id, figures, "test"
    )


def gate_and_promote(client: Any, name: str, version: str, metrics: GateMetrics) -> bool:
    """What training does after registering: gate against the champion, promote on a pass."""
    champion = registry.alias_version(client, name, registry.CHAMPION)
    champion_metrics = None
    if champion is not None:
        tags = client.get_model_version(name, champion).tags
        champion_metrics = GateMetrics(
            float(tags["test_auc"]), float(tags["test_ece"]), float(tags["tier1_revenue_share"])
        )
    decision = gate_decision(metrics, champion_metrics, GATE)
    registry.record_gate(client, name, version, decision)
    if decision.passed:
        registry.promote(client, name, version, decision.summary(), by="gate")
    return decision.passed


def test_worse_challenger_stays_challenger_better_one_is_promoted(client: Any, name: str) -> None:
    v1 = new_version(client, name, CHAMPION)
    assert registry.alias_version(client, name, registry.CHALLENGER) == v1
    assert gate_and_promote(client, name, v1, CHAMPION)
    assert registry.alias_version(client, name, registry.CHAMPION) == v1

    worse = GateMetrics(0.70, 0.05, 0.40)
    v2 = new_version(client, name, worse)
    assert not gate_and_promote(client, name, v2, worse)
    assert registry.alias_version(client, name, registry.CHAMPION) == v1
    assert registry.alias_version(client, name, registry.CHALLENGER) == v2
    assert client.get_model_version(name, v2).tags["gate"] == "failed"

    better = GateMetrics(0.83, 0.008, 0.66)
    v3 = new_version(client, name, better)
    assert gate_and_promote(client, name, v3, better)
    assert registry.alias_version(client, name, registry.CHAMPION) == v3
    assert "AUC 0.8300" in client.get_model_version(name, v3).tags["promotion_reason"]

    listed = registry.list_versions(client, name).set_index("version")
    assert listed.loc[int(v3), "aliases"] == "champion"
    assert listed.loc[int(v2), "gate"] == "failed"
    assert listed.loc[int(v1), "test_auc"] == pytest.approx(0.80)


def test_rollback_restores_the_previous_champion_and_records_why(client: Any, name: str) -> None:
    v1 = new_version(client, name, CHAMPION)
    gate_and_promote(client, name, v1, CHAMPION)
    v2 = new_version(client, name, CHAMPION)
    registry.promote(client, name, v2, "manual: new pricing data", by="manual")
    assert registry.alias_version(client, name, registry.CHAMPION) == v2

    demoted, restored = registry.rollback(client, name, "v2 mis-tiers the enterprise segment")
    assert (demoted, restored) == (v2, v1)
    assert registry.alias_version(client, name, registry.CHAMPION) == v1
    assert (
        client.get_model_version(name, v1).tags["rollback_reason"]
        == "v2 mis-tiers the enterprise segment"
    )
    assert "rolled back" in client.get_model_version(name, v2).tags["demoted_reason"]
    # nothing before v1: a second rollback is refused, the champion stays
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback(client, name, "again")
    assert registry.alias_version(client, name, registry.CHAMPION) == v1


def test_promoting_an_unknown_version_is_a_clear_error(client: Any, name: str) -> None:
    new_version(client, name, CHAMPION)
    with pytest.raises(RegistryError, match="no version '9'"):
        registry.promote(client, name, "9", "typo")


def test_env_tracking_uri_overrides_the_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'team.db'}")
    config = MlflowConfig(artifact_location="mlruns/artifacts")
    assert registry.tracking_uri(config) == f"sqlite:///{tmp_path / 'team.db'}"
    # artifacts follow the store instead of landing in the working directory
    assert registry.artifact_root(config) == (tmp_path / "artifacts").as_uri()


def test_connecting_to_one_store_does_not_redirect_the_next(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # MLflow exports the URI it is given; read back as "the user's environment", it would send
    # the next training of this process into the previous store.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}")
    second = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}")
    registry.connect(first)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert registry.tracking_uri(second) == second.tracking_uri


# --------------------------------------------------------------------------- through training
@pytest.mark.slow
def test_training_gates_the_challenger_against_the_champion_on_its_own_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.pipeline import train

    from support import training_config, write_small_demo

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = training_config(write_small_demo(tmp_path / "demo", n_accounts=800, seed=5))
    first = train(config)
    assert first.promoted and first.version == "1"

    # A crippled challenger: one tiny boosting step barely ranks the deals.
    weak = config.model_copy(
        update={
            "training": config.training.model_copy(
                update={"num_boost_round": 1, "learning_rate": 0.001}
            )
        }
    )
    second = train(weak)
    assert not second.promoted
    assert any("AUC" in r and "FAIL" in r for r in second.gate.reasons)
    # the champion was re-evaluated on the challenger's test window: its figures there are
    # exactly its own (same data, same window), logged in the challenger's run
    client = registry.connect(config.mlflow, create=False)
    run = client.get_run(second.run_id)
    assert run.data.metrics["champion_v1_test_auc"] == pytest.approx(first.all_metrics["test_auc"])
    assert registry.alias_version(client, config.mlflow.registered_model, registry.CHAMPION) == "1"
    assert (
        registry.alias_version(client, config.mlflow.registered_model, registry.CHALLENGER) == "2"
    )

    # Another project in the same folder, on the same default registered model: refused
    # before anything is fitted, and naming the setting that keeps the two apart.
    other = config.model_copy(update={"name": "maven-flat"})
    with pytest.raises(RegistryError, match='registered_model = "maven-flat"') as refused:
        train(other)
    assert repr(config.name) in str(refused.value)
    assert registry.alias_version(client, config.mlflow.registered_model, registry.CHALLENGER) == (
        "2"
    )
    # ...and the other project's scoring does not take this project's champion for its own.
    from serving.model_loader import ModelNotFoundError, champion_uri, load_model

    uri = champion_uri(config.mlflow.registered_model)
    store = config.mlflow.tracking_uri
    assert load_model(bundle_dir=None, model_uri=uri, registry=store, project=config.name)
    with pytest.raises(ModelNotFoundError, match="trained for project"):
        load_model(bundle_dir=None, model_uri=uri, registry=store, project="maven-flat")


# --------------------------------------------------------------------------- one way in
def test_reading_a_missing_store_names_the_setting_and_creates_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    config = MlflowConfig(tracking_uri="sqlite:///nowhere/mlflow.db")
    with pytest.raises(StoreNotFoundError) as refused:
        registry.connect(config, create=False)
    assert "[mlflow] tracking_uri" in str(refused.value)
    assert "MLFLOW_TRACKING_URI" in str(refused.value)
    assert str(tmp_path / "nowhere" / "mlflow.db") in str(refused.value)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'team' / 'mlflow.db'}")
    with pytest.raises(StoreNotFoundError, match="environment variable MLFLOW_TRACKING_URI"):
        registry.connect(config, create=False)
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


def test_connecting_sets_no_process_wide_mlflow_state(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    client = registry.connect(MlflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert client.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert client._registry_uri == client.tracking_uri
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before
    assert "MLFLOW_TRACKING_URI" not in os.environ


# --------------------------------------------------------------------------- interrupted work
def test_a_promotion_cut_short_is_finished_by_the_repair(client: Any, name: str) -> None:
    v1 = new_version(client, name, CHAMPION)
    registry.promote(client, name, v1, "first", by="gate")
    v2 = new_version(client, name, CHAMPION)
    # What a kill after the first step of the old promotion left: v2 holds both aliases
    # while the history still says ["1"].
    client.set_registered_model_alias(name, registry.CHAMPION, v2)
    assert registry.alias_version(client, name, registry.CHALLENGER) == v2

    assert registry.repair_promotion(client, name)
    assert registry.alias_version(client, name, registry.CHAMPION) == v2
    assert registry.alias_version(client, name, registry.CHALLENGER) is None
    assert json.loads(client.get_registered_model(name).tags[registry.HISTORY_TAG]) == [v1, v2]
    assert registry.repair_promotion(client, name) is None  # consistent now: nothing to do


def test_a_recorded_move_interrupted_before_any_step_is_applied_whole(
    client: Any, name: str
) -> None:
    v1 = new_version(client, name, CHAMPION)
    registry.promote(client, name, v1, "first", by="gate")
    v2 = new_version(client, name, CHAMPION)
    move = {
        "champion": v2,
        "history": [v1, v2],
        "tags": {v2: {"promotion_reason": "better"}, v1: {"demoted_reason": "replaced"}},
    }
    client.set_registered_model_tag(name, registry.PENDING_TAG, json.dumps(move))

    assert "interrupted" in (registry.repair_promotion(client, name) or "")
    assert registry.alias_version(client, name, registry.CHAMPION) == v2
    assert registry.alias_version(client, name, registry.CHALLENGER) is None
    assert client.get_model_version(name, v2).tags["promotion_reason"] == "better"
    assert client.get_model_version(name, v1).tags["demoted_reason"] == "replaced"
    assert registry.PENDING_TAG not in client.get_registered_model(name).tags
    # and the rollback walks back along the repaired history
    assert registry.rollback(client, name, "undo") == (v2, v1)


def test_a_run_whose_process_is_gone_is_marked_failed(client: Any) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = gone.stdout.strip()
    run = client.create_run(
        client.experiment_id,
        tags={registry.OWNER_HOST_TAG: socket.gethostname(), registry.OWNER_PID_TAG: dead_pid},
    )
    alive = client.create_run(
        client.experiment_id,
        tags={
            registry.OWNER_HOST_TAG: socket.gethostname(),
            registry.OWNER_PID_TAG: str(os.getpid()),
        },
    )

    reaped = registry.reap_orphaned_runs(client, client.experiment_id)

    assert run.info.run_id in reaped and alive.info.run_id not in reaped
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    client.set_terminated(alive.info.run_id)


RUN_UNTIL_KILLED = """
import sys, time
from tiering.config import MlflowConfig
from training import registry
config = MlflowConfig(tracking_uri=sys.argv[1], artifact_location=sys.argv[2])
client = registry.connect(config)
experiment = registry.ensure_experiment(client, config)
with registry.training_run(client, experiment_id=experiment, run_name="killed", model_name="m") as run:
    print(run.info.run_id, flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_training_run_killed_by_a_signal_is_marked_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: signal.Signals
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_UNTIL_KILLED, uri, str(tmp_path / "artifacts")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert process.stdout is not None
    run_id = process.stdout.readline().strip()
    assert run_id, process.stderr.read() if process.stderr else ""
    process.send_signal(sig)
    process.wait(timeout=60)

    assert process.returncode != 0
    client = registry.connect(MlflowConfig(tracking_uri=uri), create=False)
    assert client.get_run(run_id).info.status == "KILLED"
