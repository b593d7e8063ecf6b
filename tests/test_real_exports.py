"""Risk: a real CRM export, as it comes, does not get through `validate` (or gets through and
then breaks `train`): flat deal reports without ids, missing firmographics, close dates or
amounts, foreign dates and numbers, other encodings, and dirt that used to be reported wrongly.
One test (at least) per situation a user met, with the message asserted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from features.config import DataConfig, IcpConfig, IcpCriterion
from features.contract import DataContractError, load_tables
from features.quality import quality_report, training_problems
from features.tables import maturity_cutoff
from tiering_cli import data_cmd

WIDE = {"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
# The small exports here span months, not years: a four-week horizon and no warm-up leave
# training enough monthly snapshots.
SHORT_HORIZON = """
[training]
horizon_days = 28
snapshot_warmup_days = 0
"""


# ----------------------------------------------------------------------------- helpers


def flat_deals(n_accounts: int = 6, deals_each: int = 8) -> pd.DataFrame:
    """A flat deal report: account fields on every row, no ids, dd-Mon-yy dates."""
    rows = []
    start = pd.Timestamp("2016-10-03")
    for a in range(n_accounts):
        for d in range(deals_each):
            created = start + pd.Timedelta(days=17 * d + 5 * a)
            won = (a + d) % 3 != 0
            rows.append(
                {
                    "Company": f"Company {a}",
                    "Office": ["Berlin", "Paris"][a % 2],
                    "Sector": ["software", "retail", "finance"][a % 3],
                    "Employees": str(100 * (a + 1)),
                    "Product": ["Basic", "Pro"][d % 2],
                    "Stage": "Won" if won else "Lost",
                    "Created": created.strftime("%d-%b-%y"),
                    "Closed": (created + pd.Timedelta(days=30)).strftime("%d-%b-%y"),
                    "Value": f"${1000 + 10 * a + d:,.2f}" if won else "$0.00",
                }
            )
    return pd.DataFrame(rows)


FLAT_COLUMNS = {
    "name": "Company",
    "country": "Office",
    "industry": "Sector",
    "employees": "Employees",
    "product": "Product",
    "outcome": "Stage",
    "created_at": "Created",
    "closed_at": "Closed",
    "amount": "Value",
}


def flat_config(path: Path, **deals: object) -> DataConfig:
    columns = {k: v for k, v in FLAT_COLUMNS.items()}
    source: dict[str, object] = {
        "path": str(path),
        "date_format": "%d-%b-%y",
        "account_key": ["Company", "Office"],
        "columns": columns,
    }
    source.update(deals)
    return DataConfig.model_validate({"deals": source})


def write_flat(folder: Path, frame: pd.DataFrame, name: str = "deals.csv", **csv: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    frame.to_csv(path, index=False, **csv)  # type: ignore[arg-type]  # pandas' kwargs
    return path


def drop_unmapped(config: DataConfig, *canonical: str) -> DataConfig:
    """The same config without the mapping of some columns (the export lacks them)."""
    deals = config.deals
    assert deals is not None
    columns = {k: v for k, v in deals.columns.items() if k not in canonical}
    return config.model_copy(update={"deals": deals.model_copy(update={"columns": columns})})


def problems_of(config: DataConfig) -> list[str]:
    with pytest.raises(DataContractError) as caught:
        load_tables(config)
    return [str(p) for p in caught.value.problems]


def validate_output(tmp_path: Path, toml: str) -> tuple[int, str]:
    app = typer.Typer(add_completion=False)
    app.command("validate")(data_cmd.validate)
    app.command("other")(data_cmd.demo_data)  # two commands: typer keeps the sub-command name
    config = tmp_path / "tiering.toml"
    config.write_text(toml)
    result = CliRunner().invoke(app, ["validate", "--config", str(config)], env=WIDE)
    assert "Traceback" not in result.output
    return result.exit_code, " ".join(result.output.split())


# ------------------------------------------------------------- flat exports and their ids


def test_flat_export_derives_accounts_by_a_composite_key_from_the_latest_deal(
    tmp_path: Path,
) -> None:
    deals = flat_deals()
    # Company 0's latest deal says it has grown: the account takes the latest value, and the
    # disagreement is reported.
    latest = deals.index[deals["Company"] == "Company 0"][-1]
    deals.loc[latest, "Employees"] = "150"
    result = load_tables(flat_config(write_flat(tmp_path, deals)))
    accounts = result.tables.accounts.set_index("account_id")

    assert len(accounts) == 6
    assert accounts.loc["Company 0 | Berlin", "employees"] == 150.0
    assert accounts.loc["Company 1 | Paris", "industry"] == "retail"
    assert set(result.tables.opportunities["account_id"]) == set(accounts.index)
    steps = {(s.table, s.column, s.step): s for s in result.report}
    derived = steps[
        (
            "accounts",
            "account_id",
            "derived accounts from the deals: one per account key (Company, Office); account "
            "fields (industry, employees, name, country) from each account's latest deal",
        )
    ]
    assert derived.rows == 6
    conflict = steps[
        (
            "accounts",
            "employees",
            "account field differs between an account's deals: kept its latest deal's value",
        )
    ]
    assert conflict.rows == 1 and conflict.examples == ("'Company 0 | Berlin'",)


def test_the_same_name_in_two_offices_is_two_accounts_under_a_composite_key(
    tmp_path: Path,
) -> None:
    deals = flat_deals(n_accounts=2)
    deals["Company"] = "Same Name"
    result = load_tables(flat_config(write_flat(tmp_path, deals)))
    assert sorted(result.tables.accounts["account_id"]) == [
        "Same Name | Berlin",
        "Same Name | Paris",
    ]


def test_deal_ids_are_generated_from_content_stably_and_reported(tmp_path: Path) -> None:
    path = write_flat(tmp_path, flat_deals())
    first = load_tables(flat_config(path))
    again = load_tables(flat_config(path))
    ids = first.tables.opportunities["opportunity_id"]
    assert ids.is_unique and ids.str.fullmatch(r"D-[0-9a-f]{12}").all()
    assert list(ids) == list(again.tables.opportunities["opportunity_id"])
    assert (
        first.report.rows(
            "generated ids from each row's content (the export has none; same row, same id)",
            "deals",
            "opportunity_id",
        )
        == 48
    )
    # A later export with one more deal keeps the ids of the deals it shares.
    longer = pd.concat([flat_deals(), flat_deals(n_accounts=7).tail(1)], ignore_index=True)
    grown = load_tables(flat_config(write_flat(tmp_path / "later", longer)))
    assert set(ids) <= set(grown.tables.opportunities["opportunity_id"])


def test_flat_export_keeps_named_deal_fields_and_reports_ignored_columns(tmp_path: Path) -> None:
    deals = flat_deals().assign(Agent="Ann", Notes="call back")
    config = flat_config(write_flat(tmp_path, deals), deal_fields=["Agent"])
    result = load_tables(config)
    opportunities = result.tables.opportunities
    assert "Agent" in opportunities and "Notes" not in opportunities
    assert "Notes" not in result.tables.accounts
    ignored = [s for s in result.report if s.step.startswith("ignored columns")]
    assert ignored and ignored[0].examples == ("'Notes'",)


def test_a_missing_account_key_column_names_the_key_and_the_files_columns(
    tmp_path: Path,
) -> None:
    config = flat_config(write_flat(tmp_path, flat_deals()), account_key=["Company", "Region"])
    problems = problems_of(config)
    assert problems[0].startswith("deals.Region: account_key column missing (the file has: ")
    assert "account_key under [data.deals]" in problems[0]


def test_flat_and_split_configs_are_exclusive() -> None:
    with pytest.raises(ValueError, match=r"give either \[data.deals\]"):
        DataConfig.model_validate({"deals": {"path": "d.csv"}, "accounts": {"path": "a.csv"}})
    with pytest.raises(ValueError, match=r"\[data.opportunities\] is missing"):
        DataConfig.model_validate({"accounts": {"path": "a.csv"}})


# ------------------------------------------------------------------------ optional columns


def test_no_firmographics_validates_and_the_report_says_what_follows(tmp_path: Path) -> None:
    config = drop_unmapped(flat_config(write_flat(tmp_path, flat_deals())), "industry", "employees")
    deals = config.deals
    assert deals is not None
    frame = flat_deals().drop(columns=["Sector", "Employees"])
    config = config.model_copy(
        update={"deals": deals.model_copy(update={"path": write_flat(tmp_path, frame)})}
    )
    result = load_tables(config)
    assert list(result.tables.accounts.columns) == ["account_id", "name", "country"]
    report = quality_report(result.tables, result.report)
    assert report.consequences[0].startswith(
        "no industry, employees, annual_revenue: the models learn from the fields the export has"
    )


def test_icp_on_a_column_the_export_lacks_is_caught_by_validate(tmp_path: Path) -> None:
    frame = flat_deals().drop(columns=["Sector"])
    config = drop_unmapped(flat_config(write_flat(tmp_path, frame)), "industry")
    tables = load_tables(config).tables
    icp = IcpConfig(
        criteria=[IcpCriterion(label="Software", column="industry", op="in", values=["software"])]
    )
    problems = [str(p) for p in training_problems(tables, icp)]
    assert problems == [
        "icp.industry: criterion 'Software' uses a column the accounts do not have; map the "
        "column under 'columns' or remove the criterion from [[icp.criteria]]"
    ]


def test_no_closed_at_derives_close_dates_by_the_documented_rule(tmp_path: Path) -> None:
    frame = flat_deals().drop(columns=["Closed"])
    config = drop_unmapped(flat_config(write_flat(tmp_path, frame)), "closed_at")
    config = config.model_copy(update={"closed_after_days": 60})
    result = load_tables(config)
    opps = result.tables.opportunities
    closed = opps["outcome"].isin(["won", "lost"])
    last_created = opps["created_at"].max()
    expected = (opps["created_at"] + pd.Timedelta(days=60)).clip(upper=last_created)
    assert (opps.loc[closed, "closed_at"] == expected[closed]).all()
    assert (
        opps.loc[closed, "closed_at"] < opps.loc[closed, "created_at"] + pd.Timedelta(61, "D")
    ).all()
    assert result.report.rows("derived closed_at = created_at + 60 days") == int(closed.sum())
    # The derived dates do not move the end of the data (the default scoring date).
    assert result.tables.end_of_data() == last_created
    # Deal history sees the outcomes: accounts have won and lost deals behind them.
    from features.build import build_features, scoring_requests
    from features.config import FeatureConfig

    history = build_features(
        result.tables, scoring_requests(result.tables.accounts, last_created), FeatureConfig()
    )
    assert (history["prior_won"] > 0).all() and (history["prior_lost"] > 0).all()
    notes = quality_report(result.tables, result.report).consequences
    assert any(
        n.startswith("no closed_at: a won or lost deal counts as closed 60 days") for n in notes
    )
    # What training's split does with it: deals of the last 60 days are left out, not a crash.
    end = result.tables.end_of_data()
    assert maturity_cutoff(opps, end) == end - pd.Timedelta(days=60)
    assert maturity_cutoff(opps.drop(columns="closed_at"), end) == end


def test_no_amounts_is_said_before_training(tmp_path: Path) -> None:
    frame = flat_deals().drop(columns=["Value"])
    config = drop_unmapped(flat_config(write_flat(tmp_path, frame)), "amount")
    config = config.model_copy(update={"default_deal_value": 5000.0})
    result = load_tables(config)
    notes = quality_report(result.tables, result.report).consequences
    assert (
        "no amounts on won deals: every won deal counts as 5,000 (data.default_deal_value), so "
        "expected revenue is P(convert) x the won deals expected in the horizon x that value, "
        "and the revenue figures of train count won deals"
    ) in notes
    opps = result.tables.opportunities
    assert (opps.loc[opps["outcome"] == "won", "amount"] == 5000.0).all()
    assert opps.loc[opps["outcome"] != "won", "amount"].isna().all()


def test_without_amounts_the_revenue_model_is_the_documented_default() -> None:
    from tiering.config import TrainingConfig
    from training.fit import fit_revenue

    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "employees": rng.integers(10, 5000, 40).astype(float),
            "industry": rng.choice(["a", "b", "c"], 40).astype(object),
        }
    )
    none = np.array([], dtype=float)
    model, table, segment, notes, sizes = fit_revenue(
        frame.iloc[:0],
        none,
        frame.iloc[:0],
        none,
        frame.iloc[:0],
        frame.iloc[:0],
        TrainingConfig(n_jobs=1),
        default_value=2500.0,
    )
    assert model.booster is None and model.objective == "segment_median"
    assert model.fallback(frame).tolist() == [2500.0] * 40
    assert segment.predict(frame).tolist() == [2500.0] * 40
    assert table["objective"].tolist() == ["none (default_deal_value)"]
    assert sizes is None  # no booster, so no smaller candidate either
    assert notes == [
        "no revenue model: converted accounts with revenue are 0 in train and 0 in the "
        "calibration slice (at least 2 and 1 needed); expected revenue = P(convert) x 2,500 "
        "(data.default_deal_value)"
    ]


# -------------------------------------------------------------------------- dates


@pytest.mark.parametrize(
    ("dates", "proposed"),
    [
        (["27-Mar-12", "03-Apr-12", "15-Jan-13"], "date_format = '%d-%b-%y'"),
        (["12-03-27", "12-04-03", "13-01-15"], "date_format = '%y-%m-%d'"),
        (["03/27/12", "04/03/12", "01/15/13"], "date_format = '%m/%d/%y'"),
        (["45123", "45200", "45301"], "date_format = 'excel'"),
    ],
    ids=["dd-Mon-yy", "yy-mm-dd", "mm/dd/yy", "excel-serial"],
)
def test_a_date_error_names_date_format_and_proposes_one_that_parses(
    tmp_path: Path, dates: list[str], proposed: str
) -> None:
    frame = flat_deals(n_accounts=1, deals_each=3).assign(Created=dates, Closed=dates)
    config = flat_config(write_flat(tmp_path, frame), date_format=None)
    problems = problems_of(config)
    created = [p for p in problems if p.startswith("deals.created_at:")]
    assert created == [
        "deals.created_at: 3 dates cannot be parsed with ISO 8601 (date_format unset), years "
        f"1900-2199; {proposed} under [data.deals] reads all of them (e.g. "
        + ", ".join(repr(d) for d in dates)
        + ")"
    ]
    # ... and the proposal does read them.
    fixed = flat_config(write_flat(tmp_path, frame), date_format=proposed.split("'")[1])
    parsed = load_tables(fixed).tables.opportunities["created_at"]
    assert parsed.notna().all() and parsed.dt.year.min() >= 2012


def test_excel_serials_read_as_excel_does() -> None:
    from features.contract import _parse_date

    parsed, bad = _parse_date(pd.Series(["45123", "45123.5", "61", None, "soon"]), "excel")
    assert parsed.iloc[0] == pd.Timestamp("2023-07-16")
    assert parsed.iloc[1] == pd.Timestamp("2023-07-16 12:00")
    assert parsed.iloc[2] == pd.Timestamp("1900-03-01")
    assert bad.tolist() == [False, False, False, False, True]


def test_a_failed_parse_is_reported_once_with_exact_counts(tmp_path: Path) -> None:
    frame = flat_deals()  # 48 deals, dates written 27-Mar-12
    frame.loc[[3, 9], "Created"] = ""  # two really empty
    config = flat_config(write_flat(tmp_path, frame), date_format=None)
    problems = problems_of(config)
    created = [p for p in problems if p.startswith("deals.created_at") or "created_at" in p]
    assert len(created) == 2, problems
    assert created[0].startswith("deals.created_at: 46 dates cannot be parsed with ISO 8601")
    assert "date_format = '%d-%b-%y'" in created[0]
    assert created[1].startswith("opportunities.created_at: 2 rows are empty")
    assert not any("account_id" in p for p in problems), problems


def test_dates_after_the_export_date_are_refused_and_never_move_the_scoring_date(
    tmp_path: Path,
) -> None:
    frame = flat_deals()
    # Won deals: their amounts differ, so the ten stay ten distinct deals.
    late = frame.index[frame["Stage"] == "Won"][:10]
    frame.loc[late, "Created"] = "01-Apr-31"
    frame.loc[late, "Closed"] = "01-Apr-31"
    path = write_flat(tmp_path, frame)
    problems = problems_of(flat_config(path))
    created = [p for p in problems if p.startswith("opportunities.created_at")]
    assert created and created[0].startswith(
        "opportunities.created_at: 10 dates after the export's date "
    )
    assert (
        "(today; data.as_of is not set); correct them in the export, or set data.as_of"
        in (created[0])
    )
    assert "2031-04-01" in created[0]
    # With the export's date set, the message names it; the clean rows score as of their end.
    pinned = flat_config(path).model_copy(update={"as_of": pd.Timestamp("2017-06-30").date()})
    assert "after the export's date 2017-06-30 (data.as_of)" in problems_of(pinned)[0]
    clean = load_tables(flat_config(write_flat(tmp_path / "clean", flat_deals()))).tables
    assert clean.end_of_data() < pd.Timestamp("2018-01-01")


def test_closed_before_created_is_one_line_with_count_and_examples(tmp_path: Path) -> None:
    frame = flat_deals()
    frame.loc[frame.index[:5], "Closed"] = "01-Jan-15"
    problems = problems_of(flat_config(write_flat(tmp_path, frame)))
    assert len(problems) == 1, problems
    assert problems[0].startswith(
        "opportunities.closed_at: 5 deals closed before they were created (closed_at must be on "
        "or after created_at; correct the dates in the export) (e.g. "
    )
    assert "created 2016-10-03, closed 2015-01-01" in problems[0]


# ----------------------------------------------------------------------- numbers, encodings


@pytest.mark.parametrize(
    ("values", "settings", "expected"),
    [
        (["$1,234.00", "$65,300.00", "$0.50"], {}, [1234.0, 65300.0, 0.5]),
        (
            ["65.300,00", "1.234,50", "12,00"],
            {"decimal": ",", "thousands": "."},
            [65300.0, 1234.5, 12.0],
        ),
        (["65300,00", "1234,50", "12"], {"decimal": ","}, [65300.0, 1234.5, 12.0]),
        (
            ["EUR 65 300,00", "1 234,50 EUR", "12,00"],
            {"decimal": ",", "thousands": " "},
            [65300.0, 1234.5, 12.0],
        ),
    ],
    ids=["dollars", "dot-thousands-comma-decimal", "comma-decimal", "space-thousands-code"],
)
def test_amounts_read_with_currency_signs_and_the_configured_marks(
    tmp_path: Path, values: list[str], settings: dict[str, str], expected: list[float]
) -> None:
    frame = flat_deals(n_accounts=1, deals_each=3).assign(Stage="Won", Value=values)
    result = load_tables(flat_config(write_flat(tmp_path, frame), **settings))
    assert result.tables.opportunities["amount"].tolist() == expected


def test_unreadable_amounts_name_decimal_and_thousands_with_a_setting_that_works(
    tmp_path: Path,
) -> None:
    frame = flat_deals(n_accounts=1, deals_each=3).assign(
        Stage="Won", Value=["65.300,00", "1.234,50", "12,00"]
    )
    problems = problems_of(flat_config(write_flat(tmp_path, frame)))
    assert problems == [
        "deals.amount: 3 values are not numbers (read with decimal = '.' and thousands = ','); "
        "decimal = ',' and thousands = '.' under [data.deals] reads all of them (e.g. "
        "'65.300,00', '1.234,50', '12,00')"
    ]


def test_a_latin1_file_names_the_encoding_key_and_reads_with_it(tmp_path: Path) -> None:
    frame = flat_deals(n_accounts=2, deals_each=3)
    frame["Company"] = frame["Company"].str.replace("Company", "Müller GmbH")
    path = write_flat(tmp_path, frame, encoding="latin-1")
    problems = problems_of(flat_config(path))
    assert len(problems) == 1
    assert problems[0].startswith("deals: cannot be read as utf-8 (byte b'\\xfc' at position ")
    assert "set encoding = 'cp1252' (or the file's encoding) under [data.deals]" in problems[0]
    result = load_tables(flat_config(path, encoding="latin-1"))
    assert "Müller GmbH 0 | Berlin" in set(result.tables.accounts["account_id"])
    assert problems_of(flat_config(path, encoding="klingon"))[0].startswith(
        "deals: unknown encoding 'klingon'"
    )


# ---------------------------------------------------------------------- duplicates, amounts


def test_duplicates_are_found_on_content_without_the_id(tmp_path: Path) -> None:
    frame = flat_deals()
    copies = frame.iloc[:7]
    with_ids = pd.concat([frame, copies], ignore_index=True)
    # The user added ids row by row: the copies got ids of their own.
    with_ids.insert(0, "Deal", [f"X-{i}" for i in range(len(with_ids))])
    config = flat_config(write_flat(tmp_path, with_ids))
    deals = config.deals
    assert deals is not None
    config = config.model_copy(
        update={
            "deals": deals.model_copy(
                update={"columns": {**deals.columns, "opportunity_id": "Deal"}}
            )
        }
    )
    result = load_tables(config)
    assert len(result.tables.opportunities) == 48
    assert result.report.rows("dropped exact duplicate rows (same content; ids aside)") == 7
    # Without ids, the same copies are dropped before ids are generated: ids stay unique.
    plain = load_tables(flat_config(write_flat(tmp_path / "plain", pd.concat([frame, copies]))))
    assert len(plain.tables.opportunities) == 48
    assert plain.tables.opportunities["opportunity_id"].is_unique


def test_zero_and_negative_won_amounts_are_reported_and_made_unknown(tmp_path: Path) -> None:
    frame = flat_deals()
    won = frame.index[frame["Stage"] == "Won"]
    frame.loc[won[:2], "Value"] = "$0.00"
    frame.loc[won[2], "Value"] = "-$15.00"
    lost = frame.index[frame["Stage"] == "Lost"]
    frame.loc[lost[0], "Value"] = "-$3.00"
    result = load_tables(flat_config(write_flat(tmp_path, frame)))
    opps = result.tables.opportunities
    won_amounts = opps.loc[opps["outcome"] == "won", "amount"]
    assert (won_amounts.dropna() > 0).all() and won_amounts.isna().sum() == 3
    assert (
        result.report.rows(
            "won deals with a zero or negative amount: amount set to unknown", "deals", "amount"
        )
        == 3
    )
    assert result.report.rows("negative amounts on lost or open deals", "deals", "amount") == 1


# ----------------------------------------------------------------------------- the CLI


def test_validate_prints_derivations_and_consequences_without_a_traceback(
    tmp_path: Path,
) -> None:
    frame = flat_deals(deals_each=14).drop(columns=["Value", "Closed"])
    write_flat(tmp_path, frame)
    code, output = validate_output(
        tmp_path,
        SHORT_HORIZON
        + """
[data]
closed_after_days = 30
[data.deals]
path = "deals.csv"
date_format = "%d-%b-%y"
account_key = ["Company", "Office"]
[data.deals.columns]
name = "Company"
country = "Office"
industry = "Sector"
employees = "Employees"
outcome = "Stage"
created_at = "Created"
""",
    )
    assert code == 0, output
    assert "derived accounts from the deals: one per account key (Company, Office)" in output
    assert "generated ids from each row's content" in output
    assert (
        "note: no closed_at: a won or lost deal counts as closed 30 days after created_at" in output
    )
    assert (
        "note: no amounts on won deals: every won deal counts as 1 (data.default_deal_value)"
        in (output)
    )


def test_validate_refuses_a_split_training_would_refuse(tmp_path: Path) -> None:
    frame = flat_deals(deals_each=2)  # two months of deals
    write_flat(tmp_path, frame)
    code, output = validate_output(
        tmp_path,
        SHORT_HORIZON
        + """
[data.deals]
path = "deals.csv"
date_format = "%d-%b-%y"
account_key = ["Company"]
[data.deals.columns]
outcome = "Stage"
created_at = "Created"
closed_at = "Closed"
""",
    )
    assert code == 2
    assert (
        "opportunities.created_at: deals from 2016-10-03 to 2016-12-14 give 1 monthly snapshots "
        "with a label window of 28 days; training needs at least 5 (three slices and two gaps "
        "of 1 months): set a shorter [training] horizon_days, or export more history"
    ) in output


# ------------------------------------------------------------------ gates that empty a tier


def test_a_field_the_export_never_fills_is_left_out_of_evidence(tmp_path: Path) -> None:
    from features.build import build_features, evidence_score, scoring_requests
    from features.config import FeatureConfig

    frame = flat_deals().assign(Region="")
    config = flat_config(write_flat(tmp_path, frame))
    deals = config.deals
    assert deals is not None
    config = config.model_copy(
        update={
            "deals": deals.model_copy(update={"columns": {**deals.columns, "region": "Region"}})
        }
    )
    result = load_tables(config)
    assert "region" not in result.tables.accounts
    assert result.report.rows("column has no value in any row", "accounts", "region") == 6
    features = build_features(
        result.tables,
        scoring_requests(result.tables.accounts, result.tables.end_of_data()),
        FeatureConfig(),
    )
    # Nothing is counted as missing for the field the export lacks; kept as an empty column,
    # it would have lowered every account's evidence.
    assert "region" not in features
    kept_empty = features.assign(region=np.nan)
    assert (evidence_score(features) > evidence_score(kept_empty)).all()


def test_a_gate_that_leaves_tier_1_short_is_warned_about_with_count_and_cause() -> None:
    from tiering.config import TierPolicy
    from tiering.policy import ReferenceCutoffs, assign_tiers, reference_cutoffs

    n = 100
    priority = np.linspace(1.0, 0.0, n)
    fit = np.full(n, 80.0)
    evidence = np.full(n, 0.4)  # below the Tier 1 gate (0.5), above half of it
    evidence[:5] = 0.9
    policy = TierPolicy()
    assignment = assign_tiers(priority, fit, evidence, policy)
    assert assignment.sizes == (5, 60, 35)
    assert list(assignment.warnings) == [
        "Tier 1 holds 5 accounts, 15 (75%) below its policy size of 20: only 5 of 100 accounts "
        "pass the Tier 1 gates (95 have evidence below 0.5 (tiers.min_evidence_tier1)); the "
        "accounts held back go to a lower tier"
    ]
    frozen = reference_cutoffs(priority, fit, evidence, policy, as_of="2017-12-31")
    assert frozen.warnings == list(assignment.warnings)
    assert ReferenceCutoffs.from_dict(frozen.to_dict()).warnings == frozen.warnings
    # Within 10 % of the policy size: no warning.
    evidence[:19] = 0.9
    assert assign_tiers(priority, fit, evidence, policy).warnings == ()


def test_a_threshold_policy_warns_when_gates_hold_back_most_of_a_tier() -> None:
    from tiering.config import TierPolicy
    from tiering.policy import tier_shortfalls

    policy = TierPolicy(method="threshold", tier1_min_priority=0.8, tier2_min_priority=0.3)
    priority = np.array([0.9, 0.85, 0.82, 0.5, 0.4])
    tiers = np.array([2, 2, 2, 2, 2])
    warnings = tier_shortfalls(tiers, priority, [30, 30, 30, 30, 30], [0.9] * 5, policy)
    assert warnings == [
        "Tier 1 holds 0 accounts, 3 (100%) below its policy size of 3: only 0 of 5 accounts pass "
        "the Tier 1 gates (5 have an ICP fit below 60 (tiers.min_icp_fit_tier1)); the accounts "
        "held back go to a lower tier"
    ]


def test_a_flat_export_given_as_the_accounts_table_points_to_data_deals(tmp_path: Path) -> None:
    from support import opportunities_frame

    flat = flat_deals().rename(columns={"Company": "account_id"})
    accounts = write_flat(tmp_path, flat, name="accounts.csv")
    opportunities = write_flat(
        tmp_path,
        opportunities_frame().assign(account_id="Company 0"),
        name="opportunities.csv",
    )
    config = DataConfig.model_validate(
        {"accounts": {"path": str(accounts)}, "opportunities": {"path": str(opportunities)}}
    )
    problems = problems_of(config)
    assert problems[0] == (
        "accounts.account_id: 48 rows share 6 ids (ids must be unique); a flat deal export with "
        "the account on every row goes under [data.deals] with its account_key, and the accounts "
        "are derived from it (e.g. 'Company 0', 'Company 1', 'Company 2')"
    )


def test_an_opportunities_table_without_ids_gets_generated_ones(tmp_path: Path) -> None:
    from support import accounts_frame, opportunities_frame, write_export

    paths = write_export(
        tmp_path, opportunities=opportunities_frame().drop(columns="opportunity_id")
    )
    config = DataConfig.model_validate(
        {
            "accounts": {"path": str(paths["accounts"])},
            "opportunities": {"path": str(paths["opportunities"])},
        }
    )
    result = load_tables(config)
    ids = result.tables.opportunities["opportunity_id"]
    assert len(ids) == 6 and ids.is_unique
    assert result.report.rows("generated ids", "opportunities", "opportunity_id") == 6
    assert len(result.tables.accounts) == len(accounts_frame())


def test_validate_runs_the_leakage_audit_training_would_run(tmp_path: Path) -> None:
    frame = flat_deals(deals_each=14).assign(Result=lambda f: f["Stage"].str.upper())
    write_flat(tmp_path, frame)
    code, output = validate_output(
        tmp_path,
        SHORT_HORIZON
        + """
[data.deals]
path = "deals.csv"
date_format = "%d-%b-%y"
account_key = ["Company"]
[data.deals.columns]
outcome = "Stage"
created_at = "Created"
closed_at = "Closed"
[features]
deal_fields = ["Result"]
""",
    )
    assert code == 2, output
    assert "features: leakage audit would refuse training: Result: " in output
    assert "allow it under [leakage.allow]" in output


def test_the_shipped_flat_example_is_what_its_script_builds() -> None:
    import importlib.util

    repo = Path(__file__).resolve().parents[1]
    script = repo / "examples" / "maven_flat" / "make_flat.py"
    spec = importlib.util.spec_from_file_location("make_flat", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.flat_report()
    shipped = pd.read_csv(repo / "examples" / "maven_flat" / "deals.csv", dtype=str)
    pd.testing.assert_frame_equal(
        built.fillna("").reset_index(drop=True), shipped.fillna("").reset_index(drop=True)
    )
