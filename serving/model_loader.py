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
from tiering.store import Store, open_store, version_folder


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


def load_registered(model_uri: str, registry: Store | str) -> LoadedModel:
    """Download a registered model's artifacts through ``registry`` (a bound store, or a
    tracking URI to open one) and load the bundle folder inside them."""
    from mlflow.exceptions import MlflowException

    if isinstance(registry, str):
        registry = open_store(registry, override=("the tracking URI given", registry))
    try:
        version, source = _resolve(model_uri, registry)
        with tempfile.TemporaryDirectory(prefix="tiering-model-") as tmp:
            local = Path(
                mlflow_download(source, tmp, registry)
                if version is None
                else version_folder(registry.client, _model_name(model_uri), version, Path(tmp))
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
            f"{model_uri}: not found in the MLflow registry at {registry.uri} (set by "
            f"{registry.source}): {exc.message.splitlines()[0] if exc.message else type(exc).__name__}; "
            "train and register a model first (tiering train)"
        ) from None
    if bundle.version == "unregistered" and version is not None:
        bundle.metadata = {**bundle.metadata, "model_version": version}
    return LoadedModel(bundle=bundle, source=model_uri, version=version or bundle.version)


def mlflow_download(artifact_uri: str, dst: str, registry: Store) -> str:
    import mlflow

    return str(
        mlflow.artifacts.download_artifacts(
            artifact_uri=artifact_uri,
            dst_path=dst,
            tracking_uri=registry.uri,
            registry_uri=registry.uri,
        )
    )


def _model_name(model_uri: str) -> str:
    name_part = model_uri.removeprefix("models:/")
    return name_part.split("@", 1)[0] if "@" in name_part else name_part.partition("/")[0]


def _resolve(model_uri: str, registry: Store) -> tuple[str | None, str]:
    """(registry version, what to download): the version behind a models:/ URI (alias or
    number), else None and the URI as it is (runs:/, a folder URI)."""
    if not model_uri.startswith("models:/"):
        return None, model_uri
    name_part = model_uri.removeprefix("models:/")
    if "@" in name_part:
        name, alias = name_part.split("@", 1)
        return str(registry.client.get_model_version_by_alias(name, alias).version), model_uri
    name, _, ref = name_part.partition("/")
    if not ref.isdigit():
        raise ModelNotFoundError(
            f"{model_uri}: give a version number or an alias (models:/{name}@champion)"
        )
    registry.client.get_model_version(name, ref)  # a clear "not found" before downloading
    return ref, model_uri


def find_bundle(root: Path) -> Path | None:
    """The shallowest folder under ``root`` (itself included) holding a ``bundle.json``."""
    if (root / "bundle.json").is_file():
        return root
    found = sorted(root.rglob("bundle.json"), key=lambda p: len(p.parts))
    return found[0].parent if found else None


def load_model(
    *,
    bundle_dir: Path | None,
    model_uri: str | None,
    registry: Store | str | None,
    project: str | None = None,
) -> LoadedModel:
    """The bundle folder when one is given, else the registered model; its explainer compiled
    (``tiering.treeshap.warm_up``) so that the first account explained is as fast as the rest.
    A registered model trained for another ``project`` (the config's name) is refused."""
    from tiering.treeshap import warm_up

    if bundle_dir is not None:
        loaded = load_bundle_dir(Path(bundle_dir))
    elif model_uri is None or registry is None:
        raise ModelNotFoundError("no model: give a bundle folder or a models:/ URI and its store")
    else:
        loaded = load_registered(model_uri, registry)
        owner = loaded.bundle.metadata.get("project")
        if project is not None and owner is not None and owner != project:
            raise ModelNotFoundError(
                f"{model_uri} was trained for project {owner!r}, and this config's project "
                f"is {project!r} (its `name`). Give each project its own registered model: "
                f'set [mlflow] registered_model = "{project}" in this config, then run '
                "`tiering train` for it."
            )
    warm_up(loaded.bundle.boosters())
    return loaded
