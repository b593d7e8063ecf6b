"""Risk: a partitioned export (every table a folder of parts by account) is scored or checked
differently from the same rows in one file, or a broken part is accepted or not named."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from tiering.bundle import Bundle
from tiering.config import Config
from tiering_cli import data_cmd

from support import TrainedBundle

TABLES = ("accounts", "opportunities", "activities", "subscriptions", "usage", "tickets")


def _partitioned(folder: Path, n_accounts: int = 600, part_accounts: int = 200) -> Path:
    from demo import write_demo

    write_demo(
        folder,
        n_accounts=n_accounts,
        seed=5,
        dirt_rate=0.0,
        fmt="parquet",
        part_accounts=part_accounts,
        workers=1,
    )
    return folder


def _pointed_at(config: Config, folder: Path) -> Config:
    moved = {
        name: source.model_copy(update={"path": folder / name})
        for name, source in config.data.sources().items()
    }
    return config.model_copy(update={"data": config.data.model_copy(update=moved)})


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    from tiering.cluster import connect

    with connect("local:2", memory_limit="1GiB") as c:
        yield c


def test_generator_parts_hold_the_rows_of_the_plain_export_by_account(tmp_path: Path) -> None:
    from demo import write_demo

    parts = _partitioned(tmp_path / "parts", n_accounts=500, part_accounts=200)
    plain = write_demo(
        tmp_path / "plain", n_accounts=500, seed=5, dirt_rate=0.0, fmt="parquet", workers=1
    )
    for table in TABLES:
        files = sorted((parts / table).glob("part-*.parquet"))
        assert [f.name for f in files] == [f"part-{k:05d}.parquet" for k in range(3)]
        frames = [pd.read_parquet(f) for f in files]
        # part k holds accounts 200k+1 .. 200(k+1), in every table
        for k, frame in enumerate(frames):
            numbers = frame["account_id"].astype(str).str[2:].astype(int)
            assert numbers.between(200 * k + 1, 200 * (k + 1)).all(), (table, k)
        whole = pd.concat(frames, ignore_index=True).astype(str)
        expected = pd.read_parquet(plain[table]).astype(str)
        columns = list(expected.columns)
        pd.testing.assert_frame_equal(
            whole.sort_values(columns).reset_index(drop=True),
            expected.sort_values(columns).reset_index(drop=True),
        )


def _end_earlier(folder: Path, part: str, days: int) -> None:
    """Part ``part``'s deals and activities stop ``days`` before the rest of the export's."""
    opportunities = folder / "opportunities" / f"{part}.parquet"
    activities = folder / "activities" / f"{part}.parquet"
    deals, acts = pd.read_parquet(opportunities), pd.read_parquet(activities)
    cutoff = pd.to_datetime(acts["occurred_at"]).max() - pd.Timedelta(days=days)
    created, closed = pd.to_datetime(deals["created_at"]), pd.to_datetime(deals["closed_at"])
    deals[(created <= cutoff) & ~(closed > cutoff)].to_parquet(opportunities, index=False)
    acts[pd.to_datetime(acts["occurred_at"]) <= cutoff].to_parquet(activities, index=False)


@pytest.mark.parametrize("last_part_ends", ["with the rest", "a month earlier"])
def test_a_partitioned_export_on_two_workers_tiers_as_one_process_does(
    trained_bundle: TrainedBundle, tmp_path: Path, client: object, last_part_ends: str
) -> None:
    from serving.batch import score_accounts
    from serving.distributed import score_accounts_distributed

    folder = _partitioned(tmp_path / "data")
    if last_part_ends == "a month earlier":
        # Its own end of data is not the list's: its features are built again as of the list's.
        _end_earlier(folder, "part-00002", days=30)
    bundle = Bundle.load(trained_bundle.bundle_dir)
    single_cfg = _pointed_at(trained_bundle.config_writing_to(tmp_path / "single"), folder)
    dask_cfg = _pointed_at(trained_bundle.config_writing_to(tmp_path / "dask"), folder)
    single = score_accounts(single_cfg, bundle, out=tmp_path / "single" / "tiers.parquet")
    spread = score_accounts_distributed(
        dask_cfg,
        bundle,
        client,  # type: ignore[arg-type]
        out=tmp_path / "dask" / "tiers",
    )
    # One output part per export part: the workers read the export's partitions as they are.
    assert len(list((tmp_path / "dask" / "tiers").glob("part-*.parquet"))) == 3
    expected = pd.read_parquet(single.output)
    got = pd.read_parquet(spread.output)
    assert len(expected) == 600 and expected["tier"].nunique() == 3
    pd.testing.assert_frame_equal(got, expected)
    pd.testing.assert_frame_equal(
        pd.read_parquet(spread.snapshot), pd.read_parquet(single.snapshot)
    )


def test_validate_names_the_table_part_and_rule_of_a_broken_part_and_writes_nothing(
    tmp_path: Path,
) -> None:
    folder = _partitioned(tmp_path / "data")
    deals = folder / "opportunities" / "part-00001.parquet"
    frame = pd.read_parquet(deals)
    frame.loc[frame.index[0], "outcome"] = "maybe"
    frame.to_parquet(deals)
    # An account in two parts: each part alone is fine, the export is not.
    first = pd.read_parquet(folder / "accounts" / "part-00000.parquet").head(1)
    last = folder / "accounts" / "part-00002.parquet"
    pd.concat([pd.read_parquet(last), first], ignore_index=True).to_parquet(last)
    config = folder / "tiering.toml"
    config.write_text("".join(f'[data.{t}]\npath = "{t}"\n' for t in TABLES))
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    app = typer.Typer(add_completion=False)
    app.command("validate")(data_cmd.validate)
    app.command("demo-data")(data_cmd.demo_data)
    result = CliRunner().invoke(
        app, ["validate", "--config", str(config)], env={"COLUMNS": "250", "NO_COLOR": "1"}
    )
    output = " ".join(result.output.split())
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    assert "opportunities.outcome in part-00001: 1 values have an unknown outcome label" in output
    assert "accounts.account_id: 1 ids are in more than one part (part-00000, part-00002)" in (
        output
    )
    assert f"'{first['account_id'].iloc[0]}'" in output
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_a_table_lacking_a_part_is_refused_with_the_part_named(tmp_path: Path) -> None:
    from features.config import DataConfig, TableSource
    from features.contract import DataContractError, export_parts

    folder = _partitioned(tmp_path / "data")
    (folder / "activities" / "part-00002.parquet").unlink()
    data = DataConfig(**{t: TableSource(path=folder / t) for t in TABLES})
    with pytest.raises(DataContractError, match=r"activities: lacks parts .*: part-00002"):
        export_parts(data)


def test_demo_data_writes_a_partitioned_export_on_request(tmp_path: Path) -> None:
    app = typer.Typer(add_completion=False)
    app.command("validate")(data_cmd.validate)
    app.command("demo-data")(data_cmd.demo_data)
    args = ["demo-data", "--accounts", "250", "--part-accounts", "100", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for table in TABLES:
        parts = sorted(p.name for p in (tmp_path / table).glob("*.parquet"))
        assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    accounts = pd.read_parquet(tmp_path / "accounts" / "part-00002.parquet")
    assert accounts["account_id"].nunique() == 50
    assert (tmp_path / "truth" / "accounts_truth.parquet").is_file()
