"""The tier history store on SQLite and on a real PostgreSQL server: runs round-trip with
their figures, a rerun of a date replaces it, and a run killed mid-write (SIGKILL) leaves no
trace."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import inspect

from serving.history import VERSION_TABLE, HistoryError, HistoryStore, RunRecord, history_url

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- a throwaway PostgreSQL server
def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of the Debian package, in a temporary folder on a free port, for
    this module only. PostgreSQL refuses to run as root, so as root it runs as the
    ``postgres`` user."""
    bindir = _postgres_bin()
    if bindir is None:
        message = (
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
            "(apt-get install postgresql)"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + "; CI must install them (.ci/run does)")
        pytest.skip(message)
    as_root = os.geteuid() == 0
    # As root the server runs as `postgres`, which must reach the folder: /tmp, not a TMPDIR
    # that may sit under root's home.
    root = Path(tempfile.mkdtemp(prefix="tiering-pg-", dir="/tmp" if as_root else None))
    if as_root:
        shutil.chown(root, "postgres")

    def run(*args: str) -> None:
        command = [*(["runuser", "-u", "postgres", "--"] if as_root else []), *args]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr or done.stdout}")

    port = _free_port()
    data = root / "data"
    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "tiering", "--no-sync")
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(root / "server.log"),
        "-w",
        "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
        "start",
    )
    try:
        yield f"postgresql+psycopg://tiering@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistoryStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'history.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    hist = HistoryStore(url)
    _wipe(hist)
    yield hist
    _wipe(hist)
    hist.close()


def _wipe(hist: HistoryStore) -> None:
    from serving.history import RunRow, TierRow

    with hist.engine.begin() as conn:
        conn.execute(TierRow.__table__.delete())
        conn.execute(RunRow.__table__.delete())


# ------------------------------------------------------------------------------- helpers
def rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tier = rng.integers(1, 4, n)
    return pd.DataFrame(
        {
            "account_id": [f"A-{i:05d}" for i in range(n)],
            "tier": tier,
            "base_tier": np.where(rng.random(n) < 0.1, 4 - tier, tier),
            "previous_tier": rng.integers(1, 4, n),
            "ceiling": rng.integers(1, 3, n),
            "priority": rng.random(n),
            "owner": [f"rep {i % 7}" for i in range(n)],
            "territory": [None if i % 11 == 0 else f"T{i % 3}" for i in range(n)],
            "change_code": "",
            "change_reason": "",
            "reason_summary": [f"Tier {t} — win chance 30 %" for t in tier],
            "figures": [{"p_win": float(p), "expected_value": 1e5 * p} for p in rng.random(n)],
            "drivers": [{"Meetings in the last 90 days": float(v)} for v in rng.normal(0, 5, n)],
        }
    )


def record(as_of: str, version: str = "v1", review: bool = True, n: int = 1) -> RunRecord:
    return RunRecord(
        as_of=pd.Timestamp(as_of),
        model_version=version,
        review=review,
        n_accounts=n,
        policy={"method": "quantile", "stability": {"review_months": 3}},
        cutoffs={"tier1": 0.7, "tier12": 0.2},
    )


# --------------------------------------------------------------------------------- tests
def test_a_run_round_trips_with_its_figures(store: HistoryStore) -> None:
    written = rows(50)
    run_id = store.record_run(record("2026-06-30", n=50), written)
    back = store.rows(run_id=run_id)
    assert len(back) == 50
    assert back["account_id"].tolist() == written["account_id"].tolist()
    for col in ("tier", "base_tier", "previous_tier", "ceiling"):
        assert back[col].tolist() == written[col].tolist()
    np.testing.assert_allclose(back["priority"], written["priority"])
    assert back["figures"].tolist() == written["figures"].tolist()
    assert back["drivers"].tolist() == written["drivers"].tolist()
    assert back["territory"].isna().sum() == written["territory"].isna().sum()
    assert back["reason_summary"].iloc[0] == written["reason_summary"].iloc[0]  # non-ASCII too
    assert (back["as_of"] == pd.Timestamp("2026-06-30")).all()
    runs = store.runs()
    assert runs["run_id"].tolist() == [run_id]
    assert runs["policy"].iloc[0]["stability"] == {"review_months": 3}
    assert set(inspect(store.engine).get_table_names()) >= {
        "tiering_runs",
        "tiering_tier_history",
        VERSION_TABLE,
    }


def test_a_rerun_of_a_date_replaces_it_and_previous_runs_are_found(store: HistoryStore) -> None:
    store.record_run(record("2026-06-30"), rows(20, seed=1))
    first_july = store.record_run(record("2026-07-31", review=False), rows(20, seed=2))
    again = store.record_run(record("2026-07-31", version="v2", review=False), rows(15, seed=3))
    assert again != first_july
    runs = store.runs()
    assert runs["as_of"].dt.strftime("%Y-%m-%d").tolist() == ["2026-06-30", "2026-07-31"]
    assert runs["model_version"].tolist() == ["v1", "v2"]
    assert len(store.rows(run_id=first_july)) == 0
    assert len(store.rows(run_id=again)) == 15
    prev = store.previous_run(pd.Timestamp("2026-07-31"))
    assert prev is not None and str(prev["as_of"]) == "2026-06-30"
    assert store.previous_run(pd.Timestamp("2026-06-30")) is None
    assert store.last_review(pd.Timestamp("2026-09-30")) == pd.Timestamp("2026-06-30")
    one = store.account_history("A-00003")
    assert one["as_of"].dt.strftime("%Y-%m-%d").tolist() == ["2026-06-30", "2026-07-31"]


def test_bad_rows_write_nothing(store: HistoryStore) -> None:
    store.record_run(record("2026-06-30"), rows(10))
    with pytest.raises(ValueError, match="missing columns"):
        store.record_run(record("2026-06-30"), rows(10).drop(columns=["ceiling"]))
    duplicated = pd.concat([rows(5), rows(5)])
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        store.record_run(record("2026-07-31"), duplicated)
    assert store.runs()["as_of"].dt.strftime("%Y-%m-%d").tolist() == ["2026-06-30"]
    assert len(store.rows()) == 10


WRITER = textwrap.dedent(
    """
    import sys, time
    import pandas as pd
    sys.path.insert(0, {tests!r})
    from test_history_store import record, rows
    from serving.history import HistoryStore
    import serving.history as history

    history.INSERT_CHUNK = 500
    def slow(done):
        print("wrote", done, flush=True)
        time.sleep(0.3)
    store = HistoryStore({url!r})
    store.record_run(record("2026-07-31", version="killed"), rows(20_000, seed=9), progress=slow)
    print("committed", flush=True)
    """
)


def test_a_run_killed_mid_write_leaves_no_partial_run(store: HistoryStore) -> None:
    store.record_run(record("2026-06-30"), rows(30))
    store.record_run(record("2026-07-31", version="before"), rows(30, seed=4))
    script = WRITER.format(tests=str(Path(__file__).parent), url=store.url)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 120
    while len(seen) < 3 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.strip())
    assert seen[-1].startswith("wrote"), (seen, proc.stderr.read() if proc.stderr else "")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # Rows were inserted (and the old run deleted) inside the killed transaction: none of it
    # counts.
    store.close()
    runs = store.runs()
    assert runs["model_version"].tolist() == ["v1", "before"]
    july = runs.loc[runs["model_version"] == "before", "run_id"].iloc[0]
    assert len(store.rows(run_id=july)) == 30
    assert len(store.rows()) == 60
    # The store is usable after the kill, and the rerun completes.
    store.record_run(record("2026-07-31", version="rerun"), rows(40, seed=5))
    assert store.runs()["model_version"].tolist() == ["v1", "rerun"]


def test_default_url_sits_beside_the_mlflow_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIERING_HISTORY_URL", raising=False)
    url = history_url(None, f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    assert url == f"sqlite:///{tmp_path / 'mlruns' / 'history.db'}"
    assert history_url("postgresql+psycopg://x@h/db", "sqlite:///a.db").startswith("postgresql")
    monkeypatch.setenv("TIERING_HISTORY_URL", "sqlite:///elsewhere.db")
    assert history_url("postgresql+psycopg://x@h/db", "sqlite:///a.db") == "sqlite:///elsewhere.db"


def test_an_unreachable_database_gets_a_clear_error() -> None:
    hist = HistoryStore(f"postgresql+psycopg://nobody:secret@127.0.0.1:{_free_port()}/none")
    with pytest.raises(HistoryError, match="cannot open") as err:
        hist.runs()
    assert "secret" not in str(err.value)
