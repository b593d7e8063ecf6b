"""Rep overrides: a rep or manager sets an account's tier with a reason, their name and an
optional expiry. Kept in the tier-history database (table ``tiering_overrides``, migration
0002), so they survive re-scoring and retraining; batch runs apply them after the policy
(``tiering.capacity.stabilise_within``), where an override into Tier 1 takes one of its
group's seats.

An override is in force from when it is set until it is cleared, replaced by a newer one, or
its ``until`` date has passed (it still holds on that date). Nothing is ever deleted: the
table is also the record of who set what, when and why.

Bad input (:class:`OverrideError`, a ValueError naming the field) is refused before anything is
written: an unknown account id, a tier other than 1, 2 or 3, an expiry before today, an empty
reason or name.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import (
    Date,
    DateTime,
    Integer,
    SmallInteger,
    String,
    Text,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from serving.history import Base, HistoryError, HistoryStore

TIERS = (1, 2, 3)


class OverrideRow(Base):
    """One override as set (and, once cleared, by whom and when)."""

    __tablename__ = "tiering_overrides"

    override_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(200), index=True)
    tier: Mapped[int] = mapped_column(SmallInteger)
    reason: Mapped[str] = mapped_column(Text)
    set_by: Mapped[str] = mapped_column(String(200))
    set_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    until: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    cleared_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    cleared_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True)
class Override:
    account_id: str
    tier: int
    reason: str
    set_by: str
    set_at: dt.datetime
    until: dt.date | None

    def describe(self) -> str:
        """The words a change reason and a listing use."""
        until = f" until {self.until.isoformat()}" if self.until is not None else ""
        return (
            f"override to Tier {self.tier} by {self.set_by} on {self.set_at.date().isoformat()}"
            f"{until}: {self.reason}"
        )


class OverrideError(ValueError):
    """A bad override; ``field`` names the input at fault. Nothing was written."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _today(today: dt.date | None) -> dt.date:
    return today if today is not None else dt.datetime.now(dt.UTC).date()


def _override(row: Any) -> Override:
    set_at = row["set_at"]
    if set_at.tzinfo is None:
        set_at = set_at.replace(tzinfo=dt.UTC)
    return Override(
        account_id=str(row["account_id"]),
        tier=int(row["tier"]),
        reason=str(row["reason"]),
        set_by=str(row["set_by"]),
        set_at=set_at,
        until=row["until"],
    )


def _in_force(today: dt.date) -> Any:
    return (OverrideRow.cleared_at.is_(None)) & (
        or_(OverrideRow.until.is_(None), OverrideRow.until >= today)
    )


def _run(store: HistoryStore, what: str, fn: Any) -> Any:
    try:
        return fn()
    except SQLAlchemyError as exc:
        raise HistoryError(
            f"history store {store.shown()}: {what} failed, nothing changed "
            f"({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
        ) from exc


def validate_override(
    account_id: str,
    *,
    tier: int,
    reason: str,
    by: str,
    until: dt.date | None,
    known_ids: Collection[str] | None,
    today: dt.date,
) -> tuple[str, str, str]:
    """The cleaned account id, reason and name, or :class:`OverrideError`."""
    account = str(account_id).strip()
    if not account:
        raise OverrideError("account_id", "account_id: empty; give the account's id")
    if known_ids is not None and account not in known_ids:
        raise OverrideError(
            "account_id",
            f"account_id: {account!r} is not in the account list; check the id "
            "(ids are case-sensitive)",
        )
    if isinstance(tier, bool) or tier not in TIERS:
        raise OverrideError("tier", f"tier: {tier!r} is not a tier; use 1, 2 or 3")
    text = (reason or "").strip()
    if not text:
        raise OverrideError("reason", "reason: missing; say why the account belongs in this tier")
    name = (by or "").strip()
    if not name:
        raise OverrideError("by", "by: missing; give the name of who sets the override")
    if until is not None and until < today:
        raise OverrideError(
            "until",
            f"until: {until.isoformat()} is in the past (today is {today.isoformat()}); give "
            "a date from today on, or none for no expiry",
        )
    return account, text, name


def set_override(
    store: HistoryStore,
    account_id: str,
    *,
    tier: int,
    reason: str,
    by: str,
    until: dt.date | None = None,
    known_ids: Collection[str] | None = None,
    today: dt.date | None = None,
) -> Override:
    """Set (or replace) an account's override; the previous one in force is closed as
    replaced. Validates everything before writing anything."""
    day = _today(today)
    account, text, name = validate_override(
        account_id, tier=tier, reason=reason, by=by, until=until, known_ids=known_ids, today=day
    )
    now = dt.datetime.now(dt.UTC)

    def write() -> None:
        with store.engine.begin() as conn:
            conn.execute(
                update(OverrideRow)
                .where((OverrideRow.account_id == account) & _in_force(day))
                .values(cleared_by=name, cleared_at=now)
            )
            conn.execute(
                insert(OverrideRow).values(
                    account_id=account,
                    tier=int(tier),
                    reason=text,
                    set_by=name,
                    set_at=now,
                    until=until,
                )
            )

    _run(store, f"setting the override of {account}", write)
    return Override(account, int(tier), text, name, now, until)


def clear_override(
    store: HistoryStore, account_id: str, *, by: str, today: dt.date | None = None
) -> Override:
    """Clear the account's override in force (the record stays, marked cleared)."""
    name = (by or "").strip()
    if not name:
        raise OverrideError("by", "by: missing; give the name of who clears the override")
    day = _today(today)
    current = active_override(store, account_id, today=day)
    if current is None:
        raise OverrideError(
            "account_id",
            f"account_id: {str(account_id).strip()!r} has no override in force; "
            "`tiering override list` shows those that are",
        )
    now = dt.datetime.now(dt.UTC)

    def write() -> None:
        with store.engine.begin() as conn:
            conn.execute(
                update(OverrideRow)
                .where((OverrideRow.account_id == current.account_id) & _in_force(day))
                .values(cleared_by=name, cleared_at=now)
            )

    _run(store, f"clearing the override of {current.account_id}", write)
    return current


def active_override(
    store: HistoryStore, account_id: str, *, today: dt.date | None = None
) -> Override | None:
    found = [
        o for o in active_overrides(store, today=today) if o.account_id == str(account_id).strip()
    ]
    return found[-1] if found else None


def active_overrides(store: HistoryStore, *, today: dt.date | None = None) -> list[Override]:
    """Overrides in force on ``today`` (default: today), oldest first, one per account."""
    day = _today(today)

    def read() -> list[Any]:
        with store.engine.connect() as conn:
            query = select(OverrideRow).where(_in_force(day)).order_by(OverrideRow.set_at)
            return list(conn.execute(query).mappings().all())

    latest: dict[str, Override] = {}
    for row in _run(store, "reading the overrides", read):
        latest[str(row["account_id"])] = _override(row)
    return list(latest.values())


def ended_overrides(
    store: HistoryStore, *, since_as_of: dt.date, since: dt.datetime, as_of: dt.date
) -> dict[str, str]:
    """Overrides that were in force at the previous run (as of ``since_as_of``, recorded at
    ``since``) and no longer are on ``as_of``: account -> what ended them."""

    def read() -> list[Any]:
        with store.engine.connect() as conn:
            query = select(OverrideRow).where(
                or_(
                    (OverrideRow.cleared_at.is_not(None)) & (OverrideRow.cleared_at >= since),
                    (OverrideRow.until.is_not(None))
                    & (OverrideRow.until >= since_as_of)
                    & (OverrideRow.until < as_of),
                )
            )
            return list(conn.execute(query).mappings().all())

    out: dict[str, str] = {}
    for row in _run(store, "reading the overrides", read):
        o = _override(row)
        if row["cleared_at"] is not None:
            by = row["cleared_by"]
            out[o.account_id] = f"{o.describe()} — cleared by {by}"
        else:
            out[o.account_id] = f"{o.describe()} — expired"
    in_force = {o.account_id for o in active_overrides(store, today=as_of)}
    return {k: v for k, v in out.items() if k not in in_force}


def overrides_frame(store: HistoryStore, *, today: dt.date | None = None) -> pd.DataFrame:
    """Overrides in force as a table (account_id, tier, reason, set_by, set_at, until)."""
    rows = active_overrides(store, today=today)
    return pd.DataFrame(
        [
            {
                "account_id": o.account_id,
                "tier": o.tier,
                "reason": o.reason,
                "set_by": o.set_by,
                "set_at": o.set_at,
                "until": o.until,
            }
            for o in rows
        ],
        columns=["account_id", "tier", "reason", "set_by", "set_at", "until"],
    )


def all_overrides(store: HistoryStore) -> pd.DataFrame:
    """Every override ever set, for the performance report."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(OverrideRow).order_by(OverrideRow.set_at)).mappings().all()
    return pd.DataFrame(rows, columns=[c.name for c in OverrideRow.__table__.columns])
