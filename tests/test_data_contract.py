"""Risk: a broken or dirty CRM export slips through the data contract (or good data is refused),
and cleaning changes values without saying so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.config import DataConfig
from features.contract import (
    CleaningReport,
    DataContractError,
    _duplicated,
    _trim,
    _unify_case,
    load_tables,
)
from features.distinct import Distinct
from features.quality import quality_report
from tiering.config import ConfigError, load_config

from support import accounts_frame, activities_frame, opportunities_frame, write_export

REPO = Path(__file__).resolve().parents[1]


def data_config(paths: dict[str, Path], **tables: dict) -> DataConfig:
    raw: dict = {name: {"path": str(path)} for name, path in paths.items()}
    for name, extra in tables.items():
        raw[name].update(extra)
    return DataConfig.model_validate(raw)


def problems_of(config: DataConfig) -> list[str]:
    with pytest.raises(DataContractError) as caught:
        load_tables(config)
    return [str(p) for p in caught.value.problems]


def test_clean_export_loads_with_canonical_dtypes(tmp_path: Path) -> None:
    result = load_tables(data_config(write_export(tmp_path)))
    accounts, opportunities, activities = (
        result.tables.accounts,
        result.tables.opportunities,
        (result.tables.activities),
    )
    assert pd.api.types.is_string_dtype(accounts["account_id"])
    assert accounts["employees"].dtype == float and accounts["employees"].isna().sum() == 1
    assert opportunities["created_at"].dtype == "datetime64[ns]"
    assert opportunities["closed_at"].dtype == "datetime64[ns]"
    assert opportunities["closed_at"].isna().sum() == 2
    assert opportunities["amount"].dtype == float
    assert activities is not None and activities["count"].dtype == "int64"
    assert list(accounts.columns[:2]) == ["account_id", "industry"]
    assert len(result.report) == 0


def test_ids_keep_leading_zeros(tmp_path: Path) -> None:
    accounts = accounts_frame().assign(account_id=["001", "002", "003", "004"])
    opportunities = opportunities_frame().assign(
        account_id=["001", "001", "002", "003", "002", "001"]
    )
    activities = activities_frame().assign(account_id=["001", "001", "002", "003"])
    result = load_tables(data_config(write_export(tmp_path, accounts, opportunities, activities)))
    assert result.tables.accounts["account_id"].tolist() == ["001", "002", "003", "004"]


@pytest.mark.parametrize(
    ("table", "mutate", "expected"),
    [
        (
            "opportunities",
            lambda f: f.drop(columns="outcome"),
            "opportunities.outcome: required column missing",
        ),
        (
            "opportunities",
            lambda f: f.assign(account_id=["A-1", "A-991", "A-2", "A-3", "A-2", "A-1"]),
            "opportunities.account_id: 1 values not in accounts (e.g. 'A-991')",
        ),
        (
            "opportunities",
            lambda f: f.assign(created_at=["2023-01-05", "2023-13-45", *f["created_at"][2:]]),
            "opportunities.created_at: 1 dates cannot be parsed with ISO 8601 (date_format unset)",
        ),
        (
            "accounts",
            lambda f: f.assign(employees=["120", "-5", "", "80"]),
            "accounts.employees: 1 values below 0 (must be >= 0) (e.g. -5.0)",
        ),
        (
            "accounts",
            lambda f: f.assign(account_id=["A-1", "A-2", "A-3", "A-1"]),
            "accounts.account_id: 2 rows share 1 id (ids must be unique) (e.g. 'A-1')",
        ),
        (
            "opportunities",
            lambda f: f.assign(opportunity_id=["O-1", "O-1", "O-3", "O-4", "O-5", "O-6"]),
            "opportunities.opportunity_id: 2 rows share 1 id (ids must be unique)",
        ),
        (
            "opportunities",
            lambda f: f.assign(outcome=["won", "Closed Lost", "won", "lost", "open", "open"]),
            "opportunities.outcome: 1 values have an unknown outcome label",
        ),
        (
            "opportunities",
            lambda f: f.assign(closed_at=["2022-12-01", *f["closed_at"][1:]]),
            "opportunities.closed_at: 1 deals closed before they were created (closed_at must "
            "be on or after created_at; correct the dates in the export) (e.g. 'O-1' created "
            "2023-01-05, closed 2022-12-01)",
        ),
        (
            "accounts",
            lambda f: f.assign(employees=["120", "lots", "", "80"]),
            "accounts.employees: 1 values are not numbers (read with decimal = '.' and "
            "thousands = ',')",
        ),
        (
            "activities",
            lambda f: f.assign(account_id=["A-1", "A-1", "A-77", "A-3"]),
            "activities.account_id: 1 values not in accounts (e.g. 'A-77')",
        ),
    ],
    ids=[
        "missing-column",
        "orphan-account",
        "bad-date",
        "negative-employees",
        "duplicate-account-id",
        "duplicate-opportunity-id",
        "unknown-outcome",
        "closed-before-created",
        "not-a-number",
        "orphan-activity",
    ],
)
def test_broken_export_is_refused_with_table_column_rule(
    tmp_path: Path, table: str, mutate, expected: str
) -> None:
    frames = {
        "accounts": accounts_frame(),
        "opportunities": opportunities_frame(),
        "activities": activities_frame(),
    }
    frames[table] = mutate(frames[table])
    problems = problems_of(data_config(write_export(tmp_path, **frames)))
    assert any(p.startswith(expected) for p in problems), problems


def test_unknown_outcome_names_the_export_label(tmp_path: Path) -> None:
    opportunities = opportunities_frame().assign(
        outcome=["won", " Closed Lost ", "won", "lost", "open", "open"]
    )
    problems = problems_of(data_config(write_export(tmp_path, opportunities=opportunities)))
    assert "'Closed Lost'" in problems[0]


def test_every_problem_in_every_table_is_listed_at_once(tmp_path: Path) -> None:
    accounts = accounts_frame().assign(account_id=["A-1", "A-2", "A-3", "A-3"])
    opportunities = opportunities_frame().assign(amount=["50000", "tbd", "120000", "0", "", ""])
    activities = activities_frame().assign(
        occurred_at=["yesterday", *activities_frame()["occurred_at"][1:]]
    )
    problems = problems_of(data_config(write_export(tmp_path, accounts, opportunities, activities)))
    assert {p.split(":")[0] for p in problems} >= {
        "accounts.account_id",
        "opportunities.amount",
        "activities.occurred_at",
    }


def test_empty_file_is_refused(tmp_path: Path) -> None:
    paths = write_export(tmp_path)
    paths["opportunities"].write_text("")
    problems = problems_of(data_config(paths))
    assert problems == [f"opportunities: file is empty: {paths['opportunities']}"]


def test_header_without_rows_is_refused(tmp_path: Path) -> None:
    paths = write_export(tmp_path, accounts=accounts_frame().head(0))
    problems = problems_of(data_config(paths))
    assert problems[0].startswith("accounts: file has a header but no rows")


def test_wrong_delimiter_is_named(tmp_path: Path) -> None:
    paths = write_export(tmp_path)
    accounts_frame().to_csv(paths["accounts"], index=False, sep=";")
    problems = problems_of(data_config(paths))
    assert len(problems) == 1
    assert problems[0].startswith("accounts: wrong delimiter")
    assert "looks like the delimiter is ';', config says ','" in problems[0]


def test_configured_delimiter_is_used(tmp_path: Path) -> None:
    paths = write_export(tmp_path)
    accounts_frame().to_csv(paths["accounts"], index=False, sep=";")
    result = load_tables(data_config(paths, accounts={"delimiter": ";"}))
    assert len(result.tables.accounts) == 4


def test_dirty_labels_numbers_and_duplicates_are_cleaned_and_reported(tmp_path: Path) -> None:
    accounts = accounts_frame().assign(
        industry=["Software", " FINANCE ", "retail", "software"],
        annual_revenue=["10,000,000", "900000000", "45,000,000", "2500000"],
        country=["Germany", "France", "GERMANY", "Spain"],
    )
    opportunities = opportunities_frame().assign(
        outcome=[" WON ", "Lost", "won", "lost", "Open", "open"],
        amount=["50,000", "0", "120000", "0", "", ""],
    )
    opportunities = pd.concat([opportunities, opportunities.iloc[[0]]], ignore_index=True)
    result = load_tables(data_config(write_export(tmp_path, accounts, opportunities)))
    tables, report = result.tables, result.report

    assert tables.accounts["industry"].tolist() == ["software", "finance", "retail", "software"]
    assert tables.accounts["annual_revenue"].tolist() == [1e7, 9e8, 4.5e7, 2.5e6]
    assert tables.accounts["country"].tolist() == ["Germany", "France", "Germany", "Spain"]
    assert tables.opportunities["outcome"].tolist() == [
        "won",
        "lost",
        "won",
        "lost",
        "open",
        "open",
    ]
    assert tables.opportunities["amount"].iloc[0] == 50_000.0

    assert report.rows("case-folded labels", "accounts", "industry") == 2
    # Counted before duplicates are dropped: the duplicate row was cleaned too.
    assert report.rows("case-folded labels", "opportunities", "outcome") == 4
    assert report.rows("trimmed spaces", "opportunities", "outcome") == 2
    assert report.rows("removed thousands separators", "accounts", "annual_revenue") == 2
    assert report.rows("removed thousands separators", "opportunities", "amount") == 2
    assert report.rows("unified case and spacing variants", "accounts", "country") == 1
    assert report.rows("dropped exact duplicate rows", "opportunities") == 1
    frame = report.to_frame()
    country = frame[frame["column"] == "country"].iloc[0]
    assert country["examples"] == "'GERMANY' -> 'Germany'"


def test_labels_fixes_scale_and_drop_if_missing(tmp_path: Path) -> None:
    accounts = accounts_frame().assign(
        industry=["softwre", "finance", "retail", "software"],
        annual_revenue=["10", "900", "45", "2.5"],
    )
    opportunities = opportunities_frame().assign(
        outcome=[
            "Closed Won",
            "Closed Lost",
            "Closed Won",
            "Closed Lost",
            "Engaging",
            "Prospecting",
        ],
        account_id=["A-1", "A-1", "A-2", "A-3", "A-2", ""],
    )
    config = data_config(
        write_export(tmp_path, accounts, opportunities),
        accounts={
            "scale": {"annual_revenue": 1e6},
            "fixes": {"industry": {"Softwre": "Software"}},
        },
        opportunities={
            "labels": {
                "outcome": {
                    "closed won": "won",
                    "CLOSED LOST": "lost",
                    "engaging": "open",
                    "prospecting": "open",
                }
            },
            "drop_if_missing": ["account_id"],
        },
    )
    result = load_tables(config)
    assert result.tables.accounts["industry"].iloc[0] == "software"
    assert result.tables.accounts["annual_revenue"].iloc[3] == 2_500_000.0
    assert result.tables.opportunities["outcome"].tolist() == ["won", "lost", "won", "lost", "open"]
    assert result.report.rows("fixed values", "accounts", "industry") == 1
    assert result.report.rows("scaled", "accounts", "annual_revenue") == 4
    assert result.report.rows("mapped labels", "opportunities", "outcome") == 6
    assert result.report.rows("dropped rows with empty account_id", "opportunities") == 1


def test_renamed_columns_and_custom_date_format(tmp_path: Path) -> None:
    opportunities = opportunities_frame().rename(
        columns={"opportunity_id": "Deal ID", "created_at": "Created", "outcome": "Stage"}
    )
    opportunities["Created"] = pd.to_datetime(opportunities["Created"]).dt.strftime("%d/%m/%Y")
    opportunities["closed_at"] = pd.to_datetime(opportunities["closed_at"]).dt.strftime("%d/%m/%Y")
    config = data_config(
        write_export(tmp_path, opportunities=opportunities),
        opportunities={
            "columns": {"opportunity_id": "Deal ID", "created_at": "Created", "outcome": "Stage"},
            "date_format": "%d/%m/%Y",
        },
    )
    result = load_tables(config)
    assert result.tables.opportunities["created_at"].iloc[2] == pd.Timestamp("2023-02-10")
    assert "Deal ID" not in result.tables.opportunities.columns


def test_missing_required_column_names_the_mapped_export_column(tmp_path: Path) -> None:
    config = data_config(write_export(tmp_path), opportunities={"columns": {"outcome": "stage"}})
    problems = problems_of(config)
    assert problems[0].startswith("opportunities.outcome: required column missing")
    assert "'stage'" in problems[0]


def test_config_naming_an_unknown_column_is_a_problem(tmp_path: Path) -> None:
    config = data_config(write_export(tmp_path), accounts={"fixes": {"sector": {"a": "b"}}})
    problems = problems_of(config)
    assert problems == ["accounts.sector: config 'fixes' names a column the table does not have"]


def test_parquet_export_loads(tmp_path: Path) -> None:
    paths = write_export(tmp_path)
    accounts = accounts_frame().assign(employees=[120.0, 5400.0, None, 80.0])
    accounts["annual_revenue"] = accounts["annual_revenue"].astype(float)
    paths["accounts"] = tmp_path / "accounts.parquet"
    accounts.to_parquet(paths["accounts"])
    result = load_tables(data_config(paths))
    assert result.tables.accounts["employees"].tolist()[:2] == [120.0, 5400.0]


def test_quality_report_counts_deals_and_orphans(tmp_path: Path) -> None:
    result = load_tables(data_config(write_export(tmp_path)))
    report = quality_report(result.tables, result.report)
    assert report.rows == {"accounts": 4, "opportunities": 6, "activities": 4}
    assert report.deals["won"] == 2 and report.deals["lost"] == 2 and report.deals["open"] == 2
    assert report.deals["win_rate"] == pytest.approx(0.5)
    assert report.orphans["accounts without deals"] == 1
    assert report.orphan_examples["accounts without deals"] == ["A-4"]
    missing = report.missingness.set_index(["table", "column"])["missing"]
    assert missing[("accounts", "employees")] == 1
    assert missing[("opportunities", "closed_at")] == 2
    assert report.to_dict()["rows"]["accounts"] == 4


def test_maven_example_validates_and_reports_its_dirt() -> None:
    config = load_config(REPO / "configs" / "maven_crm.toml")
    result = load_tables(config.data)
    tables, report = result.tables, result.report
    assert len(tables.accounts) == 85
    # 8,800 deals less 1,425 open deals without an account, 163 without an engage date and
    # one deal whose every field but its id repeats another's.
    assert len(tables.opportunities) == 8_800 - 1_425 - 163 - 1
    assert report.rows("dropped exact duplicate rows", "opportunities") == 1
    assert set(tables.opportunities["outcome"]) == {"won", "lost", "open"}
    assert report.rows("fixed values", "accounts", "industry") == 12
    assert report.rows("fixed values", "accounts", "country") == 1
    assert report.rows("fixed values", "opportunities", "product") == 1_480
    assert report.rows("dropped rows with empty account_id", "opportunities") == 1_425
    assert report.rows("dropped rows with empty created_at", "opportunities") == 163
    assert "technolgy" not in set(tables.accounts["industry"])
    assert tables.accounts["annual_revenue"].min() > 1e6


def test_config_with_unknown_key_is_refused_clearly(tmp_path: Path) -> None:
    paths = write_export(tmp_path)
    config = tmp_path / "bad.toml"
    config.write_text(
        f'[data.accounts]\npath = "{paths["accounts"]}"\ndelimeter = ";"\n'
        f'[data.opportunities]\npath = "{paths["opportunities"]}"\n'
    )
    with pytest.raises(
        ConfigError, match=r"data\.accounts\.delimeter: Extra inputs are not permitted"
    ):
        load_config(config)


def test_semicolon_export_with_decimal_commas_is_named_wrong_delimiter(tmp_path: Path) -> None:
    paths = write_export(tmp_path)
    paths["opportunities"].write_text(
        "opportunity_id;account_id;created_at;outcome;amount\n"
        "O-1;A-1;2023-01-05;won;1200,50\n"
        "O-2;A-1;2023-03-01;lost;0\n"
    )
    problems = problems_of(data_config(paths))
    assert problems == [
        "opportunities: wrong delimiter: the header reads as one column "
        "'opportunity_id;account_id;created_at;outcome;amount'; "
        "looks like the delimiter is ';', config says ','"
    ]


# The cleaning steps work on each column's distinct values (exports repeat a few labels over
# millions of rows); these properties hold them to what pandas itself says row by row.

_LABELS = st.one_of(st.none(), st.sampled_from(["Email", "email", " EMAIL ", "Call", "call", ""]))


def _text(values: list) -> pd.Series:
    return pd.Series(values, dtype=pd.StringDtype(na_value=np.nan))


@settings(max_examples=150, deadline=None)
@given(st.lists(_LABELS, max_size=40), st.integers(1, 4))
def test_distinct_values_rebuild_the_column_in_order_of_first_appearance(
    values: list, chunks: int
) -> None:
    column = pd.concat([_text(values[i::chunks]) for i in range(chunks)], ignore_index=True)
    distinct = Distinct.of(column)
    assert list(distinct.values) == list(pd.unique(column.dropna()))
    pd.testing.assert_series_equal(distinct.column(distinct.values), column)
    assert distinct.counts.tolist() == [int((column == v).sum()) for v in distinct.values]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(_LABELS, st.sampled_from([0, 1, 2, None]), st.sampled_from([1.5, None, 2.0])),
        max_size=40,
    )
)
def test_duplicate_rows_are_the_rows_pandas_calls_duplicated(rows: list) -> None:
    frame = pd.DataFrame(rows, columns=["label", "day", "amount"]).astype(
        {"label": pd.StringDtype(na_value=np.nan), "day": "Int64"}
    )
    frame["day"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(frame["day"], unit="D")
    expected = frame.duplicated().to_numpy()
    assert _duplicated(frame, list(frame.columns)).tolist() == expected.tolist()


@settings(max_examples=150, deadline=None)
@given(st.lists(_LABELS, max_size=40))
def test_case_variants_unify_on_the_commonest_spelling_row_by_row(values: list) -> None:
    column = _text(values)
    report = CleaningReport()
    unified = _unify_case(column, "accounts", "country", report)
    key = column.str.casefold().str.replace(r"\s+", " ", regex=True)
    for k in key.dropna().unique():
        spellings = column[key == k]
        counts = spellings.value_counts(sort=False)
        top = counts[counts == counts.max()].index
        mixed = [v for v in top if v not in (v.upper(), v.lower())]
        winner = (mixed or list(top))[0]  # value_counts(sort=False) keeps first appearance
        assert set(unified[key == k]) == {winner}
    assert unified.isna().tolist() == column.isna().tolist()
    changed = int((column.notna() & (unified != column)).sum())
    assert report.rows("unified case and spacing variants", "accounts", "country") == changed


@settings(max_examples=150, deadline=None)
@given(st.lists(_LABELS, max_size=40))
def test_trimming_counts_every_changed_row_and_empties_become_missing(values: list) -> None:
    column = _text(values)
    report = CleaningReport()
    trimmed = _trim(column, "activities", "type", report)
    expected = column.str.strip().replace("", np.nan)
    pd.testing.assert_series_equal(trimmed, expected, check_names=False)
    changed = int((column.notna() & (expected.isna() | (expected != column))).sum())
    assert report.rows("trimmed spaces", "activities", "type") == changed


def test_duplicate_rows_across_many_wide_columns_match_pandas() -> None:
    # Eight columns of ~500 distinct values each: more combinations than an int64 holds.
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({f"c{i}": rng.integers(0, 500, 3000) for i in range(8)})
    frame = pd.concat([frame, frame.sample(300, random_state=1)], ignore_index=True)
    frame["c0"] = frame["c0"].astype(str).astype(pd.StringDtype(na_value=np.nan))
    duplicated = _duplicated(frame, list(frame.columns))
    assert duplicated.sum() >= 300
    assert duplicated.tolist() == frame.duplicated().tolist()
