"""CRM write-back files that import: the Salesforce and HubSpot presets' columns, percents in
0-100, every text within 255 characters and 255 bytes (cut at a word with "…"), and the
configured encoding (a BOM for Excel)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.crm import (
    HUBSPOT_COLUMNS,
    SALESFORCE_COLUMNS,
    CrmExportError,
    export_for_crm,
    preset_frame,
    truncate_text,
)
from tiering.config import CrmConfig

from support import LiveDeployment, TrainedBundle

WORDS = st.text(
    alphabet=st.sampled_from(list("abcdeé€ü漢字😀—,;") + [" ", " ", " "]), min_size=0, max_size=600
)


@settings(max_examples=300, deadline=None)
@given(text=WORDS, limit=st.integers(min_value=16, max_value=300))
def test_truncated_text_fits_in_characters_and_bytes_and_ends_at_a_word(
    text: str, limit: int
) -> None:
    cut = truncate_text(text, limit, limit)
    assert len(cut) <= limit and len(cut.encode("utf-8")) <= limit
    if len(text) <= limit and len(text.encode("utf-8")) <= limit:
        assert cut == text
        return
    assert cut.endswith("…")
    kept = cut[: -len("…")]
    assert text.startswith(kept)
    rest = text[len(kept) :]
    # Cut between words (or after trimmed punctuation), unless one word alone was too long.
    assert rest[:1].isspace() or rest[:1] in ",;:—–-" or not any(c.isspace() for c in kept), (
        kept,
        rest[:5],
    )


def test_truncation_in_an_encoding_without_an_ellipsis_uses_three_dots() -> None:
    cut = truncate_text("word " * 100, 40, 40, "latin-1")
    assert cut.endswith("...") and len(cut.encode("latin-1")) <= 40


@pytest.fixture(scope="module")
def scored(
    trained_bundle: TrainedBundle,
    live_deployment: LiveDeployment,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[object, Path, pd.Timestamp]:
    """The latest run's scores (with previous tier, tier since, change reason) in a folder of
    this module's own."""
    folder = tmp_path_factory.mktemp("crm")
    scores = folder / "tiers.parquet"
    shutil.copy(live_deployment.root / "tiers.parquet", scores)
    as_of = pd.Timestamp(pd.read_parquet(scores, columns=["tier_since"])["tier_since"].max())
    return trained_bundle.config, scores, as_of


def _text_fields_fit(frame: pd.DataFrame, columns: list[str], limit: int = 255) -> None:
    for column in columns:
        for value in frame[column].fillna("").astype(str):
            assert len(value) <= limit and len(value.encode("utf-8")) <= limit, (column, value)


def test_salesforce_preset_upserts_by_external_id_with_percents_0_100(
    scored: tuple[object, Path, pd.Timestamp],
) -> None:
    config, scores_path, as_of = scored
    path = export_for_crm(config, scores_path, as_of, preset="salesforce", encoding="utf-8-sig")  # type: ignore[arg-type]
    assert path is not None and path.name == "tiers_salesforce.csv"
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")  # a BOM: Excel reads UTF-8
    frame = pd.read_csv(path, encoding="utf-8-sig", dtype={"Tiering_External_ID__c": str})
    assert list(frame.columns) == list(SALESFORCE_COLUMNS.values())
    scores = pd.read_parquet(scores_path)
    assert list(frame["Tiering_External_ID__c"]) == list(scores["account_id"].astype(str))
    percent = frame["P_Convert__c"]
    assert percent.between(0, 100).all() and percent.max() > 1
    assert percent.to_numpy() == pytest.approx(100 * scores["p_convert"].to_numpy(), abs=0.006)
    assert frame["Name"].notna().all() and frame["Tiering_Owner__c"].notna().any()
    assert set(frame["Tier__c"]) <= {1, 2, 3}
    assert frame["Previous_Tier__c"].notna().any()
    assert (frame["Tiering_Scored_Date__c"] == as_of.date().isoformat()).all()
    assert (frame["Tiering_Model_Version__c"] == "test-1").all()
    _text_fields_fit(frame, ["Name", "Tiering_Owner__c", "Tier_Change_Reason__c", "Tier_Reason__c"])
    # Customers carry their own customer-success tier; prospects leave it empty.
    customer = (scores["segment"] == "customer").to_numpy()
    assert customer.any() and (~customer).any()
    assert list(frame["Tiering_Segment__c"]) == list(scores["segment"])
    assert frame.loc[~customer, "Customer_Success_Tier__c"].isna().all()
    assert list(frame.loc[customer, "Customer_Success_Tier__c"].astype("Int64")) == list(
        scores.loc[customer, "customer_tier"].astype("Int64")
    )


def test_hubspot_preset_matches_on_record_id_or_domain(
    scored: tuple[object, Path, pd.Timestamp],
) -> None:
    config, scores_path, as_of = scored
    path = export_for_crm(config, scores_path, as_of, preset="hubspot")  # type: ignore[arg-type]
    assert path is not None
    frame = pd.read_csv(path, dtype={"Record ID": str})
    expected = [c for c in HUBSPOT_COLUMNS.values() if c != "Company Domain Name"]
    assert list(frame.columns) == expected
    assert frame["P(convert) %"].between(0, 100).all() and frame["P(convert) %"].max() > 1
    _text_fields_fit(frame, ["Company name", "Account tier reason", "Account tier change reason"])

    by_domain = CrmConfig(preset="hubspot", hubspot_match="domain")
    scores = pd.read_parquet(scores_path)
    accounts = pd.DataFrame({"account_id": scores["account_id"], "name": "Acme"})
    with pytest.raises(CrmExportError, match="crm.domain_column"):
        preset_frame(scores, accounts, preset="hubspot", config=by_domain, scored_date=as_of)
    accounts["domain"] = [f"acme{i}.example" for i in range(len(accounts))]
    frame = preset_frame(scores, accounts, preset="hubspot", config=by_domain, scored_date=as_of)
    assert frame.columns[0] == "Company Domain Name" and "Record ID" not in frame
    assert frame["Company Domain Name"].iloc[3] == "acme3.example"


def test_long_multibyte_reasons_are_cut_to_255_bytes_at_a_word() -> None:
    reason = "Tier 1 — Umsatz über 5 Mio. €, Entscheider im Gespräch; " * 12
    scores = pd.DataFrame(
        {
            "account_id": ["A-1", "A-2"],
            "tier": [1, 2],
            "reason_summary": [reason, "short"],
            "p_convert": [0.5281199999999999, 0.01],
            "expected_revenue": [1234.5678, 10.0],
            "icp_fit": [66.6666, 33.3333],
            "model_version": ["7", "7"],
        }
    )
    accounts = pd.DataFrame({"account_id": ["A-1", "A-2"], "name": ["Müller GmbH", "Ōsaka KK"]})
    frame = preset_frame(
        scores,
        accounts,
        preset="salesforce",
        config=CrmConfig(preset="salesforce"),
        scored_date=pd.Timestamp("2026-06-30"),
    )
    text = frame["Tier_Reason__c"].iloc[0]
    assert len(text.encode("utf-8")) <= 255 and text.endswith("…")
    assert reason.startswith(text[:-1])
    assert frame["Tier_Reason__c"].iloc[1] == "short"
    assert frame["P_Convert__c"].tolist() == [52.81, 1.0]
    assert frame["Expected_Revenue__c"].tolist() == [1234.57, 10.0]
    assert frame["Previous_Tier__c"].isna().all()  # no history: empty, not 0
    assert frame["Name"].tolist() == ["Müller GmbH", "Ōsaka KK"]


def test_an_unknown_encoding_or_preset_is_refused_with_the_setting_named(
    scored: tuple[object, Path, pd.Timestamp],
) -> None:
    from typer.testing import CliRunner

    from tiering_cli.main import app

    config, scores_path, as_of = scored
    with pytest.raises(CrmExportError, match="crm.encoding"):
        export_for_crm(config, scores_path, as_of, preset="salesforce", encoding="klingon")  # type: ignore[arg-type]
    assert export_for_crm(config, scores_path, as_of) is None  # generic: tiers_crm.csv only
    result = CliRunner().invoke(app, ["score", "--crm", "dynamics"])
    assert result.exit_code == 2 and "--crm" in result.output and "salesforce" in result.output
