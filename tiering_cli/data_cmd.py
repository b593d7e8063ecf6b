"""`tiering validate` and `tiering demo-data`: check an export against the data contract;
write the demo CRM."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from tiering_cli.common import CONFIG_OPTION, console, fail, known_errors, read_config

if TYPE_CHECKING:
    from features.config import DataConfig
    from features.contract import LoadResult

FORMATS = ("csv", "parquet")


def validate(config: Path = CONFIG_OPTION) -> None:
    """Map, clean and validate the export named in the config; print the data-quality report.

    Exits with code 2 and a list of every broken rule (table, column, rule, examples) when the
    data breaks the contract, or when training would refuse it later (ICP criteria on columns
    the export lacks, only one outcome, too little history for the snapshots' time split, a
    feature the leakage audit refuses).
    """
    from features.contract import DataContractError, export_parts, load_tables
    from features.quality import quality_report, render_quality, training_problems

    settings = read_config(config)
    with known_errors():
        parts = export_parts(settings.data)
        result = _load_parts(settings.data, parts) if parts else load_tables(settings.data)
        render_quality(quality_report(result.tables, result.report), console)
        problems = training_problems(
            result.tables,
            settings.icp,
            settings.features,
            settings.leakage,
            settings.data.post_outcome,
            horizon_days=settings.training.horizon_days,
            warmup_days=settings.training.snapshot_warmup_days,
        )
        if problems:
            raise DataContractError(problems)
    console.print(f"[green]valid:[/] the data meets the contract ({config})")


def _load_parts(data: DataConfig, parts: list[str]) -> LoadResult:
    """``features.contract.check_parts`` with a status line per part."""
    from features.contract import check_parts

    with console.status(f"Checking {len(parts)} parts") as status:
        result = check_parts(
            data,
            parts,
            lambda number, part: status.update(
                f"Checking part {number + 1} of {len(parts)} ({part})"
            ),
        )
    console.print(
        f"{len(parts)} parts meet the contract; the quality report and the training checks "
        f"below read the first part ({parts[0]}) as a sample of the accounts"
    )
    return result


def demo_data(
    accounts: Annotated[
        int, typer.Option("--accounts", "-n", min=1, help="Number of accounts.")
    ] = 5000,
    seed: Annotated[
        int, typer.Option("--seed", "-s", help="Random seed: same seed, same bytes.")
    ] = 7,
    dirt_rate: Annotated[
        float,
        typer.Option(
            "--dirt-rate",
            min=0.0,
            max=1.0,
            help="Share of values made dirty as in real exports (case variants, gaps, duplicates).",
        ),
    ] = 0.02,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the CSV/Parquet files and truth/.")
    ] = Path("data/demo"),
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
    part_accounts: Annotated[
        int | None,
        typer.Option(
            "--part-accounts",
            min=1,
            help="Write a partitioned Parquet export: every table a folder of parts of this "
            "many accounts each (implies --format parquet).",
        ),
    ] = None,
) -> None:
    """Write the demo CRM export (accounts, opportunities, activities) and its ground truth."""
    if fmt not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    from demo import write_demo

    checked: Literal["csv", "parquet"] = "csv" if fmt == "csv" else "parquet"
    if part_accounts is not None:
        checked = "parquet"

    with console.status(f"Generating {accounts:,} demo accounts"):
        paths = write_demo(
            out,
            n_accounts=accounts,
            seed=seed,
            dirt_rate=dirt_rate,
            fmt=checked,
            part_accounts=part_accounts,
        )
    for name, path in paths.items():
        console.print(f"wrote {name}: {path}")
