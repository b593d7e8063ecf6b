"""`tiering train`, `tiering models`, `tiering promote`, `tiering rollback`: train and register
a model, list the registered versions, move the ``champion`` alias with a recorded reason."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.markup import escape
from rich.table import Table

from tiering_cli.common import CONFIG_OPTION, console, fail, known_errors, progress, read_config

REASON_OPTION = typer.Option(
    ..., "--reason", "-r", help="Why: recorded on the model version in the registry."
)


@contextmanager
def _training_errors() -> Iterator[None]:
    """The refusals of training and the registry end the command with their message."""
    from demo.truth import TruthError
    from features.leakage import LeakageError
    from tiering.bundle import BundleError
    from tiering.store import StoreNotFoundError
    from training.fit import TrainingDataError
    from training.registry import RegistryError
    from training.split import SplitError

    with known_errors():
        try:
            yield
        except (
            LeakageError,
            SplitError,
            TrainingDataError,
            TruthError,
            RegistryError,
            BundleError,
            StoreNotFoundError,
        ) as exc:
            raise fail(str(exc)) from None


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3f}"


def _summary_table(summary: pd.DataFrame) -> Table:
    table = Table(title="Test window: model vs naive baseline vs ground truth, level by level")
    for col, label in (
        ("metric", "figure"),
        ("model", "model"),
        ("baseline", "naive baseline"),
        ("baseline_name", "which baseline"),
        ("truth", "truth (demo)"),
        ("model_vs_truth", "model / truth"),
    ):
        table.add_column(label, justify="left" if col in ("metric", "baseline_name") else "right")
    for row in summary.itertuples(index=False):
        table.add_row(
            str(row.metric),
            _fmt(row.model),
            _fmt(row.baseline),
            str(row.baseline_name),
            _fmt(row.truth),
            _fmt(row.model_vs_truth),
        )
    return table


def _size_table(sizes: pd.DataFrame) -> Table:
    table = Table(
        title="Model size: each booster beside its smaller candidate (calibration slice; the "
        "larger is kept only if better beyond the noise)"
    )
    for col in (
        "model",
        "candidate",
        "leaves/tree",
        "trees",
        "trees x leaves",
        "leaves in all",
        "loss",
        "larger better in",
        "kept",
    ):
        table.add_column(col, justify="left" if col in ("model", "candidate", "kept") else "right")
    for row in sizes.to_dict("records"):
        table.add_row(
            str(row["model"]),
            str(row["candidate"]),
            str(row["num_leaves"]),
            f"{row['trees']:,}",
            f"{row['trees_x_leaves']:,}",
            f"{row['total_leaves']:,}",
            f"{row['score']:.4f} ({row['metric']})",
            f"{row['larger_better_share']:.0%} of resamples",
            "yes" if row["chosen"] else "",
            style="bold" if row["chosen"] else None,
        )
    return table


def capture_table(capture: pd.DataFrame) -> Table:
    table = Table(title="Share of the window's won revenue booked by the top accounts, by ranking")
    columns = [c for c in capture.columns if c != "ranking"]
    table.add_column("ranking")
    for col in columns:
        table.add_column(col, justify="right")
    for row in capture.to_dict("records"):
        style = "bold" if str(row["ranking"]).startswith("model: priority (") else None
        table.add_row(str(row["ranking"]), *[f"{row[c]:.1%}" for c in columns], style=style)
    return table


def _split_table(split: pd.DataFrame) -> Table:
    table = Table(
        title="Time split of the account snapshots (as-of dates, a gap of H between slices)"
    )
    for col in (
        "slice",
        "first as-of",
        "last as-of",
        "dates",
        "rows",
        "converted in H",
        "labels end",
    ):
        table.add_column(
            col,
            justify="left"
            if col in ("slice", "first as-of", "last as-of", "labels end")
            else "right",
        )
    for row in split.to_dict("records"):
        table.add_row(
            str(row["slice"]),
            str(row["first_as_of"]),
            str(row["last_as_of"]),
            f"{row['snapshots']:,}",
            f"{row['rows']:,}",
            f"{row['conversion_rate']:.1%}",
            str(row["label_windows_end"]),
        )
    return table


def train(
    config: Path = CONFIG_OPTION,
    cluster: str | None = typer.Option(
        None,
        "--cluster",
        help="Fit the boosters of large snapshot sets (more rows than [training] cluster_pilot_rows) on Dask with lightgbm.dask: local, local:N or a scheduler address such as tcp://scheduler:8786. Default: the config's training.cluster, else one process.",
    ),
) -> None:
    """Train the account conversion and revenue models (and the open-deal win model) on
    monthly account snapshots, evaluate them on the newest snapshots against naive account
    baselines (and the demo's truth), log an MLflow run and register a version.

    The version becomes ``challenger``; the promotion gate compares it with the ``champion`` on
    the same test window and promotes it only if it is not worse beyond the configured
    tolerances (the first version becomes champion).
    """
    from tiering.cluster import ClusterSpec
    from training.pipeline import STEPS
    from training.pipeline import train as run_training

    settings = read_config(config)
    if cluster is not None:
        training = settings.training.model_copy(update={"cluster": cluster})
        settings = settings.model_copy(update={"training": training})
    with _training_errors(), progress() as bar:
        if settings.training.cluster is not None:
            ClusterSpec.parse(settings.training.cluster)  # refused now, not after the features
        task = bar.add_task("Training", total=len(STEPS))

        def report(step: str, done: int, total: int) -> None:
            bar.update(task, description=step, completed=done, total=total)

        try:
            result = run_training(settings, progress=report)
        except KeyboardInterrupt as exc:  # Ctrl+C, or SIGTERM (TrainingInterrupted)
            raise fail(
                f"training stopped ({exc or 'interrupted'}): its MLflow run is marked KILLED", 130
            ) from None
        bar.update(task, description="Done", completed=len(STEPS))

    console.print(_split_table(result.split))
    console.print(_summary_table(result.metrics))
    if result.sizes is not None:
        console.print(_size_table(result.sizes))
    console.print(capture_table(result.capture))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    verdict = "[green]promoted to champion[/]" if result.promoted else "[yellow]stays challenger[/]"
    console.print(
        f"Registered [bold]{settings.mlflow.registered_model}[/] "
        f"version {result.version}: {verdict}"
    )
    for reason in result.gate.reasons:
        console.print(f"  - {reason}")
    console.print(f"MLflow run: {result.run_url}")
    if not result.tracking_uri.startswith(("http://", "https://")):
        console.print(f"  (start the UI with: mlflow ui --backend-store-uri {result.tracking_uri})")


def models(config: Path = CONFIG_OPTION) -> None:
    """List the registered versions, newest first, with their aliases, key test metrics, the
    gate's verdict and the last recorded reason."""
    from training import registry

    settings = read_config(config)
    with _training_errors():
        client = registry.connect(settings.mlflow, create=False)
        frame = _versions(client, settings.mlflow.registered_model)
    if frame.empty:
        console.print(
            f"No versions of {settings.mlflow.registered_model!r} yet: run `tiering train`."
        )
        return
    table = Table(title=f"Registered model {settings.mlflow.registered_model}")
    for col in ("version", "aliases", "created", "AUC", "ECE", "Tier 1 revenue", "gate", "reason"):
        table.add_column(
            col, justify="right" if col in ("version", "AUC", "ECE", "Tier 1 revenue") else "left"
        )
    for row in frame.to_dict("records"):
        capture = float(row["tier1_revenue_share"])
        table.add_row(
            str(row["version"]),
            str(row["aliases"] or ""),
            str(row["created"]),
            _fmt(row["test_auc"]),
            _fmt(row["test_ece"]),
            "-" if math.isnan(capture) else f"{capture:.1%}",
            str(row["gate"]),
            str(row["reason"]),
        )
    console.print(table)


def _versions(client: object, name: str) -> pd.DataFrame:
    from mlflow.exceptions import MlflowException

    from training import registry

    try:
        return registry.list_versions(client, name)
    except MlflowException:
        return pd.DataFrame()


def promote(
    version: Annotated[str, typer.Argument(help="Registered version to make champion.")],
    reason: str = REASON_OPTION,
    config: Path = CONFIG_OPTION,
) -> None:
    """Make VERSION the champion by hand (bypassing the gate), recording the reason."""
    from training import registry

    settings = read_config(config)
    name = settings.mlflow.registered_model
    with _training_errors():
        client = registry.connect(settings.mlflow, create=False)
        previous = registry.promote(client, name, version, reason, by="manual")
    was = f" (was v{previous})" if previous and previous != version else ""
    console.print(f"[green]{name} v{version} is champion[/]{was}; reason recorded: {reason}")


def rollback(reason: str = REASON_OPTION, config: Path = CONFIG_OPTION) -> None:
    """Give the champion alias back to the version that held it before the current one."""
    from training import registry

    settings = read_config(config)
    name = settings.mlflow.registered_model
    with _training_errors():
        client = registry.connect(settings.mlflow, create=False)
        demoted, restored = registry.rollback(client, name, reason)
    console.print(
        f"[green]{name} v{restored} is champion again[/] (v{demoted} demoted); "
        f"reason recorded: {reason}"
    )
