"""`tiering score` (tier the whole account list) and `tiering serve` (the HTTP service)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from serving.auth import is_loopback
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
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Scores with every field (.parquet or .csv); the CRM write-back goes next to it (tiers.parquet -> tiers_crm.csv). Default: the config's scoring.output (outputs/tiers.parquet).",
    ),
    model: str = MODEL_OPTION,
    snapshot: Path | None = typer.Option(
        None,
        "--snapshot",
        help="Where to write the account snapshot the service reads; default from the config.",
    ),
    crm: str | None = typer.Option(
        None,
        "--crm",
        help="Also write a CRM import file beside the scores: salesforce (upsert by External ID) or hubspot (company import); default [crm] preset.",
    ),
    crm_encoding: str | None = typer.Option(
        None,
        "--crm-encoding",
        help="Encoding of that file, e.g. utf-8-sig (a BOM for Excel); default [crm] encoding.",
    ),
    cluster: str | None = typer.Option(
        None,
        "--cluster",
        help="Score on Dask: local, local:N (N worker processes) or a scheduler address such as tcp://scheduler:8786; --out is then a directory of Parquet parts (default: scoring.output without its suffix, outputs/tiers). Default: the config's scoring.cluster, else one process.",
    ),
    fresh_reasons: bool = typer.Option(
        False,
        "--fresh-reasons",
        help="Run TreeSHAP for every account instead of reusing the SHAP values the tier history kept for accounts whose model input and models did not change (the config's history.reuse_reasons = false).",
    ),
) -> None:
    """Tier every account of the list with the champion model, with reasons, and write the
    scores, the CRM write-back CSV and the account snapshot (all atomically)."""
    from serving.batch import score_accounts
    from serving.tier_changes import describe_run
    from tiering.policy import tier_shortfalls
    from tiering_cli.capacity_view import book_breakdown

    cfg = read_config(config)
    on_cluster = cluster or cfg.scoring.cluster
    if out is None:
        # a cluster run writes a directory of parts: outputs/tiers.parquet -> outputs/tiers
        out = cfg.scoring.output.with_suffix("") if on_cluster else cfg.scoring.output
    if fresh_reasons:
        cfg = cfg.model_copy(
            update={"history": cfg.history.model_copy(update={"reuse_reasons": False})}
        )
    if crm is not None and crm not in ("generic", "salesforce", "hubspot"):
        raise fail(f"--crm: {crm!r} is not a preset; choose salesforce, hubspot or generic")
    with known_errors():
        loaded = resolve_model(cfg, model)
        console.print(f"model [bold]{loaded.version}[/] from {loaded.source}")
        with progress() as bar:
            tasks: dict[str, TaskID] = {}
            labels = {"features": "Features", "reasons": "Tiers and reasons", "write": "Writing"}

            def report(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
                bar.update(tasks[stage], completed=done)

            try:
                if on_cluster:
                    from serving.distributed import score_on_cluster

                    result = score_on_cluster(
                        cfg,
                        loaded.bundle,
                        on_cluster,
                        as_of=as_of,
                        out=out,
                        progress=report,
                        snapshot=snapshot,
                    )
                else:
                    result = score_accounts(
                        cfg, loaded.bundle, as_of=as_of, out=out, progress=report, snapshot=snapshot
                    )
            except ValueError as exc:
                raise fail(str(exc)) from None
    console.print(tier_summary(result.scores, title=f"Tiers as of {result.as_of.date()}"))
    for breakdown in book_breakdown(result.scores, result.books):
        console.print(breakdown)
    console.print(f"cut-offs: {result.cutoffs_used}")
    warnings = result.capacity_warnings
    if warnings is None:
        warnings = tuple(
            tier_shortfalls(
                result.scores["tier"],
                result.scores["priority"],
                result.scores["icp_fit"],
                result.scores["evidence"],
                loaded.bundle.policy,
            )
        )
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    console.print(f"scores:   {result.output}\nCRM:      {result.crm}\nsnapshot: {result.snapshot}")
    from serving.crm import CrmExportError, export_for_crm

    with known_errors():
        try:
            crm_file = export_for_crm(
                cfg,
                result.output,
                result.as_of,
                preset=crm,  # type: ignore[arg-type]  # checked against the presets above
                encoding=crm_encoding,
            )
        except CrmExportError as exc:
            raise fail(str(exc)) from None
    if crm_file is not None:
        console.print(f"CRM import: {crm_file}")
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
    """A saved bundle folder as it is, else the version of the registry in the config's store
    (which must exist: reading never creates one). What cannot be had ends the command with
    its reason."""
    from serving.model_loader import ModelNotFoundError, champion_uri, load_model
    from tiering.bundle import BundleError
    from tiering.store import StoreNotFoundError, open_store

    try:
        if Path(model).is_dir():
            return load_model(bundle_dir=Path(model), model_uri=None, registry=None)
        return load_model(
            bundle_dir=None,
            model_uri=champion_uri(cfg.mlflow.registered_model, model),
            registry=open_store(cfg.mlflow.tracking_uri),
            project=cfg.name,
        )
    except (ModelNotFoundError, StoreNotFoundError, BundleError) as exc:
        raise fail(str(exc)) from None


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
    /metrics). Callers send the key of TIERING_API_KEY in the X-API-Key header.

    SIGTERM or Ctrl+C stops the server and its workers. A service that cannot start (no
    champion, a damaged model or snapshot) ends this command with its reason and a non-zero
    exit code.
    """
    from tiering.store import StoreNotFoundError, open_store

    cfg = read_config(config)
    auth_disabled = no_auth or os.environ.get("TIERING_AUTH_DISABLED", "").lower() in (
        "1",
        "true",
        "yes",
    )
    if auth_disabled and not is_loopback(host):
        raise fail(
            f"serving without an API key (--no-auth / TIERING_AUTH_DISABLED) is for local use "
            f"only; {host} is not a loopback address"
        )
    if not auth_disabled and not os.environ.get("TIERING_API_KEY"):
        raise fail(
            "set TIERING_API_KEY (the key callers send in X-API-Key), or pass --no-auth for local use"
        )
    if not Path(model).is_dir():
        try:
            open_store(cfg.mlflow.tracking_uri)  # say now, not from a worker, that it is missing
        except StoreNotFoundError as exc:
            raise fail(str(exc)) from None
    env = service_env(cfg, config, model=model, auth_disabled=auth_disabled)
    bentoml = Path(sys.executable).parent / "bentoml"
    command = [str(bentoml), "serve", SERVICE, "--port", str(port), "--host", host]
    console.print(f"serving on http://{host}:{port} (Ctrl+C stops)")
    code = run_until_stopped(command, env)
    if code:
        raise fail(f"the service stopped with exit code {code} (its reason is logged above)", code)


def run_until_stopped(command: list[str], env: dict[str, str]) -> int:
    """Run the server in its own process group; SIGTERM / SIGINT to this process stop the
    whole group (server, workers), gracefully first. Returns 0 when stopped by a signal,
    else the server's exit code (1 if it exited 0 on its own: a server is not meant to)."""
    child = subprocess.Popen(command, env=env, start_new_session=True)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        _signal_group(child, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                code = child.wait()
                break
            except KeyboardInterrupt:  # a second Ctrl+C while waiting
                stopping = True
                _signal_group(child, signal.SIGTERM)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _reap_group(child)
    if stopping:
        return 0
    return code if code != 0 else 1


def _signal_group(child: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, sig)


def _reap_group(child: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """Whatever of the server's group is still there (workers outliving their arbiter) gets
    SIGTERM, then SIGKILL after a grace period."""
    import time

    _signal_group(child, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(child.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    _signal_group(child, signal.SIGKILL)


def service_env(
    cfg: Config, config_path: Path, *, model: str, auth_disabled: bool
) -> dict[str, str]:
    """The environment `bentoml serve` needs: absolute paths (the server may resolve them from
    another folder), the model source, no telemetry, and the venv's tools on PATH."""
    from serving.model_loader import champion_uri
    from tiering.store import resolve_uri

    env = dict(os.environ)
    env["BENTOML_DO_NOT_TRACK"] = "true"
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["TIERING_CONFIG"] = str(config_path.resolve())
    env["TIERING_SNAPSHOT"] = str(cfg.scoring.snapshot.resolve())
    env["TIERING_TRACKING_URI"] = resolve_uri(cfg.mlflow.tracking_uri)[0]
    if Path(model).is_dir():
        env["TIERING_BUNDLE_DIR"] = str(Path(model).resolve())
    else:
        env.pop("TIERING_BUNDLE_DIR", None)
        env["TIERING_MODEL_URI"] = champion_uri(cfg.mlflow.registered_model, model)
    if auth_disabled:
        env["TIERING_AUTH_DISABLED"] = "true"
    return env
