"""Risk: `tiering validate` accepts a broken export, hides the reason behind a traceback, or
writes something before validation has passed; `tiering demo-data` misbehaves."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from tiering_cli import data_cmd

from support import (
    DEMO_CONFIG,
    accounts_frame,
    activities_frame,
    opportunities_frame,
    write_export,
)

REPO = Path(__file__).resolve().parents[1]
WIDE = {"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command("validate")(data_cmd.validate)
    app.command("demo-data")(data_cmd.demo_data)
    return app


def run(app: typer.Typer, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=WIDE)
    # Rich may still wrap long lines; compare with whitespace collapsed.
    return result.exit_code, " ".join(result.output.split())


def write_config(folder: Path, paths: dict[str, Path], extra: str = "") -> Path:
    lines = []
    for table, path in paths.items():
        lines += [f"[data.{table}]", f'path = "{path.name}"']
    config = folder / "tiering.toml"
    config.write_text("\n".join(lines) + "\n" + extra)
    return config


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_valid_export_prints_the_quality_report(app: typer.Typer, tmp_path: Path) -> None:
    opportunities = opportunities_frame().assign(
        outcome=["Won", "lost", "won", "lost", "open", "open"]
    )
    # Six months of deals: a four-week horizon without warm-up leaves training enough monthly
    # snapshots, so validate has nothing to refuse.
    short = "[training]\nhorizon_days = 28\nsnapshot_warmup_days = 0\n"
    config = write_config(tmp_path, write_export(tmp_path, opportunities=opportunities), short)
    code, output = run(app, "validate", "--config", str(config))
    assert code == 0, output
    assert "valid: the data meets the contract" in output
    assert "win rate 50.0% of 4 closed" in output
    assert "case-folded labels" in output
    assert "1 accounts without deals (e.g. A-4)" in output


Mutation = Callable[[dict[str, pd.DataFrame], dict[str, Path]], None]


def _drop_account_id(frames: dict[str, pd.DataFrame], paths: dict[str, Path]) -> None:
    frames["accounts"].drop(columns="account_id").to_csv(paths["accounts"], index=False)


def _orphan_account(frames: dict[str, pd.DataFrame], paths: dict[str, Path]) -> None:
    frames["opportunities"].assign(account_id=["A-1", "A-991", "A-2", "A-3", "A-2", "A-1"]).to_csv(
        paths["opportunities"], index=False
    )


def _bad_date(frames: dict[str, pd.DataFrame], paths: dict[str, Path]) -> None:
    frame = frames["opportunities"]
    frame.loc[1, "created_at"] = "31/02/2023"
    frame.to_csv(paths["opportunities"], index=False)


def _negative_employees(frames: dict[str, pd.DataFrame], paths: dict[str, Path]) -> None:
    frame = frames["accounts"]
    frame.loc[0, "employees"] = "-1200"
    frame.to_csv(paths["accounts"], index=False)


def _duplicate_ids(frames: dict[str, pd.DataFrame], paths: dict[str, Path]) -> None:
    frames["accounts"].assign(account_id=["A-1", "A-2", "A-2", "A-4"]).to_csv(
        paths["accounts"], index=False
    )


def _unknown_outcome(frames: dict[str, pd.DataFrame], paths: dict[str, Path]) -> None:
    frame = frames["opportunities"]
    frame.loc[2, "outcome"] = "Closed Won"
    frame.to_csv(paths["opportunities"], index=False)


def _empty_file(frames: dict[str, pd.DataFrame], paths: dict[str, Path]) -> None:
    paths["activities"].write_bytes(b"")


def _wrong_delimiter(frames: dict[str, pd.DataFrame], paths: dict[str, Path]) -> None:
    frames["opportunities"].to_csv(paths["opportunities"], index=False, sep=";")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_drop_account_id, ["accounts.account_id: required column missing"]),
        (_orphan_account, ["opportunities.account_id: 1 values not in accounts (e.g. 'A-991')"]),
        (_bad_date, ["opportunities.created_at: 1 dates cannot be parsed", "'31/02/2023'"]),
        (
            _negative_employees,
            ["accounts.employees: 1 values below 0 (must be >= 0)", "-1200"],
        ),
        (
            _duplicate_ids,
            ["accounts.account_id: 2 rows share 1 id (ids must be unique) (e.g. 'A-2')"],
        ),
        (
            _unknown_outcome,
            ["opportunities.outcome: 1 values have an unknown outcome label", "'Closed Won'"],
        ),
        (_empty_file, ["activities: file is empty"]),
        (
            _wrong_delimiter,
            ["opportunities: wrong delimiter", "looks like the delimiter is ';', config says ','"],
        ),
    ],
    ids=[
        "missing-column",
        "orphan-account",
        "bad-date",
        "negative-employees",
        "duplicate-ids",
        "unknown-outcome",
        "empty-file",
        "wrong-delimiter",
    ],
)
def test_broken_export_exits_non_zero_names_the_problem_and_writes_nothing(
    app: typer.Typer, tmp_path: Path, mutate: Mutation, expected: list[str]
) -> None:
    paths = write_export(tmp_path)
    frames = {
        "accounts": accounts_frame(),
        "opportunities": opportunities_frame(),
        "activities": activities_frame(),
    }
    mutate(frames, paths)
    config = write_config(tmp_path, paths)
    before = snapshot(tmp_path)

    code, output = run(app, "validate", "--config", str(config))

    assert code == 2
    assert "the data breaks the contract" in output
    for text in expected:
        assert text in output
    assert "Traceback" not in output
    assert snapshot(tmp_path) == before


def test_all_problems_are_reported_in_one_run(app: typer.Typer, tmp_path: Path) -> None:
    paths = write_export(
        tmp_path,
        accounts=accounts_frame().assign(account_id=["A-1", "A-2", "A-3", "A-3"]),
        opportunities=opportunities_frame().assign(amount=["tbd", "0", "120000", "0", "", ""]),
    )
    code, output = run(app, "validate", "--config", str(write_config(tmp_path, paths)))
    assert code == 2
    assert "(2 problems)" in output
    assert "accounts.account_id" in output and "opportunities.amount" in output


def test_maven_example_validates_and_reports_its_dirt(app: typer.Typer) -> None:
    code, output = run(app, "validate", "--config", str(REPO / "configs" / "maven_crm.toml"))
    assert code == 0, output
    assert "'technolgy' -> 'technology'" in output
    assert "'Philipines' -> 'Philippines'" in output
    assert "'GTXPro' -> 'GTX Pro'" in output
    assert "dropped rows with empty account_id" in output and "1,425" in output
    assert "'engaging' -> 'open'" in output
    assert "4,238 won, 2,473 lost" in output


def test_config_with_unknown_key_is_a_clear_error(app: typer.Typer, tmp_path: Path) -> None:
    paths = write_export(tmp_path)
    config = write_config(tmp_path, paths, extra="[icp]\ncriterias = []\n")
    code, output = run(app, "validate", "--config", str(config))
    assert code == 2
    assert "icp.criterias: Extra inputs are not permitted" in output
    assert "Traceback" not in output


def test_missing_config_file_is_a_clear_error(app: typer.Typer, tmp_path: Path) -> None:
    code, output = run(app, "validate", "--config", str(tmp_path / "nope.toml"))
    assert code == 2
    assert "config file not found" in output


def test_demo_data_refuses_an_unknown_format(app: typer.Typer, tmp_path: Path) -> None:
    code, output = run(app, "demo-data", "--out", str(tmp_path / "demo"), "--format", "xlsx")
    assert code == 2
    assert "--format must be one of csv, parquet" in output
    assert not (tmp_path / "demo").exists()


def test_demo_data_writes_an_export_that_validates(app: typer.Typer, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code, output = run(app, "demo-data", "--accounts", "300", "--seed", "3", "--out", str(out))
    assert code == 0, output
    for name in ("accounts.csv", "opportunities.csv", "activities.csv"):
        assert (out / name).stat().st_size > 0
    from tiering.config import load_config

    config = load_config(DEMO_CONFIG)
    data = config.data
    sources = {
        table: getattr(data, table).model_copy(update={"path": out / f"{table}.csv"})
        for table in data.sources()
    }
    from features.contract import load_tables

    result = load_tables(data.model_copy(update=sources))
    assert len(result.tables.accounts) > 0


def test_an_error_during_a_progress_bar_is_a_line_of_its_own_below_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a terminal the bar redraws in place: an error printed while it runs would land above
    it or on its line. ``fail`` closes the bar first, so the error is the last line."""
    import io
    import re

    from rich.console import Console

    from tiering_cli import common

    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=100, color_system=None)
    monkeypatch.setattr(common, "console", terminal)
    monkeypatch.setattr(common, "err_console", terminal)
    with pytest.raises(typer.Exit) as exit_info, common.progress() as bar:
        task = bar.add_task("Features", total=10)
        bar.update(task, completed=10)
        raise common.fail("accounts.csv: no column 'employees'")
    assert exit_info.value.exit_code == 2
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    lines = [line.split("\r")[-1] for line in text.splitlines() if line.split("\r")[-1].strip()]
    assert lines[-1] == "error: accounts.csv: no column 'employees'"
    assert "Features" in lines[-2] and "10/10" in lines[-2]
    assert common._Bar.running is None
