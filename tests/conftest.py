"""Fixtures every test file gets."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import configuration, settings

from support import LiveDeployment, LiveService, TrainedBundle, free_port

# Hypothesis keeps its example database and caches in ./.hypothesis by default: tests write
# nothing into the checkout, so its folder is a temporary one and examples are not stored
# between runs (a failure's seed is in the test report).
configuration.set_hypothesis_home_dir(tempfile.mkdtemp(prefix="hypothesis-"))
settings.register_profile("no-database", database=None)
settings.load_profile("no-database")


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests read the CLI's output as text: no wrapping inside table cells, whatever terminal
    width the machine's environment declares."""
    from tiering_cli import common

    monkeypatch.setattr(common.console, "width", 250)
    monkeypatch.setattr(common.err_console, "width", 250)


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory) -> TrainedBundle:
    from support import serving_config, small_training, train_bundle

    root = tmp_path_factory.mktemp("trained-bundle")
    config = small_training(serving_config(root))
    return TrainedBundle(config, train_bundle(config, root / "bundle"))


@pytest.fixture(scope="session")
def live_deployment(
    trained_bundle: TrainedBundle, tmp_path_factory: pytest.TempPathFactory
) -> LiveDeployment:
    """The session's bundle scored on two month ends (tier history with changes)."""
    from support import two_runs

    return two_runs(trained_bundle, tmp_path_factory.mktemp("live-deployment"))


@pytest.fixture(scope="session")
def live_server(
    live_deployment: LiveDeployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveService]:
    """One real `bentoml serve` on loopback for every module that talks to it over HTTP."""
    from support import live_service

    with live_service(live_deployment, tmp_path_factory.mktemp("live-server")) as service:
        yield service


# ---------------------------------------------------------------- a throwaway PostgreSQL server
def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of the Debian package, in a temporary folder on a free port, for
    the module using it. PostgreSQL refuses to run as root, so as root it runs as the
    ``postgres`` user."""
    bindir = _postgres_bin()
    if bindir is None:
        message = (
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
            "(apt-get install postgresql)"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + "; CI must install them (.ci/run does)")
        pytest.skip(message)
    as_root = os.geteuid() == 0
    # As root the server runs as `postgres`, which must reach the folder: /tmp, not a TMPDIR
    # that may sit under root's home.
    root = Path(tempfile.mkdtemp(prefix="tiering-pg-", dir="/tmp" if as_root else None))
    if as_root:
        shutil.chown(root, "postgres")

    def run(*args: str) -> None:
        command = [*(["runuser", "-u", "postgres", "--"] if as_root else []), *args]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr or done.stdout}")

    port = free_port()
    data = root / "data"
    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "tiering", "--no-sync")
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(root / "server.log"),
        "-w",
        "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
        "start",
    )
    try:
        yield f"postgresql+psycopg://tiering@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
