"""Batch scoring on a Dask LocalCluster (two worker processes): the same tiers, reasons, CRM
rows, snapshot and history as the single-process run; partitioned Parquet swapped in whole."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tiering.bundle import Bundle

from support import TECH, TrainedBundle


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    from tiering.cluster import connect

    with connect("local:2", memory_limit="1GiB") as c:
        yield c


def _history_rows(config: object) -> pd.DataFrame:
    from serving.tier_changes import open_history

    store = open_history(config)  # type: ignore[arg-type]
    run = store.previous_run(pd.Timestamp("2100-01-01"))
    assert run is not None
    rows = store.rows(run_id=str(run["run_id"]), columns=["account_id", "tier", "priority"])
    return rows.sort_values("account_id").reset_index(drop=True)


@pytest.mark.parametrize("within", ["global", "owner"])
def test_dask_tiers_and_reasons_equal_the_single_process_run(
    trained_bundle: TrainedBundle, tmp_path: Path, client: object, within: str
) -> None:
    from features.contract import load_tables
    from serving.batch import score_accounts
    from serving.distributed import score_accounts_distributed
    from serving.group_cutoffs import groups_path
    from tiering.config import CapacityConfig

    bundle = Bundle.load(trained_bundle.bundle_dir)
    # Owners: each rep's seats are filled from the rep's own book, with its own cut-offs.
    capacity = CapacityConfig(within=within, tier1_per_rep=3, tier2_per_rep=8)  # type: ignore[arg-type]
    single_cfg, dask_cfg = (
        trained_bundle.config_writing_to(tmp_path / name).model_copy(update={"capacity": capacity})
        for name in ("single", "dask")
    )
    # A run two months earlier first: the tier history and the customers' change reasons
    # then have a previous run to compare with.
    earlier = load_tables(single_cfg.data).tables.end_of_data() - pd.Timedelta(days=61)
    runs = []
    for as_of in (earlier, None):
        single = score_accounts(
            single_cfg, bundle, as_of=as_of, out=tmp_path / "single" / "tiers.parquet"
        )
        spread = score_accounts_distributed(
            dask_cfg,
            bundle,
            client,  # type: ignore[arg-type]
            as_of=as_of,
            out=tmp_path / "dask" / "tiers",
            partition_size=70,
        )
        runs.append((single, spread))
    assert runs[0][0].as_of < single.as_of
    parts = sorted((tmp_path / "dask" / "tiers").glob("part-*.parquet"))
    assert len(parts) == -(-len(single.scores) // 70) > 2
    expected = pd.read_parquet(single.output)
    got = pd.read_parquet(spread.output)
    pd.testing.assert_frame_equal(got, expected)
    assert expected["reasons"].str.len().gt(2).any()
    assert expected["customer_change_reason"].ne("").any()
    assert expected["previous_tier"].notna().all()
    # The run's summary figures: what the global pass read and decided (texts as categories).
    decided = spread.scores.astype(
        {c: "str" for c, t in spread.scores.dtypes.items() if isinstance(t, pd.CategoricalDtype)}
    )
    pd.testing.assert_frame_equal(decided, single.scores[decided.columns])
    assert spread.capacity_warnings == single.capacity_warnings
    assert spread.books is not None and single.books is not None
    pd.testing.assert_frame_equal(spread.books, single.books)
    # The groups' cut-offs the service tiers single requests with (none for a global run).
    dask_groups, single_groups = groups_path(spread.snapshot), groups_path(single.snapshot)
    assert dask_groups.exists() == single_groups.exists() == (within == "owner")
    if within == "owner":
        assert expected["cutoffs_used"].nunique() > 1  # each owner's own cut-offs
        assert json.loads(dask_groups.read_text()) == json.loads(single_groups.read_text())
    assert got["tier"].nunique() == 3
    pd.testing.assert_frame_equal(
        pd.read_csv(spread.crm, keep_default_na=False),
        pd.read_csv(single.crm, keep_default_na=False),
    )
    pd.testing.assert_frame_equal(
        pd.read_parquet(spread.snapshot), pd.read_parquet(single.snapshot)
    )
    pd.testing.assert_frame_equal(_history_rows(dask_cfg), _history_rows(single_cfg))


def test_a_failed_run_leaves_the_previous_output_whole(
    trained_bundle: TrainedBundle,
    tmp_path: Path,
    client: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from serving import distributed

    bundle = Bundle.load(trained_bundle.bundle_dir)
    config = trained_bundle.config_writing_to(tmp_path)
    config = config.model_copy(
        update={"history": config.history.model_copy(update={"enabled": False})}
    )
    out = tmp_path / "tiers"
    first = distributed.score_accounts_distributed(
        config,
        bundle,
        client,  # type: ignore[arg-type]
        out=out,
        partition_size=100,
        reasons=False,
    )
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    crm_before = first.crm.read_bytes()

    real = distributed._snapshot_parts

    @contextlib.contextmanager
    def broken(*args: Any, **kwargs: Any) -> Iterator[Callable[[int], None]]:
        # The disk fills up once the first partition's part and snapshot rows are written.
        with real(*args, **kwargs) as write:

            def failing(number: int) -> None:
                if number > 0:
                    raise OSError("disk full")
                write(number)

            yield failing

    monkeypatch.setattr(distributed, "_snapshot_parts", broken)
    with pytest.raises(OSError, match="disk full"):
        distributed.score_accounts_distributed(
            config,
            bundle,
            client,  # type: ignore[arg-type]
            out=out,
            partition_size=50,
        )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert first.crm.read_bytes() == crm_before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize(
    ("text", "address", "workers"),
    [
        ("local", None, None),
        ("local:3", None, 3),
        ("tcp://10.0.0.5:8786", "tcp://10.0.0.5:8786", None),
    ],
)
def test_cluster_addresses_parse(text: str, address: str | None, workers: int | None) -> None:
    from tiering.cluster import ClusterSpec

    assert ClusterSpec.parse(text) == ClusterSpec(address, workers)


@pytest.mark.parametrize("text", ["local:0", "remote", "http://x:1", "local:two"])
def test_a_bad_cluster_address_is_refused_with_the_forms_that_work(text: str) -> None:
    from tiering.cluster import ClusterError, ClusterSpec

    with pytest.raises(ClusterError, match="local:N|at least one worker"):
        ClusterSpec.parse(text)


def _cli_config(
    trained: TrainedBundle, folder: Path, cluster: str | None = None, extra: str = ""
) -> Path:
    data = trained.config.data
    assert data.accounts is not None and data.opportunities is not None
    assert data.activities is not None
    lines = [
        f'[data.accounts]\npath = "{data.accounts.path}"',
        f'[data.opportunities]\npath = "{data.opportunities.path}"',
        f'[data.activities]\npath = "{data.activities.path}"',
        "[features]\ntechnographics = [" + ", ".join(f'"{t}"' for t in TECH) + "]",
        f'[history]\nurl = "sqlite:///{folder / "history.db"}"',
        f'[scoring]\nsnapshot = "{folder / "snapshot.parquet"}"'
        + (f'\ncluster = "{cluster}"' if cluster else ""),
        extra,
    ]
    path = folder / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _score_args(config: Path, trained: TrainedBundle, out: Path | None, *extra: str) -> list[str]:
    """`tiering score` with ``config``, the session's bundle and ``out`` (None: the default)."""
    where = ["--out", str(out)] if out is not None else []
    return ["score", "--config", str(config), "--model", str(trained.bundle_dir), *where, *extra]


def test_cli_refuses_a_bad_cluster_in_the_config_with_one_line(
    trained_bundle: TrainedBundle, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from tiering_cli.main import app

    config = _cli_config(trained_bundle, tmp_path, cluster="local:two")
    result = CliRunner().invoke(app, _score_args(config, trained_bundle, tmp_path / "tiers"))
    assert result.exit_code == 2, result.output
    assert "error: cluster: 'local:two' is not a cluster" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "tiers").exists()


def test_cli_refuses_elevations_on_a_cluster_before_it_starts_one(
    trained_bundle: TrainedBundle, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from tiering_cli.main import app

    config = _cli_config(trained_bundle, tmp_path, extra="[elevation]\nenabled = true")
    out = tmp_path / "tiers"
    result = CliRunner().invoke(
        app, _score_args(config, trained_bundle, out, "--cluster", "local:1")
    )
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "elevations ([elevation] enabled)" in text and "set [elevation] enabled = false" in text
    assert "Traceback" not in result.output
    assert not out.exists() and not (tmp_path / "history.db").exists()


def test_cli_refuses_a_file_as_the_cluster_output_before_it_starts_one(
    trained_bundle: TrainedBundle, tmp_path: Path
) -> None:
    """A single-process run's scores file where the cluster run would write its directory of
    parts: one line saying what to do, the file kept, nothing scored."""
    from typer.testing import CliRunner

    from tiering_cli.main import app

    config = _cli_config(trained_bundle, tmp_path)
    out = tmp_path / "tiers.parquet"
    out.write_bytes(b"the previous run's scores")
    result = CliRunner().invoke(
        app, _score_args(config, trained_bundle, out, "--cluster", "local:1")
    )
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"--out {out} is a file" in text and f"--out {tmp_path / 'tiers'}" in text
    assert "Traceback" not in result.output
    assert out.read_bytes() == b"the previous run's scores"
    assert not (tmp_path / "snapshot.parquet").exists() and not (tmp_path / "history.db").exists()


def test_cli_refuses_a_cluster_runs_directory_as_a_single_process_output(
    trained_bundle: TrainedBundle, tmp_path: Path
) -> None:
    """The reverse: a single-process run pointed at a cluster run's parts says so before it
    scores, and the parts stay."""
    from typer.testing import CliRunner

    from tiering_cli.main import app

    config = _cli_config(trained_bundle, tmp_path)
    out = tmp_path / "tiers"
    out.mkdir()
    (out / "part-0.parquet").write_bytes(b"a cluster run's part")
    result = CliRunner().invoke(app, _score_args(config, trained_bundle, out))
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"--out {out} is a directory" in text and f"--out {out}.parquet" in text
    assert "Traceback" not in result.output
    assert (out / "part-0.parquet").read_bytes() == b"a cluster run's part"
    assert not (tmp_path / "snapshot.parquet").exists() and not (tmp_path / "history.db").exists()


@pytest.mark.slow
def test_cli_scores_on_a_local_cluster(trained_bundle: TrainedBundle, tmp_path: Path) -> None:
    """Without --out, a cluster run writes its directory beside the configured scores file
    (tiers.parquet -> tiers/) and leaves a single-process run's file as it was."""
    from typer.testing import CliRunner

    from tiering_cli.main import app

    config = _cli_config(trained_bundle, tmp_path)
    config.write_text(
        config.read_text().replace(
            "[scoring]\n", f'[scoring]\noutput = "{tmp_path / "tiers.parquet"}"\n'
        )
    )
    (tmp_path / "tiers.parquet").write_bytes(b"a single-process run's scores")
    result = CliRunner().invoke(
        app, _score_args(config, trained_bundle, None, "--cluster", "local:2")
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tiers.parquet").read_bytes() == b"a single-process run's scores"
    scores = pd.read_parquet(tmp_path / "tiers")
    assert len(scores) == len(pd.read_csv(trained_bundle.config.data.accounts.path))  # type: ignore[union-attr]
    assert set(scores["tier"]) == {1, 2, 3}
    assert (tmp_path / "tiers_crm.csv").is_file() and (tmp_path / "snapshot.parquet").is_file()


@pytest.mark.slow
def test_a_task_failing_on_a_worker_is_one_line_in_the_terminal(
    trained_bundle: TrainedBundle, tmp_path: Path
) -> None:
    """Accounts without a column the model needs: the error is raised in a worker's
    task. The terminal shows the CLI's one line naming it, not the worker's log of the failed
    task with its traceback."""
    import subprocess
    import sys

    data = trained_bundle.config.data
    assert data.accounts is not None
    accounts = pd.read_csv(data.accounts.path).drop(columns=["tech_cloud"])
    accounts.to_csv(tmp_path / "accounts.csv", index=False)
    config = _cli_config(trained_bundle, tmp_path).read_text()
    config = config.replace(
        f'path = "{data.accounts.path}"', f'path = "{tmp_path / "accounts.csv"}"'
    )
    config = config.replace('"tech_cloud", ', "").replace(', "tech_cloud"', "")
    (tmp_path / "config.toml").write_text(config)
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "tiering"),
            *_score_args(
                tmp_path / "config.toml", trained_bundle, tmp_path / "tiers", "--cluster", "local:2"
            ),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    terminal = done.stdout + done.stderr
    assert done.returncode == 2, terminal
    assert "error: features: 1 model input column(s) missing, e.g. ['tech_cloud']" in terminal
    assert "Traceback" not in terminal and "Compute Failed" not in terminal
    assert "CancelledError" not in terminal
    assert not (tmp_path / "tiers").exists()
