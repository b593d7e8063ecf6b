"""Fixtures every test file gets."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import configuration, settings

from support import LiveDeployment, LiveService, TrainedBundle

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
