"""The one way into the MLflow store a deployment is pointed at (runs and model registry).

Every command that reads or writes the registry (train, models, promote, rollback, score, the
service, the notebooks) opens the store here. The returned client is bound to the store as
both its tracking and its registry URI, so nothing depends on MLflow's process-wide defaults
(which point at a ``mlflow.db`` in the working directory and would silently create it).

Asked to read a store that does not exist, ``open_store`` says so and names the setting that
pointed there; only training (``create=True``) creates a local store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_VAR = "MLFLOW_TRACKING_URI"
CONFIG_KEY = "[mlflow] tracking_uri"
SQLITE = "sqlite:///"


class StoreNotFoundError(LookupError):
    """The configured MLflow store does not exist (and reading must not create it)."""


@dataclass(frozen=True)
class Store:
    """An MLflow client bound to one store, and where that store's URI came from."""

    client: Any
    uri: str
    source: str
    """What set the URI: the environment variable or the config key."""


def absolute_uri(uri: str, base: Path | None = None) -> str:
    """A relative ``sqlite:///path`` made absolute (against ``base``, default the working
    directory), so a process started elsewhere (the service, a notebook) reads the same store."""
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        path = Path(uri.removeprefix(SQLITE))
        return SQLITE + str(((base or Path.cwd()) / path).resolve())
    return uri


def resolve_uri(configured: str, *, override: tuple[str, str] | None = None) -> tuple[str, str]:
    """(absolute URI, what set it). ``MLFLOW_TRACKING_URI`` (a team's server) wins over the
    config; ``override`` (name, value) wins over both, e.g. the service's own setting."""
    if override is not None and override[1]:
        return absolute_uri(override[1]), override[0]
    env = os.environ.get(ENV_VAR)
    if env:
        return absolute_uri(env), f"the environment variable {ENV_VAR}"
    return absolute_uri(configured), f"the config key {CONFIG_KEY}"


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix(SQLITE)) if uri.startswith(SQLITE) else None


def open_store(
    configured: str, *, create: bool = False, override: tuple[str, str] | None = None
) -> Store:
    """An ``MlflowClient`` bound to the configured store as tracking AND registry URI.

    A local sqlite store that does not exist is refused (``StoreNotFoundError`` naming the
    setting) unless ``create`` is set: only training makes a new store.
    """
    from mlflow import MlflowClient

    uri, source = resolve_uri(configured, override=override)
    db = sqlite_path(uri)
    if db is not None:
        if create:
            db.parent.mkdir(parents=True, exist_ok=True)
        elif not db.is_file():
            raise StoreNotFoundError(
                f"no MLflow store at {db} (set by {source}; the config key is {CONFIG_KEY}, "
                f"the environment variable {ENV_VAR} overrides it): train a model first "
                "(tiering train), or point the setting at an existing store"
            )
    # Model downloads would otherwise draw progress bars into the CLI's output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return Store(MlflowClient(tracking_uri=uri, registry_uri=uri), uri, source)


@contextmanager
def fluent_bound_to(uri: str) -> Iterator[None]:
    """MLflow's fluent API (``mlflow.start_run``, ``mlflow.log_*``, ``log_model``) pointed at
    ``uri`` for the duration of the block only; the previous URIs (and the environment, which
    ``set_tracking_uri`` writes to) are restored afterwards, so one call cannot redirect the
    next."""
    import mlflow
    from mlflow.tracking import _tracking_service
    from mlflow.tracking._model_registry import utils as registry_utils

    before_env = os.environ.get(ENV_VAR)
    before_tracking = _tracking_service.utils._tracking_uri
    before_registry = registry_utils._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        _tracking_service.utils._tracking_uri = before_tracking
        registry_utils._registry_uri = before_registry
        if before_env is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before_env


def version_folder(client: Any, name: str, version: str, dst: Path) -> Path:
    """Download a registered version's artifacts through ``client`` (never through MLflow's
    default registry) and return the local folder."""
    import mlflow

    source = client.get_model_version_download_uri(name, str(version))
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=source,
            dst_path=str(dst),
            tracking_uri=client.tracking_uri,
            registry_uri=client._registry_uri,
        )
    )
