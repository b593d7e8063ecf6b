"""Batch scoring of the whole account list: tiers are over the whole list even though the work
is chunked, every promised column is written, and a run that dies half-way (an error, or a
kill) leaves no partial file while a rerun completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from serving.batch import (
    CRM_COLUMNS,
    CRM_HISTORY_COLUMNS,
    crm_path,
    read_snapshot,
    score_accounts,
)
from serving.tier_changes import HISTORY_COLUMNS
from tiering.bundle import Bundle
from tiering.config import Config

from support import TrainedBundle


@pytest.fixture(scope="module")
def trained(
    trained_bundle: TrainedBundle, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Config, Path]:
    config = trained_bundle.config_writing_to(tmp_path_factory.mktemp("batch"))
    return config, trained_bundle.bundle_dir


def outputs(out: Path, config: Config) -> list[Path]:
    return [out, crm_path(out), config.scoring.snapshot]


def test_outputs_carry_every_promised_column(trained: tuple[Config, Path], tmp_path: Path) -> None:
    from tiering.customers import CUSTOMER_COLUMNS
    from tiering.scoring import OUTPUT_COLUMNS, REASON_COLUMNS

    batch_columns = [*OUTPUT_COLUMNS, *CUSTOMER_COLUMNS, "customer_change_reason"]
    config, bundle_dir = trained
    config = config.model_copy(
        update={
            "scoring": config.scoring.model_copy(update={"snapshot": tmp_path / "snap.parquet"})
        }
    )
    bundle = Bundle.load(bundle_dir)
    result = score_accounts(config, bundle, out=tmp_path / "tiers.parquet")

    scores = pd.read_parquet(result.output)
    assert list(scores.columns) == batch_columns + REASON_COLUMNS + HISTORY_COLUMNS
    assert list(result.scores.columns) == batch_columns
    assert scores["account_id"].is_unique
    assert scores["tier"].isin([1, 2, 3]).all()
    drivers = json.loads(scores["reasons"].iloc[0])
    assert {"field", "label", "text", "effect_points", "direction"} <= set(drivers[0])

    crm = pd.read_csv(result.crm)
    assert list(crm.columns) == [*CRM_COLUMNS, *CRM_HISTORY_COLUMNS]
    assert len(crm) == len(scores)
    assert crm["reason_summary"].str.startswith("Tier ").all()

    snapshot = read_snapshot(result.snapshot)
    assert set(bundle.feature_names) <= set(snapshot.features.columns)
    assert snapshot.features.index.is_unique and len(snapshot.features) == len(scores)
    assert snapshot.as_of == result.as_of
    # An account nobody knows: no deals yet, history features at their cold-start values.
    assert snapshot.cold_start["prior_won"] == 0


def test_tiers_are_assigned_over_the_whole_list_not_per_chunk(
    trained: tuple[Config, Path], tmp_path: Path
) -> None:
    from features.build import build_features, scoring_requests
    from features.contract import load_tables
    from tiering.scoring import score

    config, bundle_dir = trained
    bundle = Bundle.load(bundle_dir)
    result = score_accounts(
        config, bundle, out=tmp_path / "t.parquet", snapshot=tmp_path / "s.parquet"
    )
    chunked = pd.read_parquet(result.output)
    tables = load_tables(config.data).tables
    features = build_features(
        tables, scoring_requests(tables.accounts, tables.end_of_data()), config.features
    )
    whole = score(bundle, features, reasons=True, population=True)

    n = len(whole)
    assert config.scoring.chunk_size < n  # the run above really was chunked
    np.testing.assert_array_equal(chunked["tier"].to_numpy(), whole["tier"].to_numpy())
    np.testing.assert_allclose(chunked["priority"], whole["priority"])
    assert chunked["reason_summary"].tolist() == whole["reason_summary"].tolist()
    assert chunked["tier_rule_text"].tolist() == whole["tier_rule_text"].tolist()
    sizes = np.bincount(chunked["tier"], minlength=4)[1:]
    assert sizes[0] + sizes[1] + sizes[2] == n


def test_csv_output_by_extension(trained: tuple[Config, Path], tmp_path: Path) -> None:
    config, bundle_dir = trained
    result = score_accounts(
        config, Bundle.load(bundle_dir), out=tmp_path / "tiers.csv", snapshot=tmp_path / "s.parquet"
    )
    frame = pd.read_csv(result.output)
    assert len(frame) == len(result.scores)
    assert frame["playbook"].str.contains("; ").any()


def test_an_error_half_way_leaves_the_previous_outputs_untouched(
    trained: tuple[Config, Path], tmp_path: Path
) -> None:
    config, bundle_dir = trained
    bundle = Bundle.load(bundle_dir)
    out = tmp_path / "tiers.parquet"
    snap = tmp_path / "snap.parquet"
    score_accounts(config, bundle, out=out, snapshot=snap)
    before = {p: p.read_bytes() for p in (out, crm_path(out), snap)}

    def fail_in_second_chunk(stage: str, done: int, total: int) -> None:
        if stage == "reasons" and done > config.scoring.chunk_size:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        score_accounts(config, bundle, out=out, snapshot=snap, progress=fail_in_second_chunk)
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in before)


KILLED_RUN = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from serving.batch import score_accounts
    from tiering.bundle import Bundle
    from tiering.config import Config

    config = Config.model_validate_json(Path(sys.argv[1]).read_text())

    def stall_after_first_file(stage, done, total):
        if stage == "write" and done == 1:
            print("first file written", flush=True)
            time.sleep(120)

    score_accounts(config, Bundle.load(sys.argv[2]), out=Path(sys.argv[3]),
                   snapshot=Path(sys.argv[4]), progress=stall_after_first_file)
    """
)


def test_a_run_killed_while_writing_leaves_no_file_and_a_rerun_completes(
    trained: tuple[Config, Path], tmp_path: Path
) -> None:
    config, bundle_dir = trained
    out_dir = tmp_path / "outputs"
    out, snap = out_dir / "tiers.parquet", out_dir / "snapshot.parquet"
    (tmp_path / "config.json").write_text(config.model_dump_json())
    (tmp_path / "run.py").write_text(KILLED_RUN)
    run = subprocess.Popen(
        [
            sys.executable,
            str(tmp_path / "run.py"),
            str(tmp_path / "config.json"),
            str(bundle_dir),
            str(out),
            str(snap),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        assert run.stdout is not None
        line = run.stdout.readline()
        assert line.strip() == "first file written", run.stderr.read() if run.stderr else ""
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    # The scores were complete on disk, but only under a temporary name: nothing is final.
    for path in (out, crm_path(out), snap):
        assert not path.exists()

    result = score_accounts(config, Bundle.load(bundle_dir), out=out, snapshot=snap)
    assert pd.read_parquet(out)["account_id"].tolist() == result.scores["account_id"].tolist()
    assert crm_path(out).exists() and snap.exists()
    # The killed run's temporary file is cleaned up by the rerun.
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [out.name, crm_path(out).name, snap.name]
    )


def _toml_config(config: Config, root: Path) -> Path:
    data = config.data
    criteria = "\n".join(
        textwrap.dedent(
            f"""
            [[icp.criteria]]
            label = {json.dumps(c.label)}
            column = {json.dumps(c.column)}
            op = {json.dumps(c.op)}
            """
        )
        + (f"values = {json.dumps(c.values)}\n" if c.values else "")
        + (f"min = {c.min}\n" if c.min is not None else "")
        for c in config.icp.criteria
    )
    text = textwrap.dedent(
        f"""
        [data.accounts]
        path = {json.dumps(str(data.accounts.path))}
        [data.opportunities]
        path = {json.dumps(str(data.opportunities.path))}
        [data.activities]
        path = {json.dumps(str(data.activities.path if data.activities else ""))}
        [features]
        technographics = {json.dumps(config.features.technographics)}
        [training]
        num_boost_round = 60
        early_stopping_rounds = 20
        n_jobs = 1
        [mlflow]
        tracking_uri = {json.dumps(f"sqlite:///{root / 'mlruns.db'}")}
        artifact_location = {json.dumps(str(root / "artifacts"))}
        [scoring]
        chunk_size = 120
        snapshot = {json.dumps(str(root / "outputs" / "snapshot.parquet"))}
        """
    )
    path = root / "deployment.toml"
    path.write_text(text + criteria)
    return path


def _cli() -> typer.Typer:
    from tiering_cli.score_cmd import score

    app = typer.Typer()
    app.command()(score)
    return app


def test_score_command_with_a_bundle_folder_prints_the_tier_summary(
    trained: tuple[Config, Path], tmp_path: Path
) -> None:
    config, bundle_dir = trained
    path = _toml_config(config, tmp_path)
    out = tmp_path / "outputs" / "tiers.parquet"
    result = CliRunner().invoke(
        _cli(), ["--config", str(path), "--out", str(out), "--model", str(bundle_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "Tier 1 - strategic" in result.output and "Accounts" in result.output
    assert out.exists() and crm_path(out).exists()
    assert (tmp_path / "outputs" / "snapshot.parquet").exists()


def test_score_command_refuses_a_bad_date_and_a_missing_model(
    trained: tuple[Config, Path], tmp_path: Path
) -> None:
    config, bundle_dir = trained
    path = _toml_config(config, tmp_path)
    out = tmp_path / "tiers.parquet"
    bad_date = CliRunner().invoke(
        _cli(),
        ["--config", str(path), "--out", str(out), "--model", str(bundle_dir), "--as-of", "soon"],
    )
    assert bad_date.exit_code == 2 and "as_of" in bad_date.output
    no_model = CliRunner().invoke(_cli(), ["--config", str(path), "--out", str(out)])
    assert no_model.exit_code == 2
    assert "error" in no_model.output and "Traceback" not in no_model.output
    assert not out.exists()


@pytest.mark.slow
def test_score_command_uses_the_registered_champion(
    trained: tuple[Config, Path], tmp_path: Path
) -> None:
    from training.pipeline import train

    config, _ = trained
    path = _toml_config(config, tmp_path)
    from tiering.config import load_config

    registered = train(load_config(path))
    assert registered.promoted
    out = tmp_path / "outputs" / "tiers.parquet"
    result = CliRunner().invoke(_cli(), ["--config", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"model {registered.version}" in result.output
    assert pd.read_parquet(out)["model_version"].eq(registered.version).all()
