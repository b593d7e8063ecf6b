"""Risk: a README step works only inside `tiering demo` (which trains in the same process) and
fails for a user who runs the steps one by one, each in a new shell: score and serve could not
find the champion, the server never became ready, the notebooks trained their own model, and
stray MLflow stores appeared in the working folder.

The README's CLI sequence, each step its own process in a fresh folder, exactly as documented
(only the demo size is smaller): demo-data -> validate -> train -> models -> score -> serve
(real `tiering serve` on a free loopback port, with an API key) -> POST /score and /explain ->
a second training -> rollback / promote -> the restarted server answers with the new
champion's version; the notebooks run against that store and use its champion.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from support import DEMO_CONFIG, NOTEBOOKS_DIR, REPO, execute_notebook

TIERING = Path(sys.executable).parent / "tiering"
API_KEY = "readme-key-0123456789"
README = (REPO / "README.md").read_text(encoding="utf-8")
# The README's demo size; the test runs the same command on fewer accounts (2 shared cores).
DOCUMENTED_ACCOUNTS, TEST_ACCOUNTS = "5000", "800"
# Fewer, faster boosting rounds than the demo's defaults: the steps are under test, not the
# model's quality (appended to the copied config, as a user's own [training] section would be).
FAST_TRAINING = """
[training]
num_boost_round = 200
learning_rate = 0.1
early_stopping_rounds = 20
"""


def documented(command: str) -> str:
    """The command as the README writes it: the test runs only what a user would copy."""
    as_written = command.replace(f"--accounts {TEST_ACCOUNTS}", f"--accounts {DOCUMENTED_ACCOUNTS}")
    assert as_written in README, f"the README no longer documents `{as_written}`"
    return command


def clean_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "COLUMNS": "200", **extra}
    for key in list(env):
        if key.startswith(("TIERING_", "MLFLOW_TRACKING_URI")):
            env.pop(key)
    env.update(extra)
    return env


def step(cwd: Path, command: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """One README step, as its own process."""
    args = shlex.split(documented(command))
    assert args[0] == "tiering"
    done = subprocess.run(
        [str(TIERING), *args[1:]],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"`{command}` failed:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`tiering serve` as the README starts it, on a free loopback port."""

    def __init__(self, cwd: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        documented("tiering serve")
        self.process = subprocess.Popen(
            [str(TIERING), "serve", "--port", str(self.port)],
            cwd=cwd,
            env=clean_env(TIERING_API_KEY=API_KEY),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.client = httpx.Client(base_url=self.url, headers={"X-API-Key": API_KEY}, timeout=60)

    def wait_ready(self, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"tiering serve exited early:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop(signal.SIGTERM)
        pytest.fail(f"tiering serve was not ready in {timeout_s} s:\n{self.output()}")

    def output(self) -> str:
        if self.process.poll() is None or self.process.stdout is None:
            return ""
        return self.process.stdout.read()

    def stop(self, sig: signal.Signals) -> list[psutil.Process]:
        """Stop with ``sig``; returns the processes of the server still alive afterwards."""
        family = psutil.Process(self.process.pid).children(recursive=True)
        self.process.send_signal(sig)
        self.process.wait(timeout=60)
        self.client.close()
        psutil.wait_procs(family, timeout=15)
        return [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _client(cwd: Path) -> object:
    from tiering.store import open_store

    return open_store(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}").client


def champion(cwd: Path) -> str:
    return str(_client(cwd).get_model_version_by_alias("account-tiering", "champion").version)  # type: ignore[attr-defined]


def versions(cwd: Path) -> list[str]:
    found = _client(cwd).search_model_versions("name='account-tiering'")  # type: ignore[attr-defined]
    return sorted(str(v.version) for v in found)


@pytest.mark.slow
def test_the_readme_sequence_works_step_by_step_in_new_processes(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    config = DEMO_CONFIG.read_text(encoding="utf-8")
    assert "[training]" not in config
    (tmp_path / "configs" / "demo.toml").write_text(config + FAST_TRAINING, encoding="utf-8")

    step(tmp_path, f"tiering demo-data --accounts {TEST_ACCOUNTS} --seed 7 --out data/demo")
    step(tmp_path, "tiering validate")
    first = step(tmp_path, "tiering train")
    assert "version 1: promoted to champion" in first.stdout
    models = step(tmp_path, "tiering models")
    assert "champion" in models.stdout
    step(tmp_path, "tiering score --out outputs/tiers.parquet")
    assert (tmp_path / "outputs" / "tiers.parquet").is_file()

    server = Server(tmp_path)
    server.wait_ready()
    scored = server.client.post(
        "/score",
        json={
            "accounts": [
                {"account_id": "A-000005"},
                {"industry": "software", "employees": 1200, "annual_revenue": 9e7},
            ]
        },
    )
    assert scored.status_code == 200, scored.text
    assert scored.json()["model_version"] == "1"
    assert [a["source"] for a in scored.json()["accounts"]] == ["snapshot", "fields"]
    explained = server.client.post("/explain", json={"account": {"account_id": "A-000005"}})
    assert explained.status_code == 200, explained.text
    assert explained.json()["drivers"]
    assert (
        httpx.post(f"{server.url}/score", json={"accounts": [{"account_id": "A-1"}]}).status_code
        == 401
    )
    # SIGTERM stops the server with its workers: nothing keeps answering /readyz.
    assert server.stop(signal.SIGTERM) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/readyz", timeout=2)

    second = step(tmp_path, "tiering train")
    assert "version 2" in second.stdout
    step(tmp_path, 'tiering rollback --reason "v2 mis-tiers the enterprise segment"')
    assert champion(tmp_path) == "1"
    step(tmp_path, 'tiering promote 2 --reason "new pricing data"')
    assert champion(tmp_path) == "2"

    restarted = Server(tmp_path)
    restarted.wait_ready()
    answer = restarted.client.get("/model")
    assert answer.status_code == 200 and answer.json()["model_version"] == "2", answer.text
    again = restarted.client.post("/score", json={"accounts": [{"account_id": "A-000005"}]})
    assert again.json()["model_version"] == "2"
    assert restarted.stop(signal.SIGINT) == []

    # The notebooks read this store's champion (v2) and train nothing.
    env = {
        "TIERING_PROJECT_DIR": str(tmp_path),
        "MPLBACKEND": "Agg",
        "TMPDIR": str(tmp_path / "tmp"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    (tmp_path / "tmp").mkdir()
    for name in ("02_model_report.ipynb", "03_tier_review.ipynb"):
        outputs = execute_notebook(NOTEBOOKS_DIR / name, env)
        text = json.dumps([o.get("text", "") for o in outputs])
        assert "v2 (champion)" in text or "champion 2" in text, (name, text[:2000])
    assert champion(tmp_path) == "2" and versions(tmp_path) == ["1", "2"]

    # Nothing outside the configured store: no stray mlflow.db or mlruns/ anywhere else.
    stores = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("mlflow.db"))
    assert stores == ["mlruns/mlflow.db"]
    assert not (tmp_path / "configs" / "mlruns").exists()
    assert not list(NOTEBOOKS_DIR.glob("mlflow.db")) and not (NOTEBOOKS_DIR / "mlruns").exists()
