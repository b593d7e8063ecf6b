"""Risk: features that know the future (the classic way a win model looks great offline and
fails in production), and training features that differ from serving features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.build import (
    build_features,
    categorical_columns,
    evidence_score,
    feature_columns,
    feature_field,
    scoring_requests,
    training_requests,
    with_global_deals,
)
from features.config import FeatureConfig
from features.tables import ACTIVITY_TYPES, Tables

CONFIG = FeatureConfig(technographics=["tech_cloud"])
DAY = pd.Timedelta(days=1)


def random_tables(
    seed: int = 3, n_accounts: int = 40, n_deals: int = 160, n_acts: int = 3000
) -> Tables:
    """Small canonical tables on whole days, so that deals share creation dates with other
    deals' closes and with activities: the boundary cases happen."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"A{i:03d}" for i in range(n_accounts)], dtype=object)
    start = pd.Timestamp("2023-01-01")
    days = lambda n, span: start + pd.to_timedelta(rng.integers(0, span, n), unit="D")  # noqa: E731
    accounts = pd.DataFrame(
        {
            "account_id": ids,
            "industry": rng.choice(
                np.array(["software", "retail", None], dtype=object), n_accounts
            ),
            "employees": np.where(
                rng.random(n_accounts) < 0.2, np.nan, rng.integers(5, 9000, n_accounts)
            ),
            "annual_revenue": rng.lognormal(16, 1, n_accounts),
            "region": rng.choice(np.array(["na", "emea"], dtype=object), n_accounts),
            "tech_cloud": rng.random(n_accounts) < 0.5,
        }
    )
    created = days(n_deals, 700)
    outcome = rng.choice(
        np.array(["won", "lost", "open"], dtype=object), n_deals, p=[0.4, 0.4, 0.2]
    )
    closed = created + pd.to_timedelta(rng.integers(0, 90, n_deals), unit="D")
    opportunities = pd.DataFrame(
        {
            "opportunity_id": [f"O{i:04d}" for i in range(n_deals)],
            "account_id": rng.choice(ids, n_deals),
            "created_at": created,
            "closed_at": pd.Series(closed).where(outcome != "open"),
            "outcome": outcome,
            "amount": np.where(outcome == "won", rng.lognormal(10, 1, n_deals), np.nan),
        }
    )
    act_type = rng.choice(np.array(ACTIVITY_TYPES, dtype=object), n_acts)
    activities = pd.DataFrame(
        {
            "account_id": rng.choice(ids, n_acts),
            "occurred_at": days(n_acts, 800),
            "type": act_type,
            "topic": np.where(
                act_type == "intent_surge", rng.choice(["crm", "bi", "ai"], n_acts), ""
            ),
            "count": rng.integers(1, 4, n_acts),
        }
    )
    return Tables(accounts, opportunities, activities)


def deal_features(tables: Tables, opportunity_id: str) -> pd.DataFrame:
    requests = training_requests(tables.opportunities)
    row = requests[requests["opportunity_id"] == opportunity_id]
    return build_features(tables, row, CONFIG)


def with_activities(tables: Tables, activities: pd.DataFrame) -> Tables:
    return Tables(tables.accounts, tables.opportunities, activities.reset_index(drop=True))


def with_opportunities(tables: Tables, opportunities: pd.DataFrame) -> Tables:
    return Tables(tables.accounts, opportunities, tables.activities)


def busy_closed_deals(tables: Tables, n: int = 5) -> list[str]:
    """Closed deals whose accounts have activity before and after their creation and history."""
    req = training_requests(tables.opportunities)
    feats = build_features(tables, req, CONFIG)
    busy = req[
        (feats["web_visit_180d"] > 0).to_numpy()
        & (feats["prior_won"] + feats["prior_lost"] > 0).to_numpy()
    ]
    assert len(busy) >= n, "the random tables should have deals with history and activity"
    return busy["opportunity_id"].head(n).tolist()


# ----------------------------------------------------------------------- leakage by design


def test_activities_on_or_after_a_deals_creation_do_not_change_its_features():
    tables = random_tables()
    for opp_id in busy_closed_deals(tables):
        before = deal_features(tables, opp_id)
        account, created = before["account_id"].iloc[0], before["as_of"].iloc[0]
        acts = tables.activities.copy()
        later = (acts["account_id"] == account) & (acts["occurred_at"] >= created)
        # Shuffle the future around and add more of it, including on the creation day itself.
        acts.loc[later, "occurred_at"] = created + pd.to_timedelta(
            np.random.default_rng(0).integers(0, 400, later.sum()), unit="D"
        )
        extra = pd.DataFrame(
            {
                "account_id": account,
                "occurred_at": [created, created, created + DAY, created + 30 * DAY],
                "type": ["meeting", "intent_surge", "web_visit", "event"],
                "topic": ["", "new-topic", "", ""],
                "count": [5, 5, 5, 5],
            }
        )
        after = deal_features(with_activities(tables, pd.concat([acts, extra])), opp_id)
        pd.testing.assert_frame_equal(before, after)


def test_moving_an_activity_from_before_to_after_creation_is_noticed():
    # The test above would pass for a builder that ignores activities; this one would not.
    tables = random_tables()
    opp_id = busy_closed_deals(tables, 1)[0]
    before = deal_features(tables, opp_id)
    account, created = before["account_id"].iloc[0], before["as_of"].iloc[0]
    acts = tables.activities.copy()
    earlier = acts.index[
        (acts["account_id"] == account)
        & (acts["type"] == "web_visit")
        & (acts["occurred_at"] < created)
        & (acts["occurred_at"] >= created - 180 * DAY)
    ]
    acts.loc[earlier[0], "occurred_at"] = created + DAY
    after = deal_features(with_activities(tables, acts), opp_id)
    assert after["web_visit_180d"].iloc[0] < before["web_visit_180d"].iloc[0]


def test_a_deals_own_outcome_amount_and_close_date_cannot_change_its_features():
    tables = random_tables()
    requests = training_requests(tables.opportunities)
    for opp_id in requests["opportunity_id"].sample(12, random_state=1):
        before = deal_features(tables, opp_id)
        opps = tables.opportunities.copy()
        own = opps["opportunity_id"] == opp_id
        created = opps.loc[own, "created_at"].iloc[0]
        flipped = {"won": "lost", "lost": "won"}[opps.loc[own, "outcome"].iloc[0]]
        opps.loc[own, "outcome"] = flipped
        opps.loc[own, "amount"] = 1e9
        # Even a (dirty) close date before creation must not reveal the outcome.
        opps.loc[own, "closed_at"] = created - 10 * DAY
        changed = with_opportunities(tables, opps)
        after = build_features(changed, before[["account_id", "as_of"]], CONFIG)
        pd.testing.assert_frame_equal(before, after)


def test_a_deals_features_equal_its_account_scored_on_the_creation_date():
    tables = random_tables()
    requests = training_requests(tables.opportunities)
    training = build_features(tables, requests, CONFIG)
    for as_of in requests["as_of"].drop_duplicates().sample(8, random_state=2):
        scored = build_features(tables, scoring_requests(tables.accounts, as_of), CONFIG)
        deals = training[training["as_of"] == as_of]
        rows = pd.Index(scored["account_id"]).get_indexer(deals["account_id"])
        same = scored.iloc[rows].reset_index(drop=True)
        pd.testing.assert_frame_equal(deals.reset_index(drop=True), same)


def test_outcomes_decided_after_as_of_do_not_move_the_global_prior():
    # An account without history gets the smoothed prior at the global win rate; that rate
    # must come from deals decided before as_of, or early deals learn about later years.
    tables = random_tables()
    as_of = pd.Timestamp("2023-09-01")
    request = pd.DataFrame({"account_id": ["no-such-account"], "as_of": [as_of]})
    before = build_features(tables, request, CONFIG)
    opps = tables.opportunities.copy()
    later = opps["closed_at"] >= as_of
    opps.loc[later & opps["outcome"].isin(["won", "lost"]), "outcome"] = "won"
    after = build_features(with_opportunities(tables, opps), request, CONFIG)
    pd.testing.assert_frame_equal(before, after)
    decided = tables.opportunities[tables.opportunities["closed_at"] < as_of]
    rate = ((decided["outcome"] == "won").sum() + 1) / (len(decided) + 2)
    assert before["prior_win_rate"].iloc[0] == pytest.approx(rate)


# --------------------------------------------------------------------- exact boundaries


def tiny_tables() -> Tables:
    accounts = pd.DataFrame(
        {
            "account_id": ["A", "B"],
            "industry": ["software", None],
            "employees": [120.0, np.nan],
            "annual_revenue": [5e6, 1e6],
            "region": ["emea", "na"],
            "tech_cloud": [True, False],
        }
    )
    opportunities = pd.DataFrame(
        {
            "opportunity_id": ["o1", "o2", "o3", "o4", "o5"],
            "account_id": ["A", "A", "A", "A", "B"],
            "created_at": pd.to_datetime(
                ["2024-01-01", "2024-01-10", "2024-02-01", "2024-03-01", "2024-01-05"]
            ),
            "closed_at": pd.to_datetime(
                ["2024-02-28", "2024-03-01", pd.NaT, "2024-04-01", "2024-01-20"]
            ),
            "outcome": ["won", "lost", "open", "won", "won"],
            "amount": [1000.0, np.nan, np.nan, 500.0, 200.0],
        }
    )
    activities = pd.DataFrame(
        {
            "account_id": ["A", "A", "A", "A", "A", "A"],
            "occurred_at": pd.to_datetime(
                format="ISO8601",
                arg=[
                    "2024-03-01",
                    "2024-02-29 23:59:59",
                    "2024-01-31",
                    "2024-01-30 23:00",
                    "2023-12-02",
                    "2024-02-20",
                ],
            ),
            "type": [
                "web_visit",
                "web_visit",
                "web_visit",
                "web_visit",
                "web_visit",
                "intent_surge",
            ],
            "topic": ["", "", "", "", "", "crm"],
            "count": [100, 1, 2, 4, 8, 1],
        }
    )
    return Tables(accounts, opportunities, activities)


def score_a(tables: Tables, as_of: str) -> pd.Series:
    request = pd.DataFrame({"account_id": ["A"], "as_of": [pd.Timestamp(as_of)]})
    return build_features(tables, request, CONFIG).iloc[0]


def test_an_activity_exactly_at_as_of_is_excluded_and_windows_start_inclusive():
    row = score_a(tiny_tables(), "2024-03-01")
    # 2024-03-01 (100) excluded; the 30-day window starts at 2024-01-31 00:00 (included),
    # so 2024-01-30 23:00 (4) is out; the 90-day window starts at 2023-12-02 00:00 (included).
    assert row["web_visit_30d"] == 1 + 2
    assert row["web_visit_90d"] == 1 + 2 + 4 + 8
    assert row["days_since_web_visit"] == pytest.approx(1 / 86_400)
    assert row["intent_surge_30d"] == 1
    assert row["intent_topics_180d"] == 1
    # trend: last 30 days (3) against the 60 before (4 + 8 over two periods -> 6 per period)
    assert row["web_visit_trend"] == pytest.approx(np.log((3 + 1) / (6 + 1)))


def test_a_prior_deal_closing_on_as_of_does_not_count_and_one_closing_before_does():
    tables = tiny_tables()
    on_close = score_a(tables, "2024-03-01")  # o1 closed 02-28 (won), o2 closes 03-01 (lost)
    assert (on_close["prior_won"], on_close["prior_lost"]) == (1, 0)
    assert on_close["revenue_won"] == 1000.0
    assert on_close["days_since_last_won"] == 2
    # open at 03-01: o2 (closes that day) and o3 (open); o4 is created that day, not before
    assert on_close["open_deals"] == 2
    next_day = score_a(tables, "2024-03-02")
    assert (next_day["prior_won"], next_day["prior_lost"]) == (1, 1)
    assert next_day["open_deals"] == 2  # o3 and o4


def test_smoothed_prior_win_rate_uses_pseudo_deals_at_the_past_global_rate():
    tables = tiny_tables()
    row = score_a(tables, "2024-03-02")
    # decided before 03-02 anywhere: o5 won (01-20), o1 won (02-28), o2 lost (03-01)
    global_rate = (2 + 1) / (3 + 2)
    k = CONFIG.prior_smoothing
    assert row["prior_win_rate"] == pytest.approx((1 + k * global_rate) / (2 + k))


# -------------------------------------------------------------------------------- shape


def test_global_deal_counts_applied_afterwards_equal_them_given_up_front():
    """A part featurised before the whole list's deal counts are known, the counts applied
    after, must give every feature bit for bit as if they had been given."""
    tables = random_tables(seed=11)
    requests = scoring_requests(tables.accounts, pd.Timestamp("2024-09-01"))
    for counts, smoothing in (((120, 47), 5.0), ((0, 0), 5.0), ((9, 9), 0.0)):
        config = CONFIG.model_copy(update={"prior_smoothing": smoothing})
        given = build_features(tables, requests, config, global_deals=counts)
        placeholder = build_features(tables, requests, config, global_deals=(3, 1))
        # With smoothing, the counts matter (else the test would prove nothing).
        assert smoothing == 0 or not given["prior_win_rate"].equals(placeholder["prior_win_rate"])
        pd.testing.assert_frame_equal(with_global_deals(placeholder, counts, config), given)


def test_rows_keep_the_requests_order_and_index_and_unknown_accounts_are_blank():
    tables = tiny_tables()
    requests = pd.DataFrame(
        {
            "account_id": ["B", "ghost", "A", "A"],
            "as_of": pd.to_datetime(["2024-03-01", "2024-03-01", "2024-04-15", "2024-01-02"]),
        },
        index=[40, 10, 30, 20],
    )
    features = build_features(tables, requests, CONFIG)
    assert list(features.index) == [40, 10, 30, 20]
    assert features["account_id"].tolist() == ["B", "ghost", "A", "A"]
    assert features.loc[30, "prior_won"] == 2 and features.loc[20, "prior_won"] == 0
    ghost = features.loc[10]
    assert pd.isna(ghost["industry"]) and np.isnan(ghost["employees"])
    assert ghost["prior_won"] == 0 and ghost["web_visit_180d"] == 0


def test_categoricals_are_plain_strings_and_everything_else_is_float():
    features = build_features(tiny_tables(), training_requests(tiny_tables().opportunities), CONFIG)
    cats = categorical_columns(features, CONFIG)
    assert cats == ["industry", "region"]
    for col in cats:
        assert features[col].dtype == object
    numeric = [c for c in feature_columns(features) if c not in cats]
    assert all(features[c].dtype == np.float64 for c in numeric), features.dtypes
    assert "amount" not in features and "won" not in features and "closed_at" not in features
    assert feature_columns(features)[:2] == ["industry", "region"]


def test_deal_fields_only_when_configured_and_never_post_outcome_ones():
    tables = tiny_tables()
    opps = tables.opportunities.assign(product=["x", "y", "z", "x", "y"])
    tables = with_opportunities(tables, opps)
    requests = training_requests(opps)
    assert "product" not in build_features(tables, requests, CONFIG)
    config = CONFIG.model_copy(update={"deal_fields": ["product"]})
    training = build_features(tables, requests, config)
    assert (
        training["product"].tolist()
        == opps.set_index("opportunity_id").loc[requests["opportunity_id"], "product"].tolist()
    )
    scored = build_features(
        tables, scoring_requests(tables.accounts, pd.Timestamp("2024-05-01")), config
    )
    assert scored["product"].isna().all()
    with pytest.raises(ValueError, match="amount"):
        build_features(tables, requests, CONFIG.model_copy(update={"deal_fields": ["amount"]}))


def test_without_activities_there_are_no_engagement_features():
    tables = tiny_tables()
    bare = Tables(tables.accounts, tables.opportunities, None)
    features = build_features(bare, training_requests(bare.opportunities), CONFIG)
    assert not [c for c in features if "web_visit" in c]
    assert "prior_win_rate" in features


def test_evidence_is_low_for_cold_start_and_high_for_known_engaged_customers():
    tables = tiny_tables()
    requests = pd.DataFrame(
        {"account_id": ["A", "B"], "as_of": pd.to_datetime(["2024-05-01", "2023-06-01"])}
    )
    evidence = evidence_score(build_features(tables, requests, CONFIG))
    assert evidence.iloc[0] == pytest.approx(1.0)
    assert evidence.iloc[1] < 0.3  # half the firmographics unknown, no deals, no engagement
    assert ((evidence >= 0) & (evidence <= 1)).all()


def test_feature_fields_group_features_under_names_a_rep_knows():
    assert feature_field("web_visit_90d") == ("web_visit", "Web visits")
    assert feature_field("days_since_meeting") == ("meeting", "Meetings")
    assert feature_field("intent_surge_trend") == ("intent_surge", "Intent surges")
    assert feature_field("intent_topics_180d") == ("intent_surge", "Intent surges")
    assert feature_field("prior_win_rate") == ("history", "Past deals with us")
    assert feature_field("employees")[0] == "employees"
    assert feature_field("tech_data_warehouse") == ("tech_data_warehouse", "Uses a data warehouse")
