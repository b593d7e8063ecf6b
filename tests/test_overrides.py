"""Risk: a rep's override lost at the next run or after a retrain, an override that breaks the
rep's capacity, one that never expires, a bad override half-written, or the HTTP / CLI doors
to them unprotected or answering with a traceback."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from serving.batch import score_accounts
from serving.history import HistoryStore
from serving.overrides import (
    OverrideError,
    active_override,
    active_overrides,
    all_overrides,
    clear_override,
    set_override,
)
from serving.tier_changes import open_history
from tiering.bundle import Bundle
from tiering.config import CapacityConfig, Config, HistoryConfig

from support import TrainedBundle, train_bundle

APRIL = dt.date(2026, 4, 1)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistoryStore]:
    from serving.overrides import OverrideRow

    url = (
        f"sqlite:///{tmp_path / 'history.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    hist = HistoryStore(url)
    from serving.history import RunRow, TierRow

    with hist.engine.begin() as conn:
        conn.execute(OverrideRow.__table__.delete())
        conn.execute(TierRow.__table__.delete())
        conn.execute(RunRow.__table__.delete())
    yield hist
    hist.close()


def test_overrides_round_trip_replace_and_clear(store: HistoryStore) -> None:
    known = {"A-1", "A-2"}
    first = set_override(
        store, "A-1", tier=1, reason="CFO meeting", by="Ana", known_ids=known, today=APRIL
    )
    assert active_override(store, "A-1", today=APRIL) == first
    second = set_override(
        store,
        "A-1",
        tier=2,
        reason="budget frozen",
        by="Ben",
        until=dt.date(2026, 5, 15),
        known_ids=known,
        today=APRIL,
    )
    assert active_overrides(store, today=APRIL) == [second]
    # In force on its last day, gone the day after.
    assert active_override(store, "A-1", today=dt.date(2026, 5, 15)) == second
    assert active_override(store, "A-1", today=dt.date(2026, 5, 16)) is None
    cleared = clear_override(store, "A-1", by="Cara", today=APRIL)
    assert cleared.reason == "budget frozen"
    assert active_overrides(store) == []
    history = all_overrides(store)
    assert len(history) == 2 and history["cleared_by"].tolist() == ["Ben", "Cara"]
    with pytest.raises(OverrideError) as err:
        clear_override(store, "A-1", by="Cara", today=APRIL)
    assert err.value.field == "account_id"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"account_id": "A-404"}, "account_id", "not in the account list"),
        ({"tier": 0}, "tier", "use 1, 2 or 3"),
        ({"tier": 4}, "tier", "use 1, 2 or 3"),
        ({"until": dt.date(2026, 3, 31)}, "until", "in the past"),
        ({"reason": "  "}, "reason", "missing"),
        ({"by": ""}, "by", "missing"),
    ],
)
def test_bad_overrides_name_the_field_and_write_nothing(
    store: HistoryStore, change: dict[str, object], field: str, words: str
) -> None:
    args: dict[str, object] = {
        "account_id": "A-1",
        "tier": 1,
        "reason": "expansion signed",
        "by": "Ana",
        "until": None,
    }
    args.update(change)
    with pytest.raises(OverrideError, match=words) as err:
        set_override(store, known_ids={"A-1"}, today=APRIL, **args)  # type: ignore[arg-type]
    assert err.value.field == field
    assert all_overrides(store).empty


# ------------------------------------------------------------------ batch runs with overrides
def _config(trained: TrainedBundle, folder: Path) -> Config:
    config = trained.config_writing_to(folder)
    return config.model_copy(
        update={
            "history": HistoryConfig(url=f"sqlite:///{folder / 'history.db'}"),
            "capacity": CapacityConfig(within="owner", tier1_per_rep=2, tier2_per_rep=3),
            "scoring": config.scoring.model_copy(update={"snapshot": folder / "snap.parquet"}),
        }
    )


def _run(config: Config, bundle: Bundle, day: str, folder: Path) -> pd.DataFrame:
    from features.contract import load_tables

    result = score_accounts(config, bundle, as_of=day, out=folder / f"t_{day}.parquet")
    owners = load_tables(config.data).tables.accounts[["account_id", "owner"]]
    return pd.read_parquet(result.output).merge(owners.astype({"account_id": str}), on="account_id")


def test_an_override_survives_retrain_and_rescore_takes_its_seat_and_expires(
    trained_bundle: TrainedBundle, tmp_path: Path
) -> None:
    config = _config(trained_bundle, tmp_path)
    first = Bundle.load(trained_bundle.bundle_dir)
    march = _run(config, first, "2026-03-31", tmp_path)
    # An owner whose two Tier 1 seats are full, and one of their Tier 3 accounts.
    full = march[march["tier"] == 1].groupby("owner").size()
    owner = str(full[full == 2].index[0])
    mine = march[march["owner"] == owner]
    target = str(mine.loc[mine["tier"] == 3, "account_id"].iloc[0])
    weakest = str(mine[mine["tier"] == 1].sort_values("priority")["account_id"].iloc[0])
    store = open_history(config)
    set_override(
        store,
        target,
        tier=1,
        reason="signed an expansion LOI",
        by="Ana",
        until=dt.date(2026, 5, 15),
        known_ids=set(march["account_id"]),
        today=APRIL,
    )
    retrained = Bundle.load(
        train_bundle(trained_bundle.config, tmp_path / "retrained", version="test-2")
    )
    assert retrained.version != first.version
    for _ in range(2):  # a re-score of the same date keeps it too
        april = _run(config, retrained, "2026-04-30", tmp_path)
        a = april.set_index("account_id")
        assert a.loc[target, "tier"] == 1
        assert a.loc[target, "base_tier"] == 3
        assert "signed an expansion LOI" in a.loc[target, "change_reason"]
        assert "Ana" in a.loc[target, "tier_rule_text"]
        # It took a seat: the owner still holds two Tier 1 accounts, the weakest moved down.
        assert int((april.loc[april["owner"] == owner, "tier"] == 1).sum()) == 2
        assert a.loc[weakest, "tier"] > 1
        assert "seat went to a rep override" in a.loc[weakest, "change_reason"]
    rows = store.rows(account_id=weakest)
    assert rows["change_code"].iloc[-1] == "seat_to_pin"
    # Expired on 15 May: the May run returns it to the tier the policy gives it.
    may = _run(config, retrained, "2026-05-31", tmp_path).set_index("account_id")
    assert may.loc[target, "tier"] == may.loc[target, "base_tier"] != 1
    assert "expired" in may.loc[target, "change_reason"]
    assert store.rows(account_id=target)["change_code"].iloc[-1] == "pin_ended"


# ------------------------------------------------------------------ HTTP and CLI doors
API_KEY = "override-key-0123456789"


# BentoML's metrics live in one registry per process: the service gets its own process, so it
# starts whatever other service tests ran in this worker.
HTTP_SCRIPT = """
import json, sys
from starlette.testclient import TestClient
from serving.service import TieringService

some, key = sys.argv[1], sys.argv[2]
body = {"tier": 1, "reason": "board-level sponsor", "by": "Ana"}
out = {}
with TestClient(TieringService.to_asgi()) as client:
    out["no_key"] = client.put(f"/accounts/{some}/override", json=body).status_code
    client.headers["X-API-Key"] = key
    bad = {
        "unknown": client.put("/accounts/A-404/override", json=body),
        "tier": client.put(f"/accounts/{some}/override", json={**body, "tier": 4}),
        "reason": client.put(f"/accounts/{some}/override", json={**body, "reason": ""}),
        "until": client.put(f"/accounts/{some}/override", json={**body, "until": "2001-01-01"}),
    }
    out["bad"] = {k: [r.status_code, r.text] for k, r in bad.items()}
    done = client.put(f"/accounts/{some}/override", json=body)
    out["set"] = [done.status_code, done.json()]
    gone = client.delete(f"/accounts/{some}/override", params={"by": "Ben"})
    out["cleared"] = [gone.status_code, gone.json()]
    out["again"] = client.delete(f"/accounts/{some}/override", params={"by": "Ben"}).status_code
    scored = client.post("/score", json={"accounts": [{"account_id": some}], "reasons": False})
    out["score"] = [scored.status_code, scored.json()]
print(json.dumps(out))
"""


def test_http_override_put_and_delete_with_the_api_key(
    trained_bundle: TrainedBundle, tmp_path: Path
) -> None:
    import json
    import os
    import subprocess
    import sys

    config = _config(trained_bundle, tmp_path)
    result = score_accounts(
        config, Bundle.load(trained_bundle.bundle_dir), out=tmp_path / "t.parquet"
    )
    some = str(result.scores["account_id"].iloc[0])
    db = tmp_path / "history.db"
    env = {
        **os.environ,
        "TIERING_BUNDLE_DIR": str(trained_bundle.bundle_dir),
        "TIERING_SNAPSHOT": str(result.snapshot),
        "TIERING_API_KEY": API_KEY,
        "TIERING_AUTH_DISABLED": "false",
        "TIERING_HISTORY_URL": f"sqlite:///{db}",
        "BENTOML_DO_NOT_TRACK": "true",
    }
    env.pop("TIERING_CONFIG", None)
    store = HistoryStore(f"sqlite:///{db}")
    store.runs()  # the schema exists before the service's first request
    done = subprocess.run(
        [sys.executable, "-c", HTTP_SCRIPT, some, API_KEY],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["no_key"] == 401
    expected = {
        "unknown": (404, "account_id"),
        "tier": (422, "tier"),
        "reason": (422, "reason"),
        "until": (422, "until"),
    }
    for name, (status, field) in expected.items():
        got_status, text = out["bad"][name]
        assert got_status == status, (name, text)
        assert field in text
    assert out["set"][0] == 200 and out["set"][1]["tier"] == 1
    assert out["cleared"][0] == 200 and out["cleared"][1]["status"] == "cleared"
    assert out["again"] == 404
    history = all_overrides(store)
    assert len(history) == 1, "the refused overrides wrote nothing; the good one was cleared"
    assert history["cleared_by"].tolist() == ["Ben"]
    status, scored = out["score"]
    assert status == 200
    assert scored["accounts"][0]["cutoffs_used"].startswith("owner ")
    assert "'s cut-offs from the batch run" in scored["cutoffs"]["description"]


def test_cli_override_set_list_clear(trained_bundle: TrainedBundle, tmp_path: Path) -> None:
    from tiering_cli.main import app

    config = trained_bundle.config_writing_to(tmp_path)
    data = config.data
    assert data.accounts is not None and data.opportunities is not None
    toml = tmp_path / "deploy.toml"
    toml.write_text(
        f'[data.accounts]\npath = "{data.accounts.path}"\n'
        f'[data.opportunities]\npath = "{data.opportunities.path}"\n'
        f'[history]\nurl = "sqlite:///{tmp_path / "h.db"}"\n'
        f'[scoring]\nsnapshot = "{tmp_path / "missing.parquet"}"\n'
    )
    run = CliRunner()
    ok = run.invoke(
        app,
        ["override", "set", "A-1", "--tier", "2", "--reason", "x", "--by", "Ana", "-c", str(toml)],
    )
    assert ok.exit_code == 0, ok.output
    listed = run.invoke(app, ["override", "list", "-c", str(toml)])
    assert "A-1" in listed.output and "Ana" in listed.output
    for args, words in [
        (["set", "A-1", "--tier", "0", "--reason", "x", "--by", "Ana"], "use 1, 2 or 3"),
        (["set", "A-1", "--tier", "1", "--by", "Ana"], "reason: missing"),
        (
            ["set", "A-1", "--tier", "1", "--reason", "x", "--by", "A", "--until", "2020-01-01"],
            "past",
        ),
        (
            ["set", "A-1", "--tier", "1", "--reason", "x", "--by", "A", "--until", "soon"],
            "YYYY-MM-DD",
        ),
        (["clear", "A-2", "--by", "Ana"], "no override in force"),
    ]:
        bad = run.invoke(app, ["override", *args, "-c", str(toml)])
        assert bad.exit_code == 2, bad.output
        assert "error:" in bad.output and words in bad.output
        assert "Traceback" not in bad.output
    assert (
        run.invoke(app, ["override", "clear", "A-1", "--by", "Ben", "-c", str(toml)]).exit_code == 0
    )
    assert "no overrides in force" in run.invoke(app, ["override", "list", "-c", str(toml)]).output


def test_the_performance_report_sets_overrides_against_the_models_expectation(
    store: HistoryStore,
) -> None:
    from serving.history import RunRecord
    from serving.override_report import book_performance, override_outcomes

    set_override(store, "A-1", tier=1, reason="exec sponsor", by="Ana", today=APRIL)
    rows = pd.DataFrame(
        {
            "account_id": ["A-1", "A-2", "A-3", "A-4"],
            "tier": [1, 3, 3, 1],
            "base_tier": [3, 3, 3, 1],
            "priority": [0.1, 0.1, 0.1, 0.9],
            "ceiling": [1, 1, 1, 1],
            "territory": ["EU", "EU", "US", "US"],
            "figures": [
                {"p_convert": p, "expected_revenue": 100.0 * p} for p in (0.1, 0.1, 0.2, 0.8)
            ],
        }
    )
    store.record_run(RunRecord(pd.Timestamp("2026-01-31"), "v1", True, 4), rows)
    opps = pd.DataFrame(
        {
            "account_id": ["A-1", "A-2", "A-4"],
            "outcome": ["won", "lost", "won"],
            "created_at": pd.to_datetime(["2026-01-01"] * 3),
            "closed_at": pd.to_datetime(["2026-02-15", "2026-02-20", "2026-06-15"]),
            "amount": [5_000.0, 0.0, 9_000.0],
        }
    )
    end = pd.Timestamp("2026-09-30")
    got = override_outcomes(store, opps, horizon_days=90, end_of_data=end)
    assert got[["direction", "accounts"]].values.tolist() == [["up", 1]]
    row = got.iloc[0]
    assert row["model_p_convert"] == pytest.approx(0.1)
    assert row["realised_conversion"] == 1.0 and row["base_tier_peers_conversion"] == 0.0
    assert row["realised_revenue"] == 5_000.0 and row["matured"]
    book = book_performance(store, opps, by="territory", horizon_days=182, end_of_data=end)
    us1 = book[(book["territory"] == "US") & (book["tier"] == 1)].iloc[0]
    assert us1["won_revenue"] == 9_000.0 and us1["conversion"] == 1.0
