"""What the tier history is read back as: `tiering explain`, GET /accounts/{id}/history, the
movement report (its matrix sums to the population), the performance report with drift
logged to MLflow as a monitoring run, and the stability backtest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from serving.batch import score_accounts
from serving.tier_changes import open_history
from tiering.bundle import Bundle
from tiering.config import Config, load_config
from tiering_cli.main import app

from support import DEMO_CONFIG, small_training, train_bundle, write_small_demo

MONTH_ENDS = ["2026-03-31", "2026-04-30", "2026-05-31", "2026-06-30"]
API_KEY = "history-key-0123456789"


@dataclass(frozen=True)
class Deployment:
    root: Path
    config_path: Path
    config: Config
    bundle_dir: Path
    snapshot: Path
    last: pd.DataFrame


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """The repo's demo config over a small demo in a temporary folder, its stores in there
    too, and four month-end runs recorded."""
    root = tmp_path_factory.mktemp("reports")
    write_small_demo(root / "data" / "demo", n_accounts=500, seed=13)
    (root / "configs").mkdir()
    config_path = root / "configs" / "demo.toml"
    shutil.copy(DEMO_CONFIG, config_path)
    with config_path.open("a", encoding="utf-8") as f:
        f.write(
            f'\n[mlflow]\ntracking_uri = "sqlite:///{root}/mlruns/mlflow.db"\n'
            f'artifact_location = "{root}/mlruns/artifacts"\n'
            f'\n[history]\nurl = "sqlite:///{root}/history.db"\n'
            f'\n[scoring]\nsnapshot = "{root}/outputs/snapshot.parquet"\n'
        )
    config = load_config(config_path)
    bundle_dir = train_bundle(small_training(config), root / "bundle")
    bundle = Bundle.load(bundle_dir)
    result = None
    for day in MONTH_ENDS:
        result = score_accounts(config, bundle, as_of=day, out=root / "outputs" / "tiers.parquet")
    assert result is not None
    return Deployment(
        root=root,
        config_path=config_path,
        config=config,
        bundle_dir=bundle_dir,
        snapshot=result.snapshot,
        last=pd.read_parquet(result.output),
    )


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


# ---------------------------------------------------------------------------- explain


def test_explain_shows_the_tiers_over_time_and_why(deployment: Deployment) -> None:
    last = deployment.last
    moved = last[last["change_reason"] != ""]
    account = str((moved if len(moved) else last)["account_id"].iloc[0])
    code, out = cli("explain", account, "--config", str(deployment.config_path))
    assert code == 0, out
    for day in MONTH_ENDS:
        assert day in out
    assert f"now: Tier {int(last.set_index('account_id').at[account, 'tier'])}" in out
    if len(moved):
        assert str(moved["change_reason"].iloc[0])[:40] in out.replace("\n", "")

    code, out = cli("explain", "NO-SUCH-ACCOUNT", "--config", str(deployment.config_path))
    assert code == 2
    assert "'NO-SUCH-ACCOUNT': not in the tier history" in out


# ------------------------------------------------------------------------------- HTTP


# BentoML's metrics live in one registry per process: the service gets its own process here,
# so it can start whatever other service tests ran in this worker.
HTTP_SCRIPT = """
import json, sys
from starlette.testclient import TestClient
from serving.service import TieringService

account = sys.argv[1]
with TestClient(TieringService.to_asgi()) as client:
    key = {"X-API-Key": sys.argv[2]}
    answers = {
        "no_key": client.get(f"/accounts/{account}/history").status_code,
        "ok": client.get(f"/accounts/{account}/history", headers=key).json(),
        "missing": [
            (r.status_code, r.text)
            for r in [client.get("/accounts/NOPE/history", headers=key)]
        ][0],
    }
print(json.dumps(answers))
"""


def test_history_over_http_needs_the_key_and_lists_every_run(deployment: Deployment) -> None:
    account = str(deployment.last["account_id"].iloc[0])
    env = {
        **os.environ,
        "TIERING_BUNDLE_DIR": str(deployment.bundle_dir),
        "TIERING_SNAPSHOT": str(deployment.snapshot),
        "TIERING_API_KEY": API_KEY,
        "TIERING_AUTH_DISABLED": "false",
        "TIERING_CONFIG": str(deployment.config_path),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    env.pop("TIERING_HISTORY_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", HTTP_SCRIPT, account, API_KEY],
        capture_output=True,
        text=True,
        env=env,
        cwd=deployment.root,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert answers["no_key"] == 401
    body = answers["ok"]
    assert body["account_id"] == account
    assert [e["as_of"] for e in body["entries"]] == MONTH_ENDS
    row = deployment.last.set_index("account_id").loc[account]
    newest = body["entries"][-1]
    assert newest["tier"] == int(row["tier"])
    assert newest["change_reason"] == row["change_reason"]
    assert newest["figures"]["p_convert"] == pytest.approx(float(row["p_convert"]))
    status, text = answers["missing"]
    assert status == 404 and "NOPE" in text


# --------------------------------------------------------------------------- movement


def test_movement_matrix_sums_to_the_population(deployment: Deployment, tmp_path: Path) -> None:
    from serving.reports import movement

    store = open_history(deployment.config)
    m = movement(store)
    assert int(m.matrix.to_numpy().sum()) == len(deployment.last)
    assert m.start == pd.Timestamp(MONTH_ENDS[-2]) and m.end == pd.Timestamp(MONTH_ENDS[-1])
    # The diagonal are the accounts whose tier held; the rest moved, and each move has a cause.
    held = int(np.trace(m.matrix.loc[[1, 2, 3], [1, 2, 3]].to_numpy()))
    moved = int((deployment.last["change_reason"] != "").sum())
    assert held + moved == len(deployment.last)
    assert int(m.by_owner["moved"].sum()) == moved == int(m.by_territory["moved"].sum())
    assert int(m.by_owner["accounts"].sum()) == len(deployment.last)
    whole = movement(store, since=pd.Timestamp("2026-01-01"))
    assert whole.start == pd.Timestamp(MONTH_ENDS[0])
    assert int(whole.matrix.to_numpy().sum()) == len(deployment.last)
    assert int(whole.reasons["moves"].sum()) == int(
        (store.rows(since=pd.Timestamp(MONTH_ENDS[1]))["change_code"] != "").sum()
    )

    code, out = cli(
        "report",
        "movement",
        "--config",
        str(deployment.config_path),
        "--since",
        MONTH_ENDS[0],
        "--out",
        str(tmp_path),
    )
    assert code == 0, out
    assert "Tier movement 2026-03-31 -> 2026-06-30" in out
    png = (tmp_path / "movement.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    html = (tmp_path / "movement.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in html and "Moves by territory" in html


def test_movement_needs_two_runs(tmp_path: Path) -> None:
    from serving.history import HistoryStore
    from serving.reports import ReportError, movement

    with pytest.raises(ReportError, match="holds 0 run"):
        movement(HistoryStore(f"sqlite:///{tmp_path / 'h.db'}"))


# ------------------------------------------------------------------------ performance


def test_performance_by_tier_matches_the_deals_after_each_run(deployment: Deployment) -> None:
    from features.contract import load_tables
    from serving.reports import performance

    store = open_history(deployment.config)
    tables = load_tables(deployment.config.data).tables
    perf = performance(store, tables.opportunities, horizon_days=60)
    assert len(perf) == 3 * len(MONTH_ENDS)
    assert perf.groupby("as_of")["account_share"].sum().round(9).eq(1).all()
    assert perf["win_rate"].dropna().between(0, 1).all()
    # Re-derive one run's Tier 1 revenue straight from the deals.
    first = store.rows(run_id=str(store.runs()["run_id"].iloc[0]))
    t1 = set(first.loc[first["tier"] == 1, "account_id"])
    opps = tables.opportunities
    start = pd.Timestamp(MONTH_ENDS[0])
    won = opps[
        (opps["outcome"] == "won")
        & (opps["closed_at"] > start)
        & (opps["closed_at"] <= start + pd.Timedelta(days=60))
    ]
    expected = float(won.loc[won["account_id"].astype(str).isin(t1), "amount"].sum())
    row = perf[(perf["as_of"] == MONTH_ENDS[0]) & (perf["tier"] == 1)].iloc[0]
    assert row["won_revenue"] == pytest.approx(expected)
    assert row["predicted_revenue"] == pytest.approx(
        sum(
            f["expected_revenue"]
            for f, t in zip(first["figures"], first["tier"], strict=True)
            if t == 1
        )
    )
    assert bool(row["matured"]) is True


def test_psi_flags_a_shift_and_not_a_copy() -> None:
    from serving.reports import PSI_WARNING, drift, psi

    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 4000)
    assert psi(a, rng.permutation(a)) < 0.01
    assert psi(a, a + 1.0) > PSI_WARNING
    assert psi(["x"] * 50 + ["y"] * 50, ["x"] * 90 + ["y"] * 10) > PSI_WARNING
    frames = [
        (pd.Timestamp("2026-01-31"), pd.DataFrame({"v": a})),
        (pd.Timestamp("2026-02-28"), pd.DataFrame({"v": a + 1.0})),
    ]
    table = drift(frames, ["v"])
    assert table["warning"].tolist() == [True]


def test_performance_report_logs_a_monitoring_run(deployment: Deployment, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    code, out = cli(
        "report",
        "performance",
        "--config",
        str(deployment.config_path),
        "--horizon-days",
        "60",
        "--out",
        str(tmp_path),
    )
    assert code == 0, out
    assert "Per-tier performance in the 60 days after each run" in out
    assert "drift:" in out
    client = MlflowClient(tracking_uri=deployment.config.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(f"{deployment.config.mlflow.experiment}-monitoring")
    assert exp is not None
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["kind"] == "monitoring"
    assert "tier1_lift" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"performance.png", "drift.png", "performance.csv", "drift.csv"} <= artifacts
    drifted = pd.read_csv(tmp_path / "drift.csv")
    assert "priority" in set(drifted["column"])
    assert len(drifted["to"].unique()) == len(MONTH_ENDS) - 1


# ---------------------------------------------------------------------------- backtest


def test_backtest_compares_the_policy_with_no_policy(deployment: Deployment) -> None:
    from serving.replay import apply_policy, evaluate, month_ends, replay_runs

    dates = month_ends(pd.Timestamp("2026-09-30"), 4)
    assert [d.date().isoformat() for d in dates] == [
        "2026-04-30",
        "2026-05-31",
        "2026-06-30",
        "2026-07-31",
        "2026-08-31",
    ]
    runs, won = replay_runs(deployment.config, Bundle.load(deployment.bundle_dir), dates)
    off = deployment.config.stability.model_copy(update={"enabled": False})
    on = deployment.config.stability
    for run, tiers in zip(runs, apply_policy(runs, off), strict=True):
        np.testing.assert_array_equal(tiers, run.base_tier)
    for run, tiers in zip(runs, apply_policy(runs, on), strict=True):
        assert (
            np.bincount(tiers, minlength=4).tolist()
            == np.bincount(run.base_tier, minlength=4).tolist()
        )
    result = evaluate(runs, won, {"without": off, "with": on})
    by = result.summary.set_index("setting")
    assert by.loc["with", "tier1_monthly_churn"] <= by.loc["without", "tier1_monthly_churn"]
    assert 0 < by.loc["without", "tier1_revenue_captured"] <= 1

    code, out = cli(
        "report",
        "stability",
        "--config",
        str(deployment.config_path),
        "--model",
        str(deployment.bundle_dir),
        "--months",
        "4",
    )
    assert code == 0, out
    assert "without stability" in out and "with stability" in out
    assert "Tier 1 monthly churn" in out
