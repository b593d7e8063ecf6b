"""Risk: a model trained on a field that is only known once the deal is decided (it looks
brilliant offline and is useless on an open deal). The audit must refuse such fields and
flag features that are too good to be true, and must not cry wolf on honest features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.build import build_features, feature_columns, training_requests
from features.config import LeakageConfig
from features.leakage import AuditReport, LeakageError, audit, require_clean

from support import MAVEN_CONFIG, demo_data_config

CONFIG = LeakageConfig()


def honest_frame(n: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Features with a real but modest signal, as B2B win data has."""
    rng = np.random.default_rng(seed)
    employees = rng.lognormal(6, 1, n)
    meetings = rng.poisson(2, n).astype(float)
    industry = rng.choice(np.array(["software", "retail", "media", None], dtype=object), n)
    logit = (
        0.4 * np.log(employees / 400)
        + 0.3 * (meetings - 2)
        + np.where(industry == "software", 0.5, 0)
    )
    won = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame(
        {
            "account_id": [f"A{i}" for i in range(n)],
            "as_of": pd.Timestamp("2024-01-01"),
            "industry": industry,
            "employees": np.where(rng.random(n) < 0.1, np.nan, employees),
            "meeting_90d": meetings,
            "prior_won": rng.poisson(1, n).astype(float),
            "crm_id": np.array([f"X{i}" for i in range(n)], dtype=object),  # unique per row
        }
    )
    return frame, pd.Series(won)


def statuses(report: AuditReport, feature: str) -> set[str]:
    return set(report.table.loc[report.table["feature"] == feature, "status"])


def test_honest_features_pass_including_an_identifier_like_category():
    frame, won = honest_frame()
    report = audit(frame, won, None, CONFIG)
    assert report.passed, report.to_markdown()
    assert report.problems == []
    table = report.table
    assert list(table.columns) == ["feature", "check", "value", "threshold", "status", "reason"]
    assert set(table["feature"]) == set(feature_columns(frame))
    # An id memorises nothing out of fold: its AUC stays near 0.5, where in-sample it would be 1.
    crm_auc = table.loc[
        (table["feature"] == "crm_id") & (table["check"] == "single-feature AUC"), "value"
    ]
    assert crm_auc.iloc[0] < 0.6
    require_clean(report)  # does not raise


def test_amount_filled_only_on_won_deals_is_refused_and_caught_by_its_gaps():
    frame, won = honest_frame()
    leaky = frame.assign(
        deal_value=np.where(won == 1, 5000.0, np.nan), amount=np.where(won == 1, 5000.0, 0.0)
    )
    report = audit(leaky, won, feature_columns(leaky), CONFIG)
    assert not report.passed
    assert statuses(report, "amount") >= {"refused"}
    # deal_value is not a known field: its "not populated" rows win nothing, the rest always.
    gap = report.table[
        (report.table["feature"] == "deal_value")
        & (report.table["check"] == "missing-value win-rate gap")
    ]
    assert gap["status"].iloc[0] == "FAIL" and gap["value"].iloc[0] == pytest.approx(1.0)
    assert any(p.startswith("amount:") for p in report.problems)
    assert report.table["status"].iloc[0] in ("refused", "FAIL")  # problems first


def test_a_feature_that_alone_predicts_the_outcome_fails_on_auc():
    frame, won = honest_frame()
    rng = np.random.default_rng(1)
    leaky = frame.assign(days_in_pipeline=np.where(won == 1, 30, 90) + rng.normal(0, 10, len(won)))
    report = audit(leaky, won, None, CONFIG)
    row = report.table[
        (report.table["feature"] == "days_in_pipeline")
        & (report.table["check"] == "single-feature AUC")
    ]
    assert row["status"].iloc[0] == "FAIL" and row["value"].iloc[0] > 0.95
    assert "lower values win" in row["reason"].iloc[0]
    with pytest.raises(LeakageError, match="days_in_pipeline"):
        require_clean(report)


def test_a_categorical_stage_label_is_caught_with_missing_as_its_own_level():
    frame, won = honest_frame()
    label = np.where(won == 1, "signed", None).astype(object)
    report = audit(frame.assign(contract_status=label), won, None, CONFIG)
    assert statuses(report, "contract_status") >= {"FAIL"}


def test_config_post_outcome_fields_dates_and_suspicious_names_are_refused():
    frame, won = honest_frame()
    extra = frame.assign(
        close_value=1.0,
        engagement_score=1.0,
        signed_at=pd.Timestamp("2024-02-01"),
        stage_reached=2.0,
    )
    report = audit(extra, won, None, CONFIG, post_outcome=["close_value"])
    assert statuses(report, "close_value") >= {"refused"}
    assert statuses(report, "signed_at") == {"refused"}
    assert "stage" in report.table.loc[report.table["feature"] == "stage_reached", "reason"].iloc[0]
    assert statuses(report, "engagement_score") <= {"pass", "skipped"}
    # Our own point-in-time history features are not refused for their names.
    assert statuses(report, "prior_won") <= {"pass", "skipped"}


def test_allow_lets_a_named_feature_pass_with_its_reason_but_never_a_known_field():
    frame, won = honest_frame()
    rng = np.random.default_rng(2)
    leaky = frame.assign(partner_tier=np.where(won == 1, 3.0, 1.0) + rng.normal(0, 0.3, len(won)))
    reason = "set by the partner team before a deal is opened"
    config = LeakageConfig(allow={"partner_tier": reason, "amount": "we insist"})
    report = audit(leaky, won, None, config)
    assert report.passed, report.to_markdown()
    assert statuses(report, "partner_tier") == {"allowed"}
    assert reason in report.to_markdown()
    refused = audit(leaky.assign(amount=1.0), won, None, config)
    assert not refused.passed and statuses(refused, "amount") >= {"refused"}


def test_bad_calls_are_named():
    frame, won = honest_frame(100)
    with pytest.raises(ValueError, match="not in the feature frame"):
        audit(frame, won, ["employees", "nope"], CONFIG)
    with pytest.raises(ValueError, match="rows"):
        audit(frame, won[:10], None, CONFIG)
    with pytest.raises(ValueError, match="0 \\(lost\\) or 1"):
        audit(frame, won.replace(1, 2), None, CONFIG)


def test_the_markdown_report_lists_every_row_and_the_verdict():
    frame, won = honest_frame(300)
    report = audit(frame.assign(amount=1.0), won, None, CONFIG)
    text = report.to_markdown()
    assert text.startswith("Leakage audit: FAILED")
    assert text.count("\n| ") == len(report.table) + 1  # header + one line per row
    assert "- amount:" in text


# ------------------------------------------------------------------------- real exports


def test_maven_close_value_and_close_date_are_flagged_when_offered():
    from features.contract import load_tables
    from tiering.config import load_config

    config = load_config(MAVEN_CONFIG)
    tables = load_tables(config.data).tables
    requests = training_requests(tables.opportunities)
    features = build_features(tables, requests, config.features)
    clean = audit(features, requests["won"], None, config.leakage, config.data.post_outcome)
    assert clean.passed, clean.to_markdown()

    deals = tables.opportunities.set_index("opportunity_id").loc[requests["opportunity_id"]]
    offered = features.assign(
        close_value=deals["amount"].fillna(0).to_numpy(),  # the export's 0 on lost deals
        close_date=deals["closed_at"].to_numpy(),
    )
    report = audit(offered, requests["won"], None, config.leakage, config.data.post_outcome)
    print(report.to_markdown())
    assert not report.passed
    assert statuses(report, "close_value") >= {"refused"}
    assert statuses(report, "close_date") == {"refused"}
    auc = report.table[
        (report.table["feature"] == "close_value") & (report.table["check"] == "single-feature AUC")
    ]
    assert auc["value"].iloc[0] > 0.99


def test_demo_features_pass_and_fail_once_a_leaking_column_is_added(tmp_path: Path):
    from features.contract import load_tables

    config = demo_data_config(tmp_path, n_accounts=1000, seed=7)
    data = config.data
    tables = load_tables(data).tables
    requests = training_requests(tables.opportunities)
    features = build_features(tables, requests, config.features)
    clean = audit(features, requests["won"], None, config.leakage, config.data.post_outcome)
    assert clean.passed, clean.to_markdown()

    deals = tables.opportunities.set_index("opportunity_id").loc[requests["opportunity_id"]]
    days_to_close = (deals["closed_at"] - deals["created_at"]).dt.days.to_numpy(dtype=float)
    for name, values in {
        "days_to_close": days_to_close,
        "deal_size": deals["amount"].to_numpy(dtype=float),  # the CRM amount under another name
        "amount": deals["amount"].to_numpy(dtype=float),
    }.items():
        report = audit(
            features.assign(**{name: values}),
            requests["won"],
            None,
            config.leakage,
            config.data.post_outcome,
        )
        assert not report.passed, name
        assert statuses(report, name) & {"refused", "FAIL"}, report.to_markdown()
