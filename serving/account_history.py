"""One account's tiers over time, with the reasons: what `tiering explain ACCOUNT_ID` prints
and ``GET /accounts/{id}/history`` answers."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd
from pydantic import BaseModel, Field

from serving.history import HISTORY_URL_ENV, HistoryStore


class HistoryEntry(BaseModel):
    as_of: str = Field(description="The run's date (YYYY-MM-DD).")
    tier: int
    base_tier: int = Field(
        description="The tier policy's tier before stability, elevation or override."
    )
    previous_tier: int | None
    tier_since: str
    priority: float
    change_reason: str = Field(
        description="Why the tier differs from the previous run; empty if it does not."
    )
    change_code: str
    reason_summary: str
    model_version: str
    owner: str | None = None
    territory: str | None = None
    figures: dict[str, Any] = Field(
        default_factory=dict, description="The model's figures in that run."
    )


class AccountTimeline(BaseModel):
    account_id: str
    entries: list[HistoryEntry] = Field(description="One per recorded run, oldest first.")


def _opt(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def account_timeline(store: HistoryStore, account_id: str) -> AccountTimeline | None:
    """The account's rows in every run, oldest first; None when it was never tiered."""
    rows = store.account_history(str(account_id))
    if rows.empty:
        return None
    entries = [
        HistoryEntry(
            as_of=row["as_of"].date().isoformat(),
            tier=int(row["tier"]),
            base_tier=int(row["base_tier"]),
            previous_tier=None if pd.isna(row["previous_tier"]) else int(row["previous_tier"]),
            tier_since=row["tier_since"].date().isoformat(),
            priority=float(row["priority"]),
            change_reason=row["change_reason"] or "",
            change_code=row["change_code"] or "",
            reason_summary=row["reason_summary"] or "",
            model_version=row["model_version"],
            owner=_opt(row["owner"]),
            territory=_opt(row["territory"]),
            figures={k: _opt(v) for k, v in (row["figures"] or {}).items()},
        )
        for _, row in rows.iterrows()
    ]
    return AccountTimeline(account_id=str(account_id), entries=entries)


def service_store(config_path: Any) -> HistoryStore | None:
    """The service's history store: TIERING_HISTORY_URL, else the deployment config's."""
    from serving.history import history_url
    from tiering.config import load_config
    from tiering.store import resolve_uri

    if os.environ.get(HISTORY_URL_ENV):
        return HistoryStore(os.environ[HISTORY_URL_ENV])
    if config_path is None:
        return None
    config = load_config(config_path)
    return HistoryStore(history_url(config.history.url, resolve_uri(config.mlflow.tracking_uri)[0]))


def history_response(store: HistoryStore | None, account_id: str) -> AccountTimeline:
    """The HTTP answer: 404 for an account with no history, 503 without a store."""
    from fastapi import HTTPException

    from serving.history import HistoryError

    if store is None:
        raise HTTPException(
            503, f"no tier history configured: set {HISTORY_URL_ENV} or TIERING_CONFIG"
        )
    try:
        timeline = account_timeline(store, account_id)
    except HistoryError as exc:
        raise HTTPException(503, str(exc)) from None
    if timeline is None:
        raise HTTPException(404, f"account_id: {account_id!r} has no tier history")
    return timeline
