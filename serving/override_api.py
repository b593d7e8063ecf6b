"""``PUT`` and ``DELETE /accounts/{id}/override``: the HTTP side of ``serving.overrides``.

A bad override is a 4xx naming the field (422: tier, reason, by or until; 404: an account id
the account list does not hold, or no override in force to clear) and nothing is written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serving.history import HISTORY_URL_ENV, HistoryError, HistoryStore
from serving.overrides import Override, OverrideError, clear_override, set_override


class OverrideRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier: int = Field(description="1, 2 or 3.")
    reason: str = Field(description="Why the account belongs in this tier (required).")
    by: str = Field(description="Who sets the override.")
    until: dt.date | None = Field(
        default=None, description="Last day the override holds (YYYY-MM-DD); none: no expiry."
    )


class OverrideResponse(BaseModel):
    account_id: str
    tier: int
    reason: str
    set_by: str
    set_at: str
    until: str | None
    status: str = Field(description="set or cleared.")


def _response(o: Override, status: str) -> OverrideResponse:
    return OverrideResponse(
        account_id=o.account_id,
        tier=o.tier,
        reason=o.reason,
        set_by=o.set_by,
        set_at=o.set_at.isoformat(),
        until=None if o.until is None else o.until.isoformat(),
        status=status,
    )


def _http(exc: OverrideError) -> Any:
    from fastapi import HTTPException

    status = 404 if exc.field == "account_id" else 422
    return HTTPException(status, {"field": exc.field, "message": str(exc)})


def _need(store: HistoryStore | None) -> HistoryStore:
    from fastapi import HTTPException

    if store is None:
        raise HTTPException(
            503, f"no tier history configured: set {HISTORY_URL_ENV} or TIERING_CONFIG"
        )
    return store


def known_account_ids(snapshot_ids: Collection[str] | None, store: HistoryStore) -> set[str] | None:
    """The account list overrides are checked against: the snapshot's ids, else the latest
    recorded run's; None when neither exists."""
    if snapshot_ids is not None and len(snapshot_ids):
        return {str(a) for a in snapshot_ids}
    runs = store.runs()
    if runs.empty:
        return None
    rows = store.rows(run_id=str(runs["run_id"].iloc[-1]), columns=["account_id"])
    return set(rows["account_id"].astype(str))


def put_override(
    store: HistoryStore | None,
    snapshot_ids: Collection[str] | None,
    account_id: str,
    body: OverrideRequest,
) -> OverrideResponse:
    from fastapi import HTTPException

    hist = _need(store)
    try:
        known = known_account_ids(snapshot_ids, hist)
        done = set_override(
            hist,
            account_id,
            tier=body.tier,
            reason=body.reason,
            by=body.by,
            until=body.until,
            known_ids=known,
        )
    except OverrideError as exc:
        raise _http(exc) from None
    except HistoryError as exc:
        raise HTTPException(503, str(exc)) from None
    return _response(done, "set")


def delete_override(store: HistoryStore | None, account_id: str, by: str) -> OverrideResponse:
    from fastapi import HTTPException

    hist = _need(store)
    try:
        done = clear_override(hist, account_id, by=by)
    except OverrideError as exc:
        raise _http(exc) from None
    except HistoryError as exc:
        raise HTTPException(503, str(exc)) from None
    return _response(done, "cleared")
