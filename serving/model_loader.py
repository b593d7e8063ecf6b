"""Find and load the model bundle to serve or score with.

Two sources: a saved bundle folder (local runs, tests, air-gapped deployments) or the MLflow
model registry (``models:/<name>@champion`` by default). A registered model carries the bundle
folder among its artifacts; it is downloaded once and loaded like any folder, so the served
model is byte for byte the one training registered.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from tiering.bundle import Bundle, BundleError


class ModelNotFoundError(LookupError):
    """No bundle at the given folder or model URI."""


@dataclass(frozen=True)
class LoadedModel:
    bundle: Bundle
    source: str
    """Where the bundle came from: a folder path or a models:/ URI."""
    version: str
    """Registry version ("7") or the bundle's own version for a folder."""


def champion_uri(registered_model: str, model: str = "champion") -> str:
    """``models:/`` URI of a registered model by alias ("champion"), version number ("7") or a
    full URI given as is."""
    if model.startswith(("models:/", "runs:/")):
        return model
    if model.isdigit():
        return f"models:/{registered_model}/{model}"
    return f"models:/{registered_model}@{model}"


def load_bundle_dir(directory: Path) -> LoadedModel:
    try:
        bundle = Bundle.load(directory)
    except BundleError as exc:
        raise ModelNotFoundError(str(exc)) from None
    return LoadedModel(bundle=bundle, source=str(directory), version=bundle.version)


def load_registered(model_uri: str, tracking_uri: str | None) -> LoadedModel:
    """Download a registered model's artifacts and load the bundle folder inside them."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        version = _registry_version(model_uri, tracking_uri)
        with tempfile.TemporaryDirectory(prefix="tiering-model-") as tmp:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=model_uri, dst_path=tmp, tracking_uri=tracking_uri
                )
            )
            folder = find_bundle(local)
            if folder is None:
                raise ModelNotFoundError(
                    f"{model_uri}: the registered model holds no bundle folder"
                )
            # The booster and JSON files are read fully into memory here, so the temporary
            # download can go as soon as this returns.
            bundle = Bundle.load(folder)
    except MlflowException as exc:
        raise ModelNotFoundError(
            f"{model_uri}: not found in the MLflow registry at {tracking_uri or 'the default tracking URI'}"
            f" ({exc.message.splitlines()[0] if exc.message else type(exc).__name__}); "
            "train and register a model first (tiering train)"
        ) from None
    if bundle.version == "unregistered" and version is not None:
        bundle.metadata = {**bundle.metadata, "model_version": version}
    return LoadedModel(bundle=bundle, source=model_uri, version=version or bundle.version)


def find_bundle(root: Path) -> Path | None:
    """The shallowest folder under ``root`` (itself included) holding a ``bundle.json``."""
    if (root / "bundle.json").is_file():
        return root
    found = sorted(root.rglob("bundle.json"), key=lambda p: len(p.parts))
    return found[0].parent if found else None


def _registry_version(model_uri: str, tracking_uri: str | None) -> str | None:
    """The registry version behind a models:/ URI (alias or number); None for other URIs."""
    from mlflow import MlflowClient

    if not model_uri.startswith("models:/"):
        return None
    name_part = model_uri.removeprefix("models:/")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if "@" in name_part:
        name, alias = name_part.split("@", 1)
        return str(client.get_model_version_by_alias(name, alias).version)
    name, _, ref = name_part.partition("/")
    return ref if ref.isdigit() else None


def load_model(
    *,
    bundle_dir: Path | None,
    model_uri: str | None,
    tracking_uri: str | None,
) -> LoadedModel:
    """The bundle folder when one is given, else the registered model."""
    if bundle_dir is not None:
        return load_bundle_dir(Path(bundle_dir))
    if model_uri is None:
        raise ModelNotFoundError("no model: give a bundle folder or a models:/ URI")
    return load_registered(model_uri, tracking_uri)


def absolute_tracking_uri(uri: str, base: Path | None = None) -> str:
    """A relative ``sqlite:///path`` made absolute (against ``base``, default the working
    directory), so a server started elsewhere reads the same store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = Path(uri.removeprefix(prefix))
        return prefix + str(((base or Path.cwd()) / path).resolve())
    return uri


def tracking_uri_for(configured: str) -> str:
    """MLFLOW_TRACKING_URI (a team's server) wins over the config's store."""
    import os

    return absolute_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or configured)
