"""Risk: an ICP fit that scores the wrong accounts high (operators, weights, must-haves,
unknown values), and a suggested ICP that claims more than the deal history supports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.config import IcpConfig, IcpCriterion
from features.icp import IcpError, icp_fit, icp_verdict, size_band, suggest_icp, wilson_interval
from features.tables import Tables

from support import MAVEN_CONFIG, demo_data_config


def criterion(label: str, column: str, op: str, **kw: object) -> IcpCriterion:
    return IcpCriterion(label=label, column=column, op=op, **kw)  # type: ignore[arg-type]


ACCOUNTS = pd.DataFrame(
    {
        "industry": ["Software ", "retail", None, "fintech"],
        "employees": [500.0, 50.0, np.nan, 20_000.0],
        "region": ["emea", "na", "na", ""],
        "tech_cloud": [True, False, None, True],
        "tech_crm": ["yes", "no", "", "TRUE"],
    },
    index=[10, 11, 12, 13],
)


@pytest.mark.parametrize(
    ("crit", "expected"),
    [
        (
            criterion("Software or fintech", "industry", "in", values=["software", "FinTech"]),
            [1, 0, 0, 1],
        ),
        (criterion("Not retail", "industry", "not_in", values=["retail"]), [1, 0, 0, 1]),
        (criterion("200-20,000", "employees", "between", min=200, max=20_000), [1, 0, 0, 1]),
        (criterion("At least 100", "employees", ">=", min=100), [1, 0, 0, 1]),
        (criterion("At most 100", "employees", "<=", max=100), [0, 1, 0, 0]),
        (criterion("Uses cloud", "tech_cloud", "is_true"), [1, 0, 0, 1]),
        (criterion("Uses a CRM", "tech_crm", "is_true"), [1, 0, 0, 1]),
        (criterion("In EMEA", "region", "in", values=["emea"]), [1, 0, 0, 0]),
    ],
)
def test_each_operator_meets_exactly_the_right_rows(crit: IcpCriterion, expected: list[int]):
    fit = icp_fit(ACCOUNTS, IcpConfig(criteria=[crit]))
    assert fit["icp_fit"].tolist() == [100.0 * e for e in expected]
    assert list(fit.index) == [10, 11, 12, 13]
    for met, missed, e in zip(fit["icp_met"], fit["icp_missed"], expected, strict=True):
        assert (met == [crit.label]) == bool(e) and (missed == []) == bool(e)


def test_a_missing_value_is_not_met_and_says_unknown():
    crit = criterion("Employees 200-20,000", "employees", "between", min=200, max=20_000)
    not_in = criterion("Not retail", "industry", "not_in", values=["retail"])
    fit = icp_fit(ACCOUNTS, IcpConfig(criteria=[crit, not_in]))
    assert fit.loc[12, "icp_fit"] == 0.0
    assert fit.loc[12, "icp_missed"] == ["Employees 200-20,000 (unknown)", "Not retail (unknown)"]
    assert fit.loc[11, "icp_missed"] == ["Employees 200-20,000", "Not retail"]  # known misses
    # A blank string is as unknown as a missing one.
    region = icp_fit(
        ACCOUNTS, IcpConfig(criteria=[criterion("Not NA", "region", "not_in", values=["na"])])
    )
    assert region.loc[13, "icp_missed"] == ["Not NA (unknown)"]


def test_weights_set_each_criterion_share_of_the_score():
    icp = IcpConfig(
        criteria=[
            criterion(
                "Software or fintech", "industry", "in", values=["software", "fintech"], weight=3
            ),
            criterion("Small", "employees", "<=", max=100, weight=1),
        ]
    )
    fit = icp_fit(ACCOUNTS, icp)
    assert fit["icp_fit"].tolist() == [75.0, 25.0, 0.0, 75.0]


def test_missing_a_must_have_caps_the_score():
    icp = IcpConfig(
        criteria=[
            criterion("Uses cloud", "tech_cloud", "is_true", weight=1, must_have=True),
            criterion("Not retail", "industry", "not_in", values=["retail"], weight=9),
        ],
        cap_if_must_have_missed=40,
    )
    fit = icp_fit(ACCOUNTS.assign(tech_cloud=[False, True, np.nan, True]), icp)
    assert fit.loc[10, "icp_fit"] == 40.0  # 90 without the must-have, capped
    assert fit.loc[11, "icp_fit"] == 10.0  # below the cap stays
    assert fit.loc[12, "icp_fit"] == 0.0  # unknown must-have is missed too
    assert fit.loc[13, "icp_fit"] == 100.0


def test_no_criteria_means_everyone_fits_and_unknown_columns_are_named():
    fit = icp_fit(ACCOUNTS, IcpConfig())
    assert (fit["icp_fit"] == 100).all() and fit["icp_met"].map(len).eq(0).all()
    with pytest.raises(IcpError, match="seats"):
        icp_fit(ACCOUNTS, IcpConfig(criteria=[criterion("Seats", "seats", ">=", min=5)]))
    with pytest.raises(IcpError, match="needs numbers"):
        icp_fit(ACCOUNTS, IcpConfig(criteria=[criterion("Big", "industry", ">=", min=5)]))


def test_each_row_has_its_own_label_lists():
    fit = icp_fit(ACCOUNTS, IcpConfig(criteria=[criterion("Uses cloud", "tech_cloud", "is_true")]))
    fit.loc[10, "icp_met"].append("edited")
    assert fit.loc[13, "icp_met"] == ["Uses cloud"]


# Every spelling of yes and no, with case and spaces, and values that are no answer at all.
YES_SPELLINGS = ["true", "True", " TRUE ", "t", "T", "yes", "Yes", "y", " Y", "1", "on", "ON "]
NO_SPELLINGS = ["false", "FALSE", "f", " F ", "no", "No", "n", "N", "0", "off", " Off", "OFF"]
NOT_AN_ANSWER = ["maybe", "", "  ", "2", "1.5", "yes please", None]


def test_the_model_and_the_icp_read_every_yes_no_spelling_alike() -> None:
    """One vocabulary: a flag the ICP counts as met is a 1.0 in the model's inputs, one it
    counts as missed-but-known is a 0.0, and one it calls unknown is missing (NaN)."""
    from features.build import build_features, scoring_requests
    from features.config import FeatureConfig

    spellings = [*YES_SPELLINGS, *NO_SPELLINGS, *NOT_AN_ANSWER]
    expected = [1.0] * len(YES_SPELLINGS) + [0.0] * len(NO_SPELLINGS) + [np.nan] * 7
    # Text as read from a CSV, the same flags as booleans / numbers, and a mixed column.
    columns = {
        "flag_text": pd.Series(spellings, dtype=object),
        "flag_bool": pd.Series([True] * 12 + [False] * 12 + [None] * 7, dtype="boolean"),
        "flag_number": pd.Series([1.0] * 12 + [0.0] * 12 + [np.nan, 2.0, -1.0, 0.5, 3, 9, 7]),
        "flag_mixed": pd.Series(
            [True, 1, 1.0, *YES_SPELLINGS[3:], False, 0, -0.0, *NO_SPELLINGS[3:], *NOT_AN_ANSWER],
            dtype=object,
        ),
    }
    n = len(spellings)
    accounts = pd.DataFrame({"account_id": [f"A{i:02d}" for i in range(n)], **columns})
    opportunities = pd.DataFrame(
        {
            "opportunity_id": ["O1"],
            "account_id": ["A00"],
            "created_at": pd.to_datetime(["2025-01-01"]),
            "closed_at": pd.to_datetime(["2025-02-01"]),
            "outcome": ["won"],
            "amount": [1000.0],
        }
    )
    model_rows = build_features(
        Tables(accounts, opportunities),
        scoring_requests(accounts, pd.Timestamp("2025-06-30")),
        FeatureConfig(technographics=list(columns)),
    )
    for column in columns:
        model = model_rows[column].to_numpy(dtype=float)
        np.testing.assert_array_equal(model, expected, err_msg=column)
        fit = icp_fit(accounts, IcpConfig(criteria=[criterion("Flag", column, "is_true")]))
        met = fit["icp_met"].map(bool).to_numpy()
        unknown = fit["icp_missed"].map(lambda m: m == ["Flag (unknown)"]).to_numpy()
        np.testing.assert_array_equal(met, model == 1.0, err_msg=column)
        np.testing.assert_array_equal(unknown, np.isnan(model), err_msg=column)


# ---------------------------------------------------------------------------- suggestion


def test_wilson_interval_matches_known_values():
    low, high = wilson_interval(np.array([8]), np.array([10]))
    assert low[0] == pytest.approx(0.4902, abs=1e-3) and high[0] == pytest.approx(0.9433, abs=1e-3)
    low, high = wilson_interval(np.array([0]), np.array([5]))
    assert low[0] == 0.0 and 0 < high[0] < 0.5


def history(
    win_rates: dict[str, float], accounts_per_industry: int, deals_per_account: int, seed: int = 0
) -> Tables:
    rng = np.random.default_rng(seed)
    accounts, deals = [], []
    for industry, rate in win_rates.items():
        for a in range(accounts_per_industry):
            account_id = f"{industry}-{a}"
            accounts.append(
                {
                    "account_id": account_id,
                    "industry": industry,
                    "employees": 300.0 + a,
                    "annual_revenue": 1e7,
                }
            )
            for d in range(deals_per_account):
                won = rng.random() < rate
                deals.append(
                    {
                        "opportunity_id": f"{account_id}-{d}",
                        "account_id": account_id,
                        "created_at": pd.Timestamp("2024-01-01") + pd.Timedelta(days=d),
                        "closed_at": pd.Timestamp("2024-03-01") + pd.Timedelta(days=d),
                        "outcome": "won" if won else "lost",
                        "amount": 1000.0 + 10 * d if won else np.nan,
                    }
                )
    return Tables(pd.DataFrame(accounts), pd.DataFrame(deals))


def test_a_segment_that_wins_clearly_more_is_named_in_the_verdict():
    tables = history(
        {"software": 0.8, "retail": 0.3, "media": 0.3},
        accounts_per_industry=20,
        deals_per_account=10,
    )
    table = suggest_icp(tables)
    software = table[(table["dimension"] == "industry") & (table["segment"] == "software")].iloc[0]
    assert (
        software["evidence"] == "wins more"
        and software["deals"] == 200
        and software["accounts"] == 20
    )
    assert software["ci_low"] < software["win_rate"] < software["ci_high"]
    assert software["median_won_amount"] > 1000
    assert (table.loc[table["segment"] == "retail", "evidence"] == "wins less").all()
    assert table.attrs["overall_deals"] == 600
    verdict = icp_verdict(table)
    assert verdict.startswith("Segments that win clearly more") and "software" in verdict


def test_no_clear_winner_gives_a_weak_evidence_verdict():
    tables = history(
        {"software": 0.5, "retail": 0.5}, accounts_per_industry=10, deals_per_account=8, seed=4
    )
    table = suggest_icp(tables)
    assert not (table["evidence"] == "wins more").any()
    assert "the evidence for an ICP is weak" in icp_verdict(table)


def test_many_deals_from_one_account_are_not_a_segment():
    tables = history(
        {"software": 0.95, "retail": 0.3}, accounts_per_industry=1, deals_per_account=100
    )
    table = suggest_icp(tables)
    assert set(table.loc[table["dimension"] == "industry", "evidence"]) == {"too few accounts"}
    assert "weak" in icp_verdict(table)


def test_size_bands_cover_every_number_and_unknown():
    bands = size_band(pd.Series([1, 49, 50, 999, 1000, 5000, 10**6, np.nan]))
    assert bands.tolist() == [
        "1-49 employees",
        "1-49 employees",
        "50-199 employees",
        "200-999 employees",
        "1,000-4,999 employees",
        "5,000+ employees",
        "5,000+ employees",
        "size unknown",
    ]


def test_suggest_refuses_a_history_without_closed_deals():
    tables = history({"software": 0.5}, 1, 2)
    open_only = tables.opportunities.assign(outcome="open")
    with pytest.raises(ValueError, match="no won or lost deals"):
        suggest_icp(Tables(tables.accounts, open_only))


# -------------------------------------------------------------------------- real exports


def test_maven_export_suggestion_says_the_evidence_is_weak():
    from features.contract import load_tables
    from tiering.config import load_config

    tables = load_tables(load_config(MAVEN_CONFIG).data).tables
    table = suggest_icp(tables)
    verdict = icp_verdict(table)
    print(verdict)
    assert "the evidence for an ICP is weak" in verdict
    assert not (table["evidence"] == "wins more").any()


def test_icp_suggest_command_prints_the_table_and_the_verdict():
    from tiering_cli.icp_cmd import app

    result = CliRunner().invoke(app, ["suggest", "--config", str(MAVEN_CONFIG)])
    assert result.exit_code == 0, result.output
    assert "Win rate by segment" in result.output
    assert "evidence for an ICP is" in result.output


def test_icp_suggest_command_names_a_missing_config_without_a_traceback(tmp_path: Path):
    from tiering_cli.icp_cmd import app

    result = CliRunner().invoke(app, ["suggest", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert "nope.toml" in result.output and "Traceback" not in result.output


def test_demo_icp_fit_rises_with_the_true_win_probability(tmp_path: Path):
    from scipy.stats import spearmanr

    from demo import read_truth
    from features.contract import load_tables

    config = demo_data_config(tmp_path, n_accounts=1000, seed=7)
    data = config.data
    tables = load_tables(data).tables
    truth = read_truth(tmp_path / "truth").accounts
    latest = truth[truth["as_of"] == truth["as_of"].max()]
    fit = icp_fit(tables.accounts, config.icp)
    joined = latest.merge(
        pd.DataFrame({"account_id": tables.accounts["account_id"], "icp_fit": fit["icp_fit"]}),
        on="account_id",
    )
    assert len(joined) > 900
    rho = spearmanr(joined["icp_fit"], joined["true_p_win"]).statistic
    print(f"Spearman rank correlation of ICP fit with the true win probability: {rho:.3f}")
    assert rho > 0.15
