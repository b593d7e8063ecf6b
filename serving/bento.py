"""The Bento that ships: the champion bundle and the account snapshot imported into the
BentoML model store, and a service that loads them from there.

``tiering build`` (or ``make bento``) imports the registry's champion (and the snapshot
``tiering score`` wrote) as the BentoML model ``account_tiering_bundle``, builds the Bento from
``bentofile.yaml`` with that model, and exports both as one archive (``bentoml import`` on
the target machine): the Bento serves with no MLflow store.
The service declares the model only when the build names it (the Bento argument
``bento_model``, which the built Bento hands back when it loads; or ``TIERING_BENTO_MODEL``),
so a plain ``tiering serve`` needs no model store.

Where the service's model comes from, first match wins: ``TIERING_BUNDLE_DIR``; the MLflow
registry (``TIERING_CONFIG`` / ``TIERING_TRACKING_URI``); the Bento's own model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.model_loader import LoadedModel
    from serving.settings import ServingSettings

BENTO_MODEL_ENV = "TIERING_BENTO_MODEL"
BENTO_MODEL_ARG = "bento_model"
MODEL_NAME = "account_tiering_bundle"
BUNDLE_FOLDER = "bundle"
SNAPSHOT_FILE = "snapshot.parquet"


class BentoBuildError(ValueError):
    """The Bento cannot be built as asked; the message says what to do."""


def declared_model() -> Any | None:
    """The BentoML model the service declares (and a build packs), when the environment names
    one."""
    import bentoml

    # The build's argument, which a built Bento hands back when it loads the service.
    tag = os.environ.get(BENTO_MODEL_ENV, "").strip() or str(
        getattr(bentoml.use_arguments(), BENTO_MODEL_ARG, "") or ""
    )
    if not tag:
        return None
    return bentoml.models.BentoModel(tag)


def import_bundle(loaded: LoadedModel, snapshot: Path | None) -> str:
    """Save the bundle (and the snapshot) as a new version of the BentoML model; its tag."""
    import bentoml

    labels = {"model_version": loaded.version}
    metadata = {"source": loaded.source, "snapshot": snapshot is not None}
    with bentoml.models.create(MODEL_NAME, labels=labels, metadata=metadata) as model:
        folder = Path(model.path)
        # The Bento answers with the version the registry gave (as the service does when it
        # loads the champion from the registry).
        loaded.bundle.metadata = {**loaded.bundle.metadata, "model_version": loaded.version}
        loaded.bundle.save(folder / BUNDLE_FOLDER)
        if snapshot is not None:
            shutil.copy2(snapshot, folder / SNAPSHOT_FILE)
    return str(model.tag)


def with_bento_model(settings: ServingSettings, model: Any | None) -> ServingSettings:
    """The settings pointed at the Bento's model when nothing else names a model."""
    if model is None or settings.bundle_dir is not None:
        return settings
    if settings.config is not None or settings.tracking_uri is not None:
        return settings
    # On the service instance BentoML hands over the stored model itself; on the class, the
    # reference to it.
    stored = model.stored if hasattr(model, "stored") else model
    if stored is None:
        raise FileNotFoundError(
            f"{model.tag}: no such model in the BentoML model store; build the Bento with "
            "`tiering build`"
        )
    folder = Path(stored.path)
    snapshot = folder / SNAPSHOT_FILE
    return settings.model_copy(
        update={
            "bundle_dir": folder / BUNDLE_FOLDER,
            "snapshot": settings.snapshot or (snapshot if snapshot.is_file() else None),
        }
    )


def project_bentofile() -> Path:
    """bentofile.yaml of the project checkout this package runs from."""
    root = Path(__file__).resolve().parents[1]
    bentofile = root / "bentofile.yaml"
    if not bentofile.is_file():
        raise BentoBuildError(
            f"no bentofile.yaml at {root}: build the Bento from the project's checkout"
        )
    return bentofile


def build_bento(model_tag: str, bentofile: Path | None = None, version: str | None = None) -> str:
    """Build the Bento with ``model_tag`` declared; its tag. (BentoML keeps the model in its
    model store beside the Bento; ``export_bento`` packs both into one archive.)"""
    import bentoml

    bentofile = bentofile or project_bentofile()
    os.environ[BENTO_MODEL_ENV] = model_tag
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    bento = bentoml.bentos.build_bentofile(
        str(bentofile),
        build_ctx=str(bentofile.parent),
        version=version,
        args={BENTO_MODEL_ARG: model_tag},
    )
    return str(bento.tag)


def export_bento(bento_tag: str, out: Path) -> Path:
    """One archive holding the Bento, its model (bundle + snapshot) and its code: copy it to
    another machine and ``bentoml import`` it there."""
    import bentoml

    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(bentoml.bentos.export_bento(bento_tag, str(out)))
