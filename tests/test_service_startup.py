"""Risk: a service that cannot start (no champion, a damaged model or snapshot, auth disabled on
a public interface) crash-loops its worker forever while `tiering serve` never exits and the
health checks hang; or a stopped `tiering serve` leaves its server answering."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from support import TrainedBundle

BIN = Path(sys.executable).parent
API_KEY = "startup-key-0123456789"


@pytest.fixture(scope="module")
def deployment(
    trained_bundle: TrainedBundle, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """A bundle folder and its account snapshot."""
    from serving.batch import score_accounts
    from tiering.bundle import Bundle

    root = tmp_path_factory.mktemp("startup")
    config = trained_bundle.config_writing_to(root)
    bundle = trained_bundle.bundle_dir
    result = score_accounts(config, Bundle.load(bundle), out=root / "outputs" / "tiers.parquet")
    return bundle, result.snapshot


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TIERING_", "MLFLOW_TRACKING_URI"))
    }
    env.update(
        {
            "BENTOML_DO_NOT_TRACK": "true",
            "BENTOML_HOME": str(tmp_path / "bentoml"),
            "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
            **settings,
        }
    )
    return env


def _exits(command: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=180)
    return done.returncode, done.stdout + done.stderr


def _damaged(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "damaged"
    shutil.copytree(bundle, copy)
    text = (copy / "models" / "conversion.txt").read_bytes()
    (copy / "models" / "conversion.txt").write_bytes(text[: len(text) // 2])
    return copy


@pytest.mark.slow
def test_bentoml_serve_stops_with_one_line_when_the_service_cannot_start(
    deployment: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, snapshot = deployment
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1" + os.urandom(2000))
    serve = [str(BIN / "bentoml"), "serve", "serving.service:TieringService", "--port"]
    cases = {
        "a truncated model file": (
            ["--host", "127.0.0.1"],
            {"TIERING_BUNDLE_DIR": str(_damaged(bundle, tmp_path)), "TIERING_API_KEY": API_KEY},
            "models/conversion.txt: sha256 differs",
        ),
        "a garbage snapshot": (
            ["--host", "127.0.0.1"],
            {
                "TIERING_BUNDLE_DIR": str(bundle),
                "TIERING_SNAPSHOT": str(garbage),
                "TIERING_API_KEY": API_KEY,
            },
            "unreadable",
        ),
        "no auth on a public interface": (
            ["--host", "0.0.0.0"],
            {
                "TIERING_BUNDLE_DIR": str(bundle),
                "TIERING_SNAPSHOT": str(snapshot),
                "TIERING_AUTH_DISABLED": "true",
                "TIERING_API_KEY": API_KEY,
            },
            "loopback only",
        ),
    }
    for case, (host, settings, reason) in cases.items():
        started = time.monotonic()
        # The server stops (BentoML's arbiter ends with its own status; `tiering serve`
        # turns that into a non-zero exit, below).
        _, output = _exits([*serve, str(_port()), *host], _env(tmp_path, **settings), cwd=tmp_path)
        lines = [line for line in output.splitlines() if "tiering service cannot start" in line]
        assert lines and reason in lines[0], (case, output[-2000:])
        assert time.monotonic() - started < 120, case


@pytest.mark.slow
def test_tiering_serve_exits_non_zero_without_a_champion_or_with_a_damaged_model(
    deployment: tuple[Path, Path], tmp_path: Path
) -> None:
    from support import DEMO_CONFIG

    bundle, _ = deployment
    (tmp_path / "configs").mkdir()
    shutil.copy(DEMO_CONFIG, tmp_path / "configs" / "demo.toml")
    env = _env(tmp_path, TIERING_API_KEY=API_KEY, COLUMNS="200")
    tiering = str(BIN / "tiering")

    code, output = _exits([tiering, "serve", "--port", str(_port())], env, tmp_path)
    assert code == 2 and "no MLflow store" in output and "[mlflow] tracking_uri" in output
    assert not (tmp_path / "mlruns").exists() and not list(tmp_path.rglob("mlflow.db"))

    damaged = _damaged(bundle, tmp_path)
    code, output = _exits(
        [tiering, "serve", "--port", str(_port()), "--model", str(damaged)], env, tmp_path
    )
    assert code != 0 and "models/conversion.txt: sha256 differs" in output, output[-2000:]
    assert output.count("tiering service cannot start") == 1, output[-3000:]
    assert "Traceback" not in output.split("tiering service cannot start")[0]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_tiering_serve_leaves_nothing_running(
    deployment: tuple[Path, Path], tmp_path: Path, sig: signal.Signals
) -> None:
    import httpx

    bundle, snapshot = deployment
    (tmp_path / "c.toml").write_text(
        f"[data.accounts]\npath = 'a.csv'\n[data.opportunities]\npath = 'o.csv'\n"
        f"[scoring]\nsnapshot = '{snapshot}'\n"
    )
    port = _port()
    server = subprocess.Popen(
        [
            str(BIN / "tiering"),
            "serve",
            "-c",
            "c.toml",
            "--port",
            str(port),
            "--model",
            str(bundle),
        ],
        env=_env(tmp_path, TIERING_API_KEY=API_KEY),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None and time.monotonic() < deadline
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    family = psutil.Process(server.pid).children(recursive=True)
    assert family, "bentoml serve and its worker run as children"

    server.send_signal(sig)
    assert server.wait(timeout=60) == 0
    _, alive = psutil.wait_procs(family, timeout=15)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
