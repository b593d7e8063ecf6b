"""CRM write-back files that a CRM imports as they are.

`tiering score` always writes the generic ``<stem>_crm.csv``. A preset (``[crm] preset`` or
``tiering score --crm``) adds ``<stem>_<preset>.csv`` in the CRM's own import format:

- **salesforce**: an upsert file for Data Loader / Data Import Wizard, keyed by an External ID
  field (``Tiering_External_ID__c`` = the account id); Percent fields 0-100; every text at most
  255 characters *and* 255 bytes (a Text(255) field), cut at a word with "…";
- **hubspot**: a company import matched on the Record ID (the account id) or on the company
  domain; the same limits and units.

Columns (both): the id, name, owner, tier, previous tier, tier since, change reason, reason
summary, P(convert) in percent, expected revenue, ICP fit, model version, scored date. The
encoding is configurable: ``utf-8-sig`` writes the BOM Excel needs to read UTF-8.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from tiering.config import Config, CrmConfig

Preset = Literal["generic", "salesforce", "hubspot"]
ELLIPSIS = "…"

# canonical name -> each preset's column header
SALESFORCE_COLUMNS: Mapping[str, str] = {
    "external_id": "Tiering_External_ID__c",
    "name": "Name",
    "owner": "Tiering_Owner__c",
    "tier": "Tier__c",
    "previous_tier": "Previous_Tier__c",
    "tier_since": "Tier_Since__c",
    "change_reason": "Tier_Change_Reason__c",
    "reason_summary": "Tier_Reason__c",
    "p_convert_pct": "P_Convert__c",
    "expected_revenue": "Expected_Revenue__c",
    "icp_fit": "ICP_Fit__c",
    "model_version": "Tiering_Model_Version__c",
    "scored_date": "Tiering_Scored_Date__c",
    "segment": "Tiering_Segment__c",
    "customer_tier": "Customer_Success_Tier__c",
    "revenue_at_risk": "Revenue_At_Risk__c",
    "expected_expansion": "Expected_Expansion__c",
}
HUBSPOT_COLUMNS: Mapping[str, str] = {
    "record_id": "Record ID",
    "domain": "Company Domain Name",
    "name": "Company name",
    "owner": "Company owner",
    "tier": "Account tier",
    "previous_tier": "Previous account tier",
    "tier_since": "Account tier since",
    "change_reason": "Account tier change reason",
    "reason_summary": "Account tier reason",
    "p_convert_pct": "P(convert) %",
    "expected_revenue": "Expected revenue",
    "icp_fit": "ICP fit",
    "model_version": "Tiering model version",
    "scored_date": "Tiering scored date",
    "segment": "Tiering segment",
    "customer_tier": "Customer success tier",
    "revenue_at_risk": "Revenue at risk",
    "expected_expansion": "Expected expansion",
}
TEXT_FIELDS = ("name", "owner", "change_reason", "reason_summary", "model_version")
SCORE_COLUMNS = (
    "account_id",
    "tier",
    "previous_tier",
    "tier_since",
    "change_reason",
    "reason_summary",
    "p_convert",
    "expected_revenue",
    "icp_fit",
    "model_version",
    "segment",
    "customer_tier",
    "revenue_at_risk",
    "expected_expansion",
)


class CrmExportError(ValueError):
    """The CRM file cannot be written as configured; the message names the setting."""


def truncate_text(
    text: str, max_chars: int = 255, max_bytes: int = 255, encoding: str = "utf-8"
) -> str:
    """``text`` when it fits, else its longest prefix that ends at a word and, with "…"
    appended, is at most ``max_chars`` characters and ``max_bytes`` bytes in ``encoding``.
    A first word longer than the limit is cut inside the word."""
    if len(text) <= max_chars and len(text.encode(encoding, "replace")) <= max_bytes:
        return text
    mark = ELLIPSIS if _encodable(ELLIPSIS, encoding) else "..."
    char_budget = max_chars - len(mark)
    byte_budget = max_bytes - len(mark.encode(encoding))
    used = 0
    end = 0
    for i, ch in enumerate(text[: max(char_budget, 0)]):
        size = len(ch.encode(encoding, "replace"))
        if used + size > byte_budget:
            break
        used += size
        end = i + 1
    prefix = text[:end]
    cut = prefix.rstrip()
    if end < len(text) and not text[end].isspace():
        # Inside a word: back to the last space, unless the first word alone is too long.
        space = max(cut.rfind(" "), cut.rfind("\n"), cut.rfind("\t"))
        if space > 0:
            cut = cut[:space]
    cut = cut.rstrip(" \t\n,;:—–-")
    return cut + mark


def _encodable(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def check_encoding(encoding: str) -> str:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise CrmExportError(
            f"crm.encoding: {encoding!r} is not a known encoding (e.g. utf-8, utf-8-sig, cp1252)"
        ) from None
    return encoding


def preset_frame(
    scores: pd.DataFrame,
    accounts: pd.DataFrame,
    *,
    preset: Preset,
    config: CrmConfig,
    scored_date: pd.Timestamp,
) -> pd.DataFrame:
    """The rows of a preset's file: one per scored account, the preset's headers."""
    if preset == "generic":
        raise CrmExportError(
            "crm.preset: generic is the tiers_crm.csv file; choose salesforce or hubspot"
        )
    encoding = check_encoding(config.encoding)
    ids = scores["account_id"].astype(str)
    info = accounts.assign(account_id=accounts["account_id"].astype(str)).drop_duplicates(
        "account_id"
    )
    info = info.set_index("account_id").reindex(ids)
    frame = pd.DataFrame(index=range(len(scores)))
    frame["name"] = _text_column(info, "name")
    frame["owner"] = _text_column(info, "owner")
    frame["tier"] = scores["tier"].astype("Int64").to_numpy()
    frame["previous_tier"] = _int_column(scores, "previous_tier")
    frame["tier_since"] = _date_column(scores, "tier_since", scored_date)
    frame["change_reason"] = _text_column(scores, "change_reason")
    frame["reason_summary"] = _text_column(scores, "reason_summary")
    frame["p_convert_pct"] = (100 * scores["p_convert"].astype(float)).round(2).to_numpy()
    frame["expected_revenue"] = scores["expected_revenue"].astype(float).round(2).to_numpy()
    frame["icp_fit"] = scores["icp_fit"].astype(float).round(1).to_numpy()
    frame["model_version"] = _text_column(scores, "model_version")
    frame["scored_date"] = scored_date.date().isoformat()
    # Customers' own tier for customer success; empty for prospects (and older score files).
    frame["segment"] = _text_column(scores, "segment")
    frame["customer_tier"] = _int_column(scores, "customer_tier")
    frame["revenue_at_risk"] = _money_column(scores, "revenue_at_risk")
    frame["expected_expansion"] = _money_column(scores, "expected_expansion")
    for name in TEXT_FIELDS:
        frame[name] = frame[name].map(
            lambda t: truncate_text(t, config.max_text, config.max_text, encoding)
        )
    if preset == "salesforce":
        frame.insert(0, "external_id", ids.to_numpy())
        columns = SALESFORCE_COLUMNS
    else:
        if config.hubspot_match == "domain":
            if config.domain_column not in info:
                raise CrmExportError(
                    f"crm.domain_column: the accounts have no column {config.domain_column!r} "
                    f"to match HubSpot companies on (columns: {sorted(map(str, info.columns))}); "
                    "map it in the config or set crm.hubspot_match = 'record_id'"
                )
            frame.insert(0, "domain", _text_column(info, config.domain_column))
        else:
            frame.insert(0, "record_id", ids.to_numpy())
        columns = HUBSPOT_COLUMNS
    return frame.rename(columns=dict(columns))[[columns[c] for c in frame.columns]]


def _text_column(frame: pd.DataFrame, name: str) -> list[str]:
    if name not in frame:
        return [""] * len(frame)
    return ["" if pd.isna(v) else str(v) for v in frame[name]]


def _money_column(frame: pd.DataFrame, name: str) -> Any:
    if name not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[name], errors="coerce").astype(float).round(2).to_numpy()


def _int_column(frame: pd.DataFrame, name: str) -> Any:
    if name not in frame:
        return pd.Series([pd.NA] * len(frame), dtype="Int64").array
    return pd.to_numeric(frame[name], errors="coerce").round().astype("Int64").array


def _date_column(frame: pd.DataFrame, name: str, default: pd.Timestamp) -> list[str]:
    if name not in frame:
        return [default.date().isoformat()] * len(frame)
    dates = pd.to_datetime(frame[name], errors="coerce")
    return [default.date().isoformat() if pd.isna(d) else d.date().isoformat() for d in dates]


def preset_path(scores_path: Path, preset: Preset) -> Path:
    return scores_path.with_name(f"{scores_path.stem}_{preset}.csv")


def write_preset(frame: pd.DataFrame, path: Path, encoding: str) -> Path:
    """Write atomically (a temporary file, then a rename)."""
    from serving.batch import atomic_outputs

    with atomic_outputs([path]) as (tmp,):
        frame.to_csv(tmp, index=False, encoding=check_encoding(encoding))
    return path


def export_for_crm(
    config: Config,
    scores_path: Path,
    scored_date: pd.Timestamp,
    *,
    preset: Preset | None = None,
    encoding: str | None = None,
) -> Path | None:
    """After `tiering score`: the preset's file beside the scores, or None for generic."""
    from features.contract import load_tables

    crm = config.crm.model_copy(
        update={k: v for k, v in {"preset": preset, "encoding": encoding}.items() if v}
    )
    if crm.preset == "generic":
        return None
    check_encoding(crm.encoding)
    if scores_path.suffix.lower() == ".csv":
        scores = pd.read_csv(scores_path)
    else:
        import pyarrow.parquet as pq

        present = set(pq.read_schema(scores_path).names)
        scores = pd.read_parquet(scores_path, columns=[c for c in SCORE_COLUMNS if c in present])
    accounts = load_tables(config.data).tables.accounts
    frame = preset_frame(scores, accounts, preset=crm.preset, config=crm, scored_date=scored_date)
    return write_preset(frame, preset_path(scores_path, crm.preset), crm.encoding)
