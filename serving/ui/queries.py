"""What the rep pages read from the tier history: the latest batch run's accounts, filtered,
sorted and paged in SQL (LIMIT/OFFSET), so a page of 50 out of 100,000 accounts reads 50
rows and one count, never the whole list."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import case, func, select
from sqlalchemy.sql.elements import ColumnElement

from serving.history import HistoryStore, RunRow, TierRow

SortKey = Literal["tier", "account", "expected_revenue", "p_convert", "icp_fit", "change"]
SORT_KEYS: tuple[SortKey, ...] = (
    "tier",
    "account",
    "expected_revenue",
    "p_convert",
    "icp_fit",
    "change",
)
PAGE_SIZES = (25, 50, 100)


@dataclass(frozen=True)
class AccountFilter:
    owner: str | None = None
    territory: str | None = None
    tier: int | None = None
    search: str | None = None
    sort: SortKey = "tier"
    descending: bool = False
    page: int = 1
    page_size: int = 50


@dataclass(frozen=True)
class ListRow:
    account_id: str
    tier: int
    previous_tier: int | None
    change_reason: str
    owner: str | None
    territory: str | None
    expected_revenue: float | None
    p_convert: float | None
    icp_fit: float | None
    reason_summary: str

    @property
    def change(self) -> str:
        if self.previous_tier is None:
            return "new"
        if self.tier < self.previous_tier:
            return "up"
        if self.tier > self.previous_tier:
            return "down"
        return "same"


@dataclass(frozen=True)
class AccountPage:
    as_of: dt.date | None
    model_version: str | None
    rows: list[ListRow]
    total: int
    page: int
    pages: int
    owners: list[str] = field(default_factory=list)
    territories: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LatestRun:
    run_id: str
    as_of: dt.date
    model_version: str


def latest_run(store: HistoryStore) -> LatestRun | None:
    with store.engine.connect() as conn:
        row = (
            conn.execute(
                select(RunRow.run_id, RunRow.as_of, RunRow.model_version)
                .order_by(RunRow.as_of.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
    if row is None:
        return None
    return LatestRun(str(row["run_id"]), row["as_of"], str(row["model_version"]))


def _figure(name: str) -> ColumnElement[Any]:
    return TierRow.figures[name].as_float()


def _order(key: SortKey, descending: bool) -> list[ColumnElement[Any]]:
    movement = func.coalesce(TierRow.previous_tier, 4) - TierRow.tier
    column: Any = {
        "tier": TierRow.tier,
        "account": TierRow.account_id,
        "expected_revenue": _figure("expected_revenue"),
        "p_convert": _figure("p_convert"),
        "icp_fit": _figure("icp_fit"),
        "change": movement,
    }[key]
    first = column.desc() if descending else column.asc()
    # Ties: the higher priority first, then the id, so pages never overlap or skip.
    return [first, TierRow.priority.desc(), TierRow.account_id.asc()]


def account_page(store: HistoryStore, wanted: AccountFilter) -> AccountPage:
    run = latest_run(store)
    if run is None:
        return AccountPage(None, None, [], 0, 1, 1)
    conditions: list[ColumnElement[bool]] = [TierRow.run_id == run.run_id]
    if wanted.owner:
        conditions.append(TierRow.owner == wanted.owner)
    if wanted.territory:
        conditions.append(TierRow.territory == wanted.territory)
    if wanted.tier in (1, 2, 3):
        conditions.append(TierRow.tier == wanted.tier)
    if wanted.search:
        escaped = wanted.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(TierRow.account_id.ilike(f"%{escaped}%", escape="\\"))
    size = wanted.page_size if wanted.page_size in PAGE_SIZES else PAGE_SIZES[1]
    with store.engine.connect() as conn:
        total = int(
            conn.execute(select(func.count()).select_from(TierRow).where(*conditions)).scalar() or 0
        )
        pages = max(1, -(-total // size))
        page = min(max(1, wanted.page), pages)
        query = (
            select(
                TierRow.account_id,
                TierRow.tier,
                TierRow.previous_tier,
                TierRow.change_reason,
                TierRow.owner,
                TierRow.territory,
                TierRow.reason_summary,
                _figure("expected_revenue").label("expected_revenue"),
                _figure("p_convert").label("p_convert"),
                _figure("icp_fit").label("icp_fit"),
            )
            .where(*conditions)
            .order_by(*_order(wanted.sort, wanted.descending))
            .limit(size)
            .offset((page - 1) * size)
        )
        rows = [
            ListRow(
                account_id=str(r["account_id"]),
                tier=int(r["tier"]),
                previous_tier=None if r["previous_tier"] is None else int(r["previous_tier"]),
                change_reason=r["change_reason"] or "",
                owner=r["owner"],
                territory=r["territory"],
                expected_revenue=r["expected_revenue"],
                p_convert=r["p_convert"],
                icp_fit=r["icp_fit"],
                reason_summary=r["reason_summary"] or "",
            )
            for r in conn.execute(query).mappings()
        ]
        owners = _distinct(conn, TierRow.owner, run.run_id)
        territories = _distinct(conn, TierRow.territory, run.run_id)
    return AccountPage(run.as_of, run.model_version, rows, total, page, pages, owners, territories)


def _distinct(conn: Any, column: Any, run_id: str) -> list[str]:
    query = (
        select(column)
        .where(TierRow.run_id == run_id, column.is_not(None))
        .distinct()
        .order_by(column)
        .limit(500)
    )
    return [str(v) for v in conn.execute(query).scalars()]


@dataclass(frozen=True)
class RepLoad:
    owner: str
    tier1: int
    tier2: int
    tier3: int
    up: int
    down: int
    expected_revenue: float


def rep_loads(store: HistoryStore, run_id: str) -> list[RepLoad]:
    """Per owner in one run: accounts per tier, moves up and down, expected revenue: one
    GROUP BY, whatever the list's size."""
    owner = func.coalesce(TierRow.owner, "(no owner)")

    def count(condition: ColumnElement[bool]) -> Any:
        return func.sum(case((condition, 1), else_=0))

    up = count(TierRow.tier < TierRow.previous_tier)
    down = count(TierRow.tier > TierRow.previous_tier)
    query = (
        select(
            owner.label("owner"),
            count(TierRow.tier == 1).label("t1"),
            count(TierRow.tier == 2).label("t2"),
            count(TierRow.tier == 3).label("t3"),
            up.label("up"),
            down.label("down"),
            func.sum(_figure("expected_revenue")).label("ev"),
        )
        .where(TierRow.run_id == run_id)
        .group_by(owner)
        .order_by(owner)
    )
    with store.engine.connect() as conn:
        return [
            RepLoad(
                owner=str(r["owner"]),
                tier1=int(r["t1"] or 0),
                tier2=int(r["t2"] or 0),
                tier3=int(r["t3"] or 0),
                up=int(r["up"] or 0),
                down=int(r["down"] or 0),
                expected_revenue=float(r["ev"] or 0.0),
            )
            for r in conn.execute(query).mappings()
        ]


@dataclass(frozen=True)
class TierRunFigures:
    as_of: dt.date
    tier: int
    accounts: int
    expected_revenue: float
    mean_p_convert: float


def tier_figures(store: HistoryStore, runs: int = 12) -> list[TierRunFigures]:
    """Per run and tier, the model's own figures (accounts, expected revenue, mean
    P(convert)) over the last ``runs`` runs."""
    with store.engine.connect() as conn:
        recent = [
            r
            for r in conn.execute(
                select(RunRow.run_id).order_by(RunRow.as_of.desc()).limit(runs)
            ).scalars()
        ]
        if not recent:
            return []
        query = (
            select(
                TierRow.as_of,
                TierRow.tier,
                func.count().label("n"),
                func.sum(_figure("expected_revenue")).label("ev"),
                func.avg(_figure("p_convert")).label("p"),
            )
            .where(TierRow.run_id.in_(recent))
            .group_by(TierRow.as_of, TierRow.tier)
            .order_by(TierRow.as_of, TierRow.tier)
        )
        return [
            TierRunFigures(
                as_of=r["as_of"],
                tier=int(r["tier"]),
                accounts=int(r["n"]),
                expected_revenue=float(r["ev"] or 0.0),
                mean_p_convert=float(r["p"] or 0.0),
            )
            for r in conn.execute(query).mappings()
        ]
