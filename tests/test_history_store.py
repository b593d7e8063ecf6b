"""The tier history store on SQLite and on a real PostgreSQL server: runs round-trip with
their figures, a rerun of a date replaces it, and a run killed mid-write (SIGKILL) leaves no
trace."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, inspect, text

from serving.history import VERSION_TABLE, HistoryError, HistoryStore, RunRecord, history_url

from support import free_port

REPO = Path(__file__).resolve().parents[1]


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
    from serving.history import ContributionRow, RunRow, TierRow

    with hist.engine.begin() as conn:
        conn.execute(TierRow.__table__.delete())
        conn.execute(RunRow.__table__.delete())
        conn.execute(ContributionRow.__table__.delete())


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
    hist = HistoryStore(f"postgresql+psycopg://nobody:secret@127.0.0.1:{free_port()}/none")
    with pytest.raises(HistoryError, match="cannot open") as err:
        hist.runs()
    assert "secret" not in str(err.value)


def _empty_database(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    """A URL of a database with no tables yet, on ``backend``."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'upgraded.db'}"
    server = request.getfixturevalue("postgres_url")
    name = f"upgrade_{tmp_path.name.lower().replace('-', '_')}"[:60]
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return server.rsplit("/", 1)[0] + f"/{name}"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_history_of_revision_0002_upgrades_to_0003_and_keeps_its_runs(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    from alembic import command
    from alembic.config import Config as AlembicConfig

    from serving.history import MIGRATIONS

    url = _empty_database(request, backend, tmp_path)
    engine = create_engine(url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
    # A run written by the code of revision 0002: none of the new columns exist yet.
    with engine.begin() as conn:
        assert "tiering_contributions" not in inspect(conn).get_table_names()
        conn.execute(
            text(
                "INSERT INTO tiering_runs (run_id, as_of, created_at, model_version, review, "
                "n_accounts, policy, cutoffs, source) VALUES ('old', '2026-05-31', "
                "'2026-05-31 12:00:00', 'v1', true, 1, '{}', '{}', 'batch')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO tiering_tier_history (run_id, as_of, account_id, model_version, "
                "tier, base_tier, ceiling, priority, tier_since, change_code, change_reason, "
                "reason_summary, figures, drivers) VALUES ('old', '2026-05-31', 'A-00001', "
                "'v1', 2, 2, 1, 0.5, '2026-05-31', '', '', '', '{}', '{}')"
            )
        )
    engine.dispose()

    store = HistoryStore(url)  # migrates to the newest revision on first use
    try:
        with store.engine.connect() as conn:
            version = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
        assert version == "0003"
        runs = store.runs()
        assert runs["run_id"].tolist() == ["old"]
        assert runs["reasons_reused"].isna().all() and runs["reasons_explained"].isna().all()
        old = store.rows(run_id="old")
        assert old["account_id"].tolist() == ["A-00001"] and old["input_fingerprint"].isna().all()
        assert store.contributions("key") == {}

        blob = np.arange(4, dtype=np.float64).tobytes()
        explained = pd.DataFrame(
            {
                "account_id": ["A-00001"],
                "explainer_key": ["key"],
                "input_fingerprint": ["fp"],
                "contributions": [blob],
            }
        )
        store.record_run(
            RunRecord(
                as_of=pd.Timestamp("2026-06-30"),
                model_version="v1",
                review=False,
                n_accounts=1,
                reasons_reused=0,
                reasons_explained=1,
            ),
            rows(1).assign(input_fingerprint="fp"),
            contributions=[explained],
        )
        assert store.contributions("key") == {"A-00001": ("fp", blob)}
        assert store.contributions("other models") == {}
        assert store.runs()["reasons_explained"].tolist()[-1] == 1
    finally:
        store.close()
