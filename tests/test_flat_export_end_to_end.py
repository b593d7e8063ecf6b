"""Risk: a flat deal report gets through `validate` and then breaks `train` or `score`, or a
gate empties a tier without anybody being told. Both run the real commands from a config
alone: the shipped Maven flat example, and a bare export (composite key, dd-Mon-yy dates, no
firmographics, no close dates, no amounts) whose ICP gate leaves Tier 1 short."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tiering_cli.main import app

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "maven_flat" / "deals.csv"
WIDE = {"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}


QUICK_TRAINING = """
n_jobs = 1
num_boost_round = 60
early_stopping_rounds = 15
"""


def deployment_sections(root: Path) -> str:
    """MLflow store and snapshot inside the test's folder."""
    return f"""
[mlflow]
tracking_uri = "sqlite:///{root / "store" / "mlflow.db"}"
artifact_location = "{root / "store" / "artifacts"}"

[scoring]
snapshot = "{root / "out" / "snapshot.parquet"}"
"""


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=WIDE)
    output = " ".join(result.output.split())
    assert "Traceback" not in output, output
    return result.exit_code, output


@pytest.mark.slow
def test_the_flat_maven_example_validates_trains_and_scores_from_its_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shipped config's own store, history and snapshot, relative to the working folder.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TIERING_HISTORY_URL", raising=False)
    shipped = (REPO / "configs" / "maven_flat.toml").read_text()
    config = tmp_path / "maven_flat.toml"
    config.write_text(
        shipped.replace('path = "../examples/', f'path = "{REPO / "examples"}/').replace(
            "[training]\n", "[training]\n" + QUICK_TRAINING
        )
    )

    code, output = invoke("validate", "--config", str(config))
    assert code == 0, output
    assert (
        "derived accounts from the deals: one per account key (Account Name, Office Location)"
        in (output)
    )
    assert "generated ids from each row's content" in output
    assert "removed currency signs" in output

    code, output = invoke("train", "--config", str(config))
    assert code == 0, output
    assert "promoted to champion" in output
    assert "Registered maven-flat version 1" in output

    code, output = invoke("score", "--config", str(config))
    assert code == 0, output
    scores = pd.read_parquet(tmp_path / "outputs" / "maven-flat" / "tiers.parquet")
    assert len(scores) == 85 and set(scores["tier"]) == {1, 2, 3}
    assert scores["account_id"].str.contains(" | ", regex=False).all()
    # a project of its own: its registered model, tier history, scores and snapshot
    assert (tmp_path / "mlruns" / "maven-flat-history.db").is_file()
    assert (tmp_path / "outputs" / "maven-flat" / "account_snapshot.parquet").is_file()


@pytest.mark.slow
def test_a_bare_flat_export_trains_and_scores_and_a_short_tier_is_said_everywhere(
    tmp_path: Path,
) -> None:
    bare = pd.read_csv(EXAMPLE, dtype=str).iloc[::3]
    bare = bare.drop(
        columns=[
            "Sector",
            "Employees",
            "Revenue (USD M)",
            "Year Established",
            "Close Date",
            "Close Value",
        ]
    )
    bare.to_csv(tmp_path / "deals.csv", index=False)
    config = tmp_path / "bare.toml"
    config.write_text(
        """
name = "bare-flat"

[data.deals]
path = "deals.csv"
date_format = "%d-%b-%y"
account_key = ["Account Name", "Office Location"]
drop_if_missing = ["created_at"]

[data.deals.columns]
country = "Office Location"
outcome = "Deal Stage"
created_at = "Engage Date"

[data.deals.labels.outcome]
engaging = "open"
prospecting = "open"

[features]
categorical = ["country"]

# Only the accounts outside the United States fit: 14 of 85, fewer than Tier 1's 17 seats.
[[icp.criteria]]
label = "Office outside the United States"
column = "country"
op = "not_in"
values = ["United States"]

[training]
horizon_days = 61
snapshot_warmup_days = 60
"""
        + QUICK_TRAINING
        + deployment_sections(tmp_path)
    )

    code, output = invoke("validate", "--config", str(config))
    assert code == 0, output
    for note in ("no industry, employees, annual_revenue", "no closed_at", "no amounts"):
        assert f"note: {note}" in output

    code, output = invoke("train", "--config", str(config))
    assert code == 0, output
    short = (
        "warning: Tier 1 holds 14 accounts, 3 (18%) below its policy size of 17: only 14 of 85 "
        "accounts pass the Tier 1 gates (71 have an ICP fit below 60 (tiers.min_icp_fit_tier1))"
    )
    assert short in output

    out = tmp_path / "out" / "tiers.parquet"
    code, output = invoke("score", "--config", str(config), "--out", str(out))
    assert code == 0, output
    assert short.removeprefix("warning: ") in output
    scores = pd.read_parquet(out)
    assert (scores["tier"] == 1).sum() == 14
    # No amounts: revenue counts won deals at the documented default value (1 each).
    assert scores["expected_revenue"].between(0, 10).all()

    # The service's /model answer says it too, from the cut-offs frozen in the bundle. (The
    # HTTP layer is test_service's: a second BentoML app in one process would register its
    # metrics twice.)
    from serving.online import OnlineScorer
    from serving.settings import ServingSettings
    from tiering.config import load_config

    from support import train_bundle

    bundle_dir = train_bundle(load_config(config), tmp_path / "bundle")
    settings = ServingSettings(
        bundle_dir=bundle_dir, snapshot=tmp_path / "out" / "snapshot.parquet", auth_disabled=True
    )
    info = OnlineScorer.from_settings(settings).model_info().model_dump(mode="json")
    assert [w for w in info["cutoffs"]["warnings"] if w.startswith(short.removeprefix("warning: "))]
