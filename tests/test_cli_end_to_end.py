"""Risk: the main job breaks between its steps: `tiering demo` on a fresh folder must generate,
validate, train, register, score and show reasons, and leave a champion the other commands see."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from support import DEMO_CONFIG

TIERING = Path(sys.executable).parent / "tiering"


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [str(TIERING), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_demo_runs_end_to_end_in_a_fresh_folder(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    shutil.copy(DEMO_CONFIG, tmp_path / "configs" / "demo.toml")

    demo = run(tmp_path, "demo", "--accounts", "400", "--top", "2")

    assert demo.returncode == 0, demo.stdout + demo.stderr
    for step in ("1/4 Demo CRM", "2/4 Data contract", "3/4 Train", "4/4 Tier every account"):
        assert step in demo.stdout
    assert "promoted to champion" in demo.stdout
    assert demo.stdout.count("Tier 1 · A-") == 2
    assert "Why this tier:" in demo.stdout and "Playbook:" in demo.stdout

    scores = pd.read_parquet(tmp_path / "outputs" / "tiers.parquet")
    assert len(scores) == 400 and set(scores["tier"]) == {1, 2, 3}
    crm = pd.read_csv(tmp_path / "outputs" / "tiers_crm.csv")
    assert list(crm["account_id"]) == list(scores["account_id"])
    assert (tmp_path / "outputs" / "account_snapshot.parquet").is_file()
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()

    models = run(tmp_path, "models")
    assert models.returncode == 0, models.stderr
    assert "champion" in models.stdout

    # only one version: nothing to roll back to, said clearly
    rollback = run(tmp_path, "rollback", "--reason", "test")
    assert rollback.returncode == 2
    assert "error:" in rollback.stderr and "Traceback" not in rollback.stderr
