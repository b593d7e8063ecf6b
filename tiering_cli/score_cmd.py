"""`tiering score` (tier the whole account list) and `tiering serve` (the HTTP service)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from tiering.config import TIER_NAMES, Config
from tiering_cli.common import CONFIG_OPTION, console, fail, known_errors, progress, read_config

if TYPE_CHECKING:
    import pandas as pd
    from rich.progress import TaskID

    from serving.model_loader import LoadedModel

SERVICE = "serving.service:TieringService"

MODEL_OPTION = typer.Option(
    "champion",
    "--model",
    "-m",
    help="Registry alias (champion), version number, models:/ URI, or a saved bundle folder.",
)


def score(
    config: Path = CONFIG_OPTION,
    as_of: str | None = typer.Option(
        None,
        "--as-of",
        help="Scoring date YYYY-MM-DD; default: the config's data.as_of, else the end of the data.",
    ),
    out: Path = typer.Option(
        Path("outputs/tiers.parquet"),
        "--out",
        "-o",
        help="Scores with every field (.parquet or .csv); the CRM write-back goes next to it (tiers.parquet -> tiers_crm.csv).",
    ),
    model: str = MODEL_OPTION,
    snapshot: Path | None = typer.Option(
        None,
        "--snapshot",
        help="Where to write the account snapshot the service reads; default from the config.",
    ),
) -> None:
    """Tier every account of the list with the champion model, with reasons, and write the
    scores, the CRM write-back CSV and the account snapshot (all atomically)."""
    from serving.batch import score_accounts
    from serving.model_loader import ModelNotFoundError
    from serving.tier_changes import describe_run
    from tiering.policy import tier_shortfalls

    cfg = read_config(config)
    with known_errors():
        try:
            loaded = resolve_model(cfg, model)
        except ModelNotFoundError as exc:
            raise fail(str(exc)) from None
        console.print(f"model [bold]{loaded.version}[/] from {loaded.source}")
        with progress() as bar:
            tasks: dict[str, TaskID] = {}
            labels = {"features": "Features", "reasons": "Tiers and reasons", "write": "Writing"}

            def report(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
                bar.update(tasks[stage], completed=done)

            try:
                result = score_accounts(
                    cfg, loaded.bundle, as_of=as_of, out=out, progress=report, snapshot=snapshot
                )
            except ValueError as exc:
                raise fail(str(exc)) from None
    console.print(tier_summary(result.scores, title=f"Tiers as of {result.as_of.date()}"))
    console.print(f"cut-offs: {result.cutoffs_used}")
    for warning in tier_shortfalls(
        result.scores["tier"],
        result.scores["priority"],
        result.scores["icp_fit"],
        result.scores["evidence"],
        loaded.bundle.policy,
    ):
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    console.print(f"scores:   {result.output}\nCRM:      {result.crm}\nsnapshot: {result.snapshot}")
    with known_errors():
        console.print(describe_run(cfg, result.as_of))


def tier_summary(scores: pd.DataFrame, title: str = "Tiers") -> Table:
    """Accounts, share and expected revenue per tier."""
    table = Table(title=title)
    for col in ("Tier", "Accounts", "Share", "Expected revenue", "Mean P(convert)", "Mean ICP fit"):
        table.add_column(col, justify="left" if col == "Tier" else "right", no_wrap=col == "Tier")
    n = max(len(scores), 1)
    for tier, name in TIER_NAMES.items():
        rows = scores[scores["tier"] == tier]
        table.add_row(
            name,
            f"{len(rows):,}",
            f"{len(rows) / n:.0%}",
            f"${rows['expected_revenue'].sum():,.0f}",
            f"{rows['p_convert'].mean():.1%}" if len(rows) else "-",
            f"{rows['icp_fit'].mean():.0f}" if len(rows) else "-",
        )
    table.add_row(
        "All",
        f"{len(scores):,}",
        "100%",
        f"${scores['expected_revenue'].sum():,.0f}",
        "",
        "",
        style="bold",
    )
    return table


def resolve_model(cfg: Config, model: str) -> LoadedModel:
    from serving.model_loader import champion_uri, load_model, tracking_uri_for

    if Path(model).is_dir():
        return load_model(bundle_dir=Path(model), model_uri=None, tracking_uri=None)
    return load_model(
        bundle_dir=None,
        model_uri=champion_uri(cfg.mlflow.registered_model, model),
        tracking_uri=tracking_uri_for(cfg.mlflow.tracking_uri),
    )


def serve(
    config: Path = CONFIG_OPTION,
    port: int = typer.Option(3000, "--port", "-p", help="TCP port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    model: str = MODEL_OPTION,
    no_auth: bool = typer.Option(
        False,
        "--no-auth",
        help="Serve without an API key (loopback hosts only). Otherwise TIERING_API_KEY must be set.",
    ),
) -> None:
    """Serve POST /score, POST /explain and GET /model with BentoML (plus /healthz, /readyz,
    /metrics). Callers send the key of TIERING_API_KEY in the X-API-Key header."""
    cfg = read_config(config)
    if no_auth and not _is_loopback(host):
        raise fail(f"--no-auth is for local use only; {host} is not a loopback address")
    if not no_auth and not os.environ.get("TIERING_API_KEY"):
        raise fail(
            "set TIERING_API_KEY (the key callers send in X-API-Key), or pass --no-auth for local use"
        )
    env = service_env(cfg, config, model=model, auth_disabled=no_auth)
    bentoml = Path(sys.executable).parent / "bentoml"
    command = [str(bentoml), "serve", SERVICE, "--port", str(port), "--host", host]
    console.print(f"serving on http://{host}:{port} (Ctrl+C stops)")
    try:
        code = subprocess.call(command, env=env)
    except KeyboardInterrupt:
        code = 0
    if code:
        raise typer.Exit(code)


def service_env(
    cfg: Config, config_path: Path, *, model: str, auth_disabled: bool
) -> dict[str, str]:
    """The environment `bentoml serve` needs: absolute paths (the server may resolve them from
    another folder), the model source, no telemetry, and the venv's tools on PATH."""
    from serving.model_loader import champion_uri, tracking_uri_for

    env = dict(os.environ)
    env["BENTOML_DO_NOT_TRACK"] = "true"
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["TIERING_CONFIG"] = str(config_path.resolve())
    env["TIERING_SNAPSHOT"] = str(cfg.scoring.snapshot.resolve())
    env["TIERING_TRACKING_URI"] = tracking_uri_for(cfg.mlflow.tracking_uri)
    if Path(model).is_dir():
        env["TIERING_BUNDLE_DIR"] = str(Path(model).resolve())
    else:
        env.pop("TIERING_BUNDLE_DIR", None)
        env["TIERING_MODEL_URI"] = champion_uri(cfg.mlflow.registered_model, model)
    if auth_disabled:
        env["TIERING_AUTH_DISABLED"] = "true"
    return env


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
