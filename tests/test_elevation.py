"""Risk: an elevation that breaks capacity, never ends, fires on a steady account or on
activity from after the scoring date, or leaves no trace of why in the history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tiering.config import CapacityConfig, ElevationConfig, HistoryConfig
from tiering.elevation import engagement_events, intent_signal, select_elevations

from support import TrainedBundle

AS_OF = pd.Timestamp("2026-03-31")


def _activities() -> pd.DataFrame:
    rows = []
    for month in range(6, 0, -1):  # a steady 3 a month for six months before the window
        day = AS_OF - pd.Timedelta(days=30 * month + 5)
        rows += [("steady", day, "web_visit", None, 3), ("surge", day, "web_visit", None, 1)]
    recent = AS_OF - pd.Timedelta(days=3)
    rows += [
        ("steady", recent, "web_visit", None, 3),
        ("surge", recent, "intent_surge", "pricing", 9),
    ]
    rows += [("late", AS_OF + pd.Timedelta(days=1), "intent_surge", "pricing", 50)]
    return pd.DataFrame(rows, columns=["account_id", "occurred_at", "type", "topic", "count"])


def test_the_signal_is_a_surge_against_the_accounts_own_history() -> None:
    config = ElevationConfig()
    intent = pd.DataFrame(
        {
            "account_id": ["steady"],
            "date": [AS_OF - pd.Timedelta(days=2)],
            "topic": ["crm"],
            "strength": [1.0],
        }
    )
    events = engagement_events(_activities(), intent, config)
    signal = intent_signal(events, pd.Series(["steady", "surge", "late", "none"]), AS_OF, config)
    z = signal.set_index("account_id")["z"]
    assert z["surge"] >= 5 and abs(z["steady"]) < 1
    assert z["late"] == 0 and z["none"] == 0, "activity after the as-of date must not count"
    assert signal.set_index("account_id").loc["surge", "topic"] == "pricing"
    assert signal.set_index("account_id").loc["steady", "recent"] == 4  # 3 visits + strength 1


def test_elevations_fill_only_free_reserved_seats_of_their_group() -> None:
    config = ElevationConfig(min_z=1.0, min_recent=0)
    signal = pd.DataFrame(
        {
            "account_id": [f"A{i}" for i in range(8)],
            "recent": 10.0,
            "mean": 1.0,
            "z": [9, 8, 7, 6, 5, 5, 0.5, 9],
            "topic": None,
        }
    )
    base = np.array([2, 3, 2, 3, 2, 2, 2, 1])
    group = np.array(["a", "a", "a", "b", "b", "b", "b", "a"], dtype=object)
    chosen = select_elevations(signal, base, group, {"a": 2, "b": 1}, AS_OF, config, running={"A0"})
    ids = [e.account_id for e in chosen]
    # A0 is running already, A7 is Tier 1 already; b's tie in z goes to input order.
    assert ids == ["A1", "A2", "A3"]
    assert all(e.until == AS_OF + pd.Timedelta(days=30) for e in chosen)
    assert "z = 8.0" in chosen[0].signal


@pytest.mark.slow
def test_elevations_respect_the_reserved_seats_and_expire_in_the_history(
    trained_bundle: TrainedBundle, tmp_path: Path
) -> None:
    from features.contract import load_tables
    from serving.batch import score_accounts
    from serving.tier_changes import open_history
    from tiering.bundle import Bundle

    config = trained_bundle.config_writing_to(tmp_path)
    config = config.model_copy(
        update={
            "history": HistoryConfig(url=f"sqlite:///{tmp_path / 'h.db'}"),
            "capacity": CapacityConfig(within="owner", tier1_per_rep=2, tier2_per_rep=3),
            "elevation": ElevationConfig(
                enabled=True, min_z=1.0, min_recent=1, elevated_days=20, reserved_share=0.5
            ),
            "scoring": config.scoring.model_copy(update={"snapshot": tmp_path / "s.parquet"}),
        }
    )
    bundle = Bundle.load(trained_bundle.bundle_dir)
    owners = load_tables(config.data).tables.accounts[["account_id", "owner"]].astype(str)

    def run(day: str) -> pd.DataFrame:
        result = score_accounts(config, bundle, as_of=day, out=tmp_path / f"{day}.parquet")
        return pd.read_parquet(result.output).merge(owners, on="account_id")

    march = run("2026-03-31")
    elevated = march[march["elevated_until"] != ""]
    assert len(elevated), "the demo must have surging accounts at this threshold"
    assert (elevated["tier"] == 1).all() and elevated["base_tier"].isin([2, 3]).all()
    assert (elevated["elevated_until"] == "2026-04-20").all()
    assert elevated["tier_rule_text"].str.contains("intent surge").all()
    per_owner = march.groupby("owner").agg(
        t1=("tier", lambda t: int((t == 1).sum())),
        el=("elevated_until", lambda u: int((u != "").sum())),
    )
    assert (per_owner["el"] <= 1).all(), "one reserved seat per rep (half of 2, rounded)"
    assert (per_owner["t1"] <= 2).all(), "capacity holds with elevations"
    april = run("2026-04-30").set_index("account_id")
    ended = [a for a in elevated["account_id"] if april.loc[a, "elevated_until"] == ""]
    assert ended, "the March elevations ended on 20 April"
    for account in ended:
        assert april.loc[account, "tier"] == april.loc[account, "base_tier"] or (
            april.loc[account, "tier"] == 1
        )
    moved = [a for a in ended if april.loc[a, "tier"] != 1]
    assert moved
    assert all("elevation ended on 2026-04-20" in april.loc[a, "change_reason"] for a in moved)
    store = open_history(config)
    assert store.rows(account_id=moved[0])["change_code"].iloc[-1] == "pin_ended"
