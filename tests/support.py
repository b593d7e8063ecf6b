"""What several test files build on: the repo's configs pointed at data written to a temporary
folder, a small hand-made CRM export, and a quickly trained bundle."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from features.config import (
    DataConfig,
    FeatureConfig,
    IcpConfig,
    IcpCriterion,
    TableSource,
)
from tiering.bundle import Bundle
from tiering.config import (
    Config,
    CustomerConfig,
    MlflowConfig,
    ScoringConfig,
    TrainingConfig,
    load_config,
)

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.toml"
MAVEN_CONFIG = REPO / "configs" / "maven_crm.toml"
TECH = ["tech_cloud", "tech_crm", "tech_marketing_automation", "tech_data_warehouse"]


# ----------------------------------------------------------------------- the repo's demo config
def demo_data_config(folder: Path, n_accounts: int = 1000, seed: int = 7) -> Config:
    """configs/demo.toml over a demo export freshly written to ``folder``."""
    from demo import write_demo

    write_demo(folder, n_accounts=n_accounts, seed=seed, workers=1)
    config = load_config(DEMO_CONFIG)
    data = config.data
    moved = {
        name: getattr(data, name).model_copy(
            update={"path": folder / getattr(data, name).path.name}
        )
        for name in data.sources()
    }
    moved["truth_dir"] = folder / "truth"
    return config.model_copy(update={"data": data.model_copy(update=moved)})


# ----------------------------------------------------------------- a small hand-made CRM export
def accounts_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "account_id": ["A-1", "A-2", "A-3", "A-4"],
            "name": ["Acme", "Globex", "Initech", "Umbrella"],
            "industry": ["software", "finance", "retail", "software"],
            "employees": ["120", "5400", "", "80"],
            "annual_revenue": ["10000000", "900000000", "45000000", "2500000"],
            "country": ["Germany", "France", "Germany", "Spain"],
        }
    )


def opportunities_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "opportunity_id": ["O-1", "O-2", "O-3", "O-4", "O-5", "O-6"],
            "account_id": ["A-1", "A-1", "A-2", "A-3", "A-2", "A-1"],
            "created_at": [
                "2023-01-05",
                "2023-03-01",
                "2023-02-10",
                "2023-04-01",
                "2023-06-01",
                "2023-07-01",
            ],
            "closed_at": ["2023-02-01", "2023-05-01", "2023-04-02", "2023-06-01", "", ""],
            "outcome": ["won", "lost", "won", "lost", "open", "open"],
            "amount": ["50000", "0", "120000", "0", "", ""],
            "product": ["Core", "Core", "Plus", "Core", "Plus", "Core"],
        }
    )


def activities_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "account_id": ["A-1", "A-1", "A-2", "A-3"],
            "occurred_at": ["2022-12-01", "2023-01-02", "2023-02-01", "2023-03-15"],
            "type": ["web_visit", "meeting", "web_visit", "email_click"],
            "count": ["3", "1", "2", "1"],
        }
    )


def write_export(
    folder: Path,
    accounts: pd.DataFrame | None = None,
    opportunities: pd.DataFrame | None = None,
    activities: pd.DataFrame | None = None,
) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    frames = {
        "accounts": accounts_frame() if accounts is None else accounts,
        "opportunities": opportunities_frame() if opportunities is None else opportunities,
        "activities": activities_frame() if activities is None else activities,
    }
    paths = {}
    for name, frame in frames.items():
        paths[name] = folder / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    return paths


# ------------------------------------------------------------------ a deployment for serving
def serving_config(root: Path) -> Config:
    """A small clean demo with a three-criterion ICP, its MLflow store and snapshot in ``root``."""
    from demo import write_demo

    paths = write_demo(root / "data", n_accounts=300, seed=5, dirt_rate=0.0)
    return Config(
        data=DataConfig(
            accounts=TableSource(path=paths["accounts"]),
            opportunities=TableSource(path=paths["opportunities"]),
            activities=TableSource(path=paths["activities"]),
            subscriptions=TableSource(path=paths["subscriptions"]),
            usage=TableSource(path=paths["usage"]),
            tickets=TableSource(path=paths["tickets"]),
        ),
        features=FeatureConfig(technographics=TECH),
        icp=IcpConfig(
            criteria=[
                IcpCriterion(
                    label="Industry is software or financial services",
                    column="industry",
                    op="in",
                    values=["software", "financial services"],
                ),
                IcpCriterion(label="200+ employees", column="employees", op=">=", min=200),
                IcpCriterion(label="Uses a CRM", column="tech_crm", op="is_true"),
            ]
        ),
        mlflow=MlflowConfig(
            tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
            artifact_location=str(root / "mlruns" / "artifacts"),
        ),
        scoring=ScoringConfig(chunk_size=120, snapshot=root / "outputs" / "snapshot.parquet"),
        # a few dozen customers: capacity for ten in Tier 1 and thirty in Tier 2
        customers=CustomerConfig(csms=1, tier1_per_csm=10, tier2_per_csm=30),
    )


def small_training(config: Config) -> Config:
    """Few boosting rounds: the tests need a real bundle, not a good one."""
    training = config.training.model_copy(
        update={"num_boost_round": 60, "early_stopping_rounds": 20, "n_jobs": 1}
    )
    return config.model_copy(update={"training": training})


def train_bundle(config: Config, out: Path, version: str = "test-1") -> Path:
    """A bundle from the training pipeline (fitted and evaluated, not registered)."""
    from training.pipeline import fit_and_evaluate

    bundle = fit_and_evaluate(config).bundle
    bundle.metadata["model_version"] = version
    return bundle.save(out)


# ------------------------------------------------------------------------- training on a demo
OUTCOME_LABELS = {"outcome": {"closed won": "won", "closed lost": "lost", "in progress": "open"}}
FAST_TRAINING = TrainingConfig(
    n_jobs=1, num_boost_round=300, early_stopping_rounds=30, learning_rate=0.08
)


def training_config(folder: Path, **training: object) -> Config:
    """A config over a demo export written to ``folder`` (MLflow store inside it too)."""
    return Config(
        name="test",
        data=DataConfig(
            accounts=TableSource(path=folder / "accounts.csv"),
            opportunities=TableSource(path=folder / "opportunities.csv", labels=OUTCOME_LABELS),
            activities=TableSource(path=folder / "activities.csv"),
            truth_dir=folder / "truth",
        ),
        features=FeatureConfig(technographics=TECH),
        training=FAST_TRAINING.model_copy(update=training),
        mlflow=MlflowConfig(
            tracking_uri=f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}",
            artifact_location=str(folder / "mlruns" / "artifacts"),
        ),
    )


def write_small_demo(folder: Path, n_accounts: int = 1000, seed: int = 11) -> Path:
    from demo import write_demo

    write_demo(folder, n_accounts=n_accounts, seed=seed, workers=1)
    return folder


def named_bundle(models: Any, feature_names: list[str], **extra: Any) -> Bundle:
    """A bundle of the named models ``training.fit.fit_models`` returned."""
    from tiering.bundle import CONVERSION, DEAL_WIN, REVENUE

    named = {CONVERSION: models.conversion, REVENUE: models.revenue}
    if models.deal_win is not None:
        named[DEAL_WIN] = models.deal_win
    return Bundle(models=named, feature_names=feature_names, categories=models.categories, **extra)


def with_account_labels(rows: pd.DataFrame) -> pd.DataFrame:
    """Synthetic deal rows (``won``, ``amount``) also labelled as account snapshots."""
    return rows.assign(converted=rows["won"], revenue=rows["amount"].fillna(0.0))


@dataclass(frozen=True)
class TrainedBundle:
    """A bundle trained once per test session on a small demo export: the modules that need a
    real model share it (with their own output folders)."""

    config: Config
    bundle_dir: Path

    def config_writing_to(self, folder: Path) -> Config:
        """The config with the account snapshot and the tier history written under ``folder``."""
        scoring = self.config.scoring.model_copy(update={"snapshot": folder / "snapshot.parquet"})
        history = self.config.history.model_copy(
            update={"url": f"sqlite:///{folder / 'history.db'}"}
        )
        return self.config.model_copy(update={"scoring": scoring, "history": history})


# ------------------------------------------------------------------------------- notebooks
NOTEBOOKS_DIR = REPO / "notebooks"


def execute_notebook(notebook: Path, env: dict[str, str]) -> list[dict[str, object]]:
    """Run a notebook headless (kernel environment = this process's plus ``env``, restored
    afterwards); returns the outputs of its code cells. Raises on the first failing cell."""
    import os

    import nbformat
    from nbclient import NotebookClient

    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        nb = nbformat.read(notebook, as_version=4)
        NotebookClient(
            nb,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(notebook.parent)}},
        ).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    ]


# ------------------------------------------------- a real `bentoml serve` over two batch runs
LIVE_API_KEY = "live-key-0123456789"


@dataclass(frozen=True)
class LiveDeployment:
    root: Path
    bundle_dir: Path
    snapshot: Path
    history_url: str
    account_ids: list[str]


@dataclass(frozen=True)
class LiveService:
    base_url: str
    api_key: str
    deployment: LiveDeployment
    log: Path


def two_runs(trained: TrainedBundle, root: Path) -> LiveDeployment:
    """Batch runs on two month ends, so every account has a tier history and a change since
    the last run."""
    from serving.batch import score_accounts
    from tiering.bundle import Bundle

    config = trained.config_writing_to(root)
    bundle = Bundle.load(trained.bundle_dir)
    first = score_accounts(config, bundle, out=root / "tiers.parquet")
    earlier = (first.as_of - pd.offsets.MonthEnd(1)).normalize()
    score_accounts(
        config,
        bundle,
        as_of=earlier,
        out=root / "earlier" / "tiers.parquet",
        snapshot=root / "earlier" / "snapshot.parquet",
    )
    # Again, now that the earlier run is recorded: the latest run compares with it.
    first = score_accounts(config, bundle, as_of=first.as_of, out=root / "tiers.parquet")
    return LiveDeployment(
        root=root,
        bundle_dir=trained.bundle_dir,
        snapshot=first.snapshot,
        history_url=str(config.history.url),
        account_ids=first.scores["account_id"].astype(str).tolist(),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(deployment: LiveDeployment, bentoml_home: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "TIERING_BUNDLE_DIR": str(deployment.bundle_dir),
        "TIERING_SNAPSHOT": str(deployment.snapshot),
        "TIERING_HISTORY_URL": deployment.history_url,
        "TIERING_API_KEY": LIVE_API_KEY,
        "TIERING_AUTH_DISABLED": "false",
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_HOME": str(bentoml_home),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    env.pop("TIERING_CONFIG", None)
    return env


def wait_ready(base: str, server: subprocess.Popen[bytes], log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert server.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"server not ready within {seconds:.0f} s"
        time.sleep(0.5)


@contextlib.contextmanager
def serving(
    command: list[str], env: dict[str, str], port: int, log: Path, cwd: Path | None = None
) -> Iterator[str]:
    """Run a server command until the block ends; yields its base URL once it is ready."""
    out = log.open("wb")
    server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, server, log)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        out.close()


@contextlib.contextmanager
def live_service(deployment: LiveDeployment, folder: Path) -> Iterator[LiveService]:
    port = free_port()
    bentoml = Path(sys.executable).parent / "bentoml"
    command = [str(bentoml), "serve", "serving.service:TieringService"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    log = folder / "server.log"
    with serving(command, service_env(deployment, folder / "bentoml"), port, log) as base:
        yield LiveService(base_url=base, api_key=LIVE_API_KEY, deployment=deployment, log=log)
