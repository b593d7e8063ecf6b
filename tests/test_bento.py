"""The Bento that ships: the champion imported from a real MLflow registry into the BentoML
model store, a Bento built with the bundle and the account snapshot inside, served from an
empty folder after the MLflow store is gone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest

from support import LIVE_API_KEY, LiveDeployment, TrainedBundle, free_port, serving

BUILD = """
import sys
from pathlib import Path
from tiering.config import Config
from tiering_cli.score_cmd import resolve_model
from serving.bento import build_bento, export_bento, import_bundle

config = Config.model_validate_json(Path(sys.argv[1]).read_text())
loaded = resolve_model(config, "champion")
model_tag = import_bundle(loaded, Path(sys.argv[2]))
bento_tag = build_bento(model_tag)
export_bento(bento_tag, Path(sys.argv[3]))
print(bento_tag)
"""


def _register_champion(trained: TrainedBundle, folder: Path) -> object:
    """The session's bundle as the champion of a fresh MLflow store in ``folder``."""
    from training import registry

    mlflow_config = trained.config.mlflow.model_copy(
        update={
            "tracking_uri": f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}",
            "artifact_location": str(folder / "mlruns" / "artifacts"),
        }
    )
    client = registry.connect(mlflow_config)
    run = client.create_run(registry.ensure_experiment(client, mlflow_config))
    client.log_artifacts(run.info.run_id, str(trained.bundle_dir), "model/bundle")
    client.set_terminated(run.info.run_id)
    name = mlflow_config.registered_model
    version = registry.register_version(
        client, name, f"runs:/{run.info.run_id}/model", run.info.run_id, {}, trained.config.name
    )
    client.set_registered_model_alias(name, registry.CHAMPION, version)
    return trained.config.model_copy(update={"mlflow": mlflow_config})


@pytest.mark.slow
def test_the_built_bento_serves_score_with_no_mlflow_store(
    trained_bundle: TrainedBundle, live_deployment: LiveDeployment, tmp_path: Path
) -> None:
    config = _register_champion(trained_bundle, tmp_path)
    config_file = tmp_path / "config.json"
    config_file.write_text(config.model_dump_json())  # type: ignore[attr-defined]
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    for key in [k for k in env if k.startswith("TIERING_") or k.startswith("MLFLOW_")]:
        env.pop(key)
    archive = tmp_path / "dist" / "account_tiering.bento"
    built = subprocess.run(
        [
            sys.executable,
            "-c",
            BUILD,
            str(config_file),
            str(live_deployment.snapshot),
            str(archive),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    bento_tag = built.stdout.strip().splitlines()[-1]
    assert bento_tag.startswith("account_tiering:")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert any("account_tiering_bundle" in n and n.endswith("bundle.json") for n in names)
    assert any(n.endswith("snapshot.parquet") for n in names)
    assert any(n.endswith("serving/ui/templates/account.html") for n in names)

    # Another machine: a fresh BentoML home with only the archive, no MLflow store anywhere.
    shutil.rmtree(tmp_path / "mlruns")
    shutil.rmtree(tmp_path / "bentoml")
    env["BENTOML_HOME"] = str(tmp_path / "elsewhere")
    bentoml_cli = str(Path(sys.executable).parent / "bentoml")
    imported = subprocess.run(
        [bentoml_cli, "import", str(archive)], env=env, capture_output=True, text=True, timeout=120
    )
    assert imported.returncode == 0, imported.stderr[-2000:]
    clean = tmp_path / "clean"
    clean.mkdir()
    port = free_port()
    command = [bentoml_cli, "serve", bento_tag, "--host", "127.0.0.1", "--port", str(port)]
    served_env = {**env, "TIERING_API_KEY": LIVE_API_KEY}
    with serving(command, served_env, port, tmp_path / "bento.log", cwd=clean) as base:
        known = live_deployment.account_ids[0]
        body = {"accounts": [{"account_id": known}, {"industry": "Healthcare", "employees": 900}]}
        response = httpx.post(
            f"{base}/score", json=body, headers={"X-API-Key": LIVE_API_KEY}, timeout=30
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        assert [a["source"] for a in answer["accounts"]] == ["snapshot", "fields"]
        assert answer["model_version"] == "1"  # the registry version it was built from
        info = httpx.get(f"{base}/model", headers={"X-API-Key": LIVE_API_KEY}, timeout=30).json()
        assert "account_tiering_bundle" in info["source"]
    assert list(clean.iterdir()) == []


def test_build_without_a_snapshot_says_to_score_first(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tiering_cli.main import app

    config = tmp_path / "deployment.toml"
    config.write_text(
        "[data.accounts]\npath = 'a.csv'\n[data.opportunities]\npath = 'o.csv'\n"
        f"[scoring]\nsnapshot = '{tmp_path / 'absent.parquet'}'\n"
    )
    result = CliRunner().invoke(app, ["build", "--config", str(config)])
    assert result.exit_code == 2
    assert "tiering score" in result.output and "Traceback" not in result.output
