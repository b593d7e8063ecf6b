"""The tier history store: one record per batch run and one row per account per run.

SQLAlchemy 2 over any database it speaks: an embedded SQLite file beside the MLflow store by
default, a team's PostgreSQL by URL (``[history] url`` in the config, or the
``TIERING_HISTORY_URL`` environment variable, which wins). The schema is managed by the Alembic
migrations shipped in ``serving/migrations``; they run on first use, so a fresh database (or an
older schema) is brought up to date by whichever command touches it first.

A run is written in one transaction: its record and all its rows, after removing a run of the
same as-of date. A run that dies half-way (an error, a kill) leaves the history as it was; a
rerun of a date replaces it.

The typed columns are the ones queried (account, date, tiers, priority, owner, territory);
the model's figures ride in one JSON column, so the model can add or rename outputs without a
migration.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    create_engine,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

HISTORY_URL_ENV = "TIERING_HISTORY_URL"
VERSION_TABLE = "tiering_alembic_version"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Rows per INSERT statement: large enough to be fast, small enough for any driver's limits.
INSERT_CHUNK = 2_000


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "pk": "pk_%(table_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        }
    )


class RunRow(Base):
    """One batch run: when, with which model and policy, and what came out."""

    __tablename__ = "tiering_runs"

    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    as_of: Mapped[dt.date] = mapped_column(Date, unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    model_version: Mapped[str] = mapped_column(String(200))
    review: Mapped[bool] = mapped_column(Boolean)
    n_accounts: Mapped[int] = mapped_column(Integer)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The tier policy and the stability policy the run applied."""
    cutoffs: Mapped[dict[str, Any]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(40), default="batch")
    reasons_reused: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Accounts whose SHAP values came from the store (None: a run without reasons)."""
    reasons_explained: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Accounts explained afresh by TreeSHAP in this run."""


class TierRow(Base):
    """One account in one run."""

    __tablename__ = "tiering_tier_history"
    __table_args__ = (Index(None, "account_id", "as_of"),)

    run_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("tiering_runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    account_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    as_of: Mapped[dt.date] = mapped_column(Date)
    tier: Mapped[int] = mapped_column(SmallInteger)
    base_tier: Mapped[int] = mapped_column(SmallInteger)
    """The policy's tier before stability, elevation or override."""
    previous_tier: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    tier_since: Mapped[dt.date] = mapped_column(Date)
    ceiling: Mapped[int] = mapped_column(SmallInteger)
    """The best tier the gates (ICP fit, evidence) allowed."""
    priority: Mapped[float] = mapped_column(Float)
    owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    territory: Mapped[str | None] = mapped_column(String(200), nullable=True)
    change_code: Mapped[str] = mapped_column(String(40), default="")
    change_reason: Mapped[str] = mapped_column(Text, default="")
    reason_summary: Mapped[str] = mapped_column(Text, default="")
    model_version: Mapped[str] = mapped_column(String(200))
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The model's figures (win chance, expected value, ICP fit, ...), whatever it outputs."""
    drivers: Mapped[dict[str, float]] = mapped_column(JSON)
    """Each reason's contribution in points, by label: what "why did it change" diffs."""
    input_fingerprint: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """Digest of the row the models read (``Bundle.input_fingerprints``); None without
    reasons."""


class ContributionRow(Base):
    """The SHAP values an account was last explained with, and what they were computed
    from: one row per account, replaced when it is explained again. The values are a function
    of the models and the row alone, so one copy serves any later run that matches both; a
    copy per run would multiply the history's size for values nobody reads again."""

    __tablename__ = "tiering_contributions"

    account_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    explainer_key: Mapped[str] = mapped_column(String(32), index=True)
    """``Bundle.explainer_key`` of the models that computed them."""
    input_fingerprint: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[str] = mapped_column(String(32))
    """The run that computed them (no foreign key: they outlive a rerun of its date)."""
    contributions: Mapped[bytes] = mapped_column(LargeBinary)
    """Both models' values, features and bias, as float64 (``tiering.reuse.pack``)."""


ROW_COLUMNS = [c.name for c in TierRow.__table__.columns]
TYPED_COLUMNS = frozenset(ROW_COLUMNS) - {"figures", "drivers"}
CONTRIBUTION_COLUMNS = [c.name for c in ContributionRow.__table__.columns]


@dataclass(frozen=True)
class RunRecord:
    as_of: pd.Timestamp
    model_version: str
    review: bool
    n_accounts: int
    policy: dict[str, Any] = field(default_factory=dict)
    cutoffs: dict[str, Any] = field(default_factory=dict)
    source: str = "batch"
    reasons_reused: int | None = None
    reasons_explained: int | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


class HistoryError(ValueError):
    """The history store cannot be reached or written; the message says which and how to fix.
    A ValueError, so commands report it like any other bad input (no traceback)."""


def history_url(configured: str | None, mlflow_tracking_uri: str) -> str:
    """TIERING_HISTORY_URL, else the config's URL, else history.db beside a SQLite MLflow
    store (``mlruns/history.db`` when MLflow lives on a server)."""
    url = os.environ.get(HISTORY_URL_ENV) or configured
    if url:
        return url
    prefix = "sqlite:///"
    if mlflow_tracking_uri.startswith(prefix):
        folder = Path(mlflow_tracking_uri[len(prefix) :]).parent
    else:
        folder = Path("mlruns")
    return f"{prefix}{(folder / 'history.db').resolve()}"


class HistoryStore:
    """Reads and writes the tier history; migrates the schema on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._connect()
        return self._engine

    def _connect(self) -> Engine:
        if self.url.startswith("sqlite:///"):
            path = Path(self.url[len("sqlite:///") :])
            if str(path) not in ("", ":memory:"):
                path.parent.mkdir(parents=True, exist_ok=True)
        try:
            engine = create_engine(self.url)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise HistoryError(f"history store {self.shown()}: bad URL: {exc}") from exc
        try:
            migrate(engine)
        except SQLAlchemyError as exc:
            raise HistoryError(
                f"history store {self.shown()}: cannot open or migrate it ({exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0]}); check [history] url or {HISTORY_URL_ENV}"
            ) from exc
        return engine

    def shown(self) -> str:
        """The URL without its password."""
        from sqlalchemy.engine import make_url

        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:  # an unparsable URL is shown as given (it holds no parsable password)
            return self.url

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # ------------------------------------------------------------------------ writing
    def record_run(
        self,
        run: RunRecord,
        rows: pd.DataFrame | Iterable[pd.DataFrame],
        progress: Callable[[int], None] | None = None,
        contributions: Iterable[pd.DataFrame] = (),
    ) -> str:
        """Write a run and its rows in one transaction, replacing a run of the same date.

        ``rows``: one frame (or frames, e.g. chunks) with the typed columns of
        :class:`TierRow` but run_id, as_of and model_version (taken from ``run``), plus
        ``figures`` and ``drivers`` (dicts). ``contributions``: frames of the SHAP values
        explained in this run (the columns of :class:`ContributionRow` but run_id), which
        replace those stored for the same accounts."""
        frames = [rows] if isinstance(rows, pd.DataFrame) else rows
        as_of = run.as_of.date()
        try:
            self._write(run, frames, as_of, progress, contributions)
        except SQLAlchemyError as exc:
            raise HistoryError(
                f"history store {self.shown()}: the run of {as_of} was not written, nothing "
                f"changed ({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
            ) from exc
        return run.run_id

    def _write(
        self,
        run: RunRecord,
        frames: Iterable[pd.DataFrame],
        as_of: dt.date,
        progress: Callable[[int], None] | None,
        contributions: Iterable[pd.DataFrame] = (),
    ) -> None:
        done = 0
        with self.engine.begin() as conn:
            old = select(RunRow.run_id).where(RunRow.as_of == as_of).scalar_subquery()
            # Rows first: SQLite enforces no foreign keys (no cascade) unless told to.
            conn.execute(delete(TierRow).where(TierRow.run_id.in_(old)))
            conn.execute(delete(RunRow).where(RunRow.as_of == as_of))
            conn.execute(
                insert(RunRow).values(
                    run_id=run.run_id,
                    as_of=as_of,
                    created_at=run.created_at,
                    model_version=run.model_version,
                    review=run.review,
                    n_accounts=run.n_accounts,
                    policy=run.policy,
                    cutoffs=run.cutoffs,
                    source=run.source,
                    reasons_reused=run.reasons_reused,
                    reasons_explained=run.reasons_explained,
                )
            )
            for frame in frames:
                records = _records(frame, run, as_of)
                for start in range(0, len(records), INSERT_CHUNK):
                    conn.execute(insert(TierRow), records[start : start + INSERT_CHUNK])
                    done += len(records[start : start + INSERT_CHUNK])
                    if progress is not None:
                        progress(done)
            for frame in contributions:
                stored: list[dict[str, Any]] = [
                    {str(k): v for k, v in r.items()}
                    for r in frame.assign(run_id=run.run_id)[CONTRIBUTION_COLUMNS].to_dict(
                        "records"
                    )
                ]
                for start in range(0, len(stored), INSERT_CHUNK):
                    batch = stored[start : start + INSERT_CHUNK]
                    ids = [str(r["account_id"]) for r in batch]
                    conn.execute(delete(ContributionRow).where(ContributionRow.account_id.in_(ids)))
                    conn.execute(insert(ContributionRow), batch)

    # ------------------------------------------------------------------------ reading
    def runs(self) -> pd.DataFrame:
        """Every run, oldest first."""
        with self.engine.connect() as conn:
            result = conn.execute(select(RunRow).order_by(RunRow.as_of))
            frame = pd.DataFrame(result.mappings().all())
        if frame.empty:
            return pd.DataFrame(columns=[c.name for c in RunRow.__table__.columns])
        frame["as_of"] = pd.to_datetime(frame["as_of"])
        return frame

    def previous_run(self, before: pd.Timestamp) -> pd.Series | None:
        """The latest run strictly before ``before`` (a rerun of a date compares with the run
        before it, not with itself)."""
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(RunRow)
                    .where(RunRow.as_of < before.date())
                    .order_by(RunRow.as_of.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return None if row is None else pd.Series(dict(row))

    def last_review(self, before: pd.Timestamp) -> pd.Timestamp | None:
        with self.engine.connect() as conn:
            day = conn.execute(
                select(func.max(RunRow.as_of)).where(
                    RunRow.as_of < before.date(), RunRow.review.is_(True)
                )
            ).scalar()
        return None if day is None else pd.Timestamp(day)

    def rows(
        self,
        *,
        run_id: str | None = None,
        account_id: str | None = None,
        since: pd.Timestamp | None = None,
        columns: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Rows of the history, oldest first; ``figures`` and ``drivers`` stay dicts."""
        cols = list(columns) if columns is not None else ROW_COLUMNS
        unknown = sorted(set(cols) - set(ROW_COLUMNS))
        if unknown:
            raise ValueError(f"history columns: unknown {unknown} (known: {ROW_COLUMNS})")
        query = select(*(TierRow.__table__.c[c] for c in cols))
        if run_id is not None:
            query = query.where(TierRow.run_id == run_id)
        if account_id is not None:
            query = query.where(TierRow.account_id == str(account_id))
        if since is not None:
            query = query.where(TierRow.as_of >= since.date())
        query = query.order_by(TierRow.as_of, TierRow.account_id)
        with self.engine.connect() as conn:
            frame = pd.DataFrame(conn.execute(query).mappings().all(), columns=cols)
        for col in ("as_of", "tier_since"):
            if col in frame:
                frame[col] = pd.to_datetime(frame[col])
        return frame

    def account_history(self, account_id: str) -> pd.DataFrame:
        return self.rows(account_id=account_id)

    def contributions(self, explainer_key: str) -> dict[str, tuple[str, bytes]]:
        """The stored SHAP values computed by the models of ``explainer_key``: account id ->
        (input fingerprint, packed values)."""
        c = ContributionRow
        query = select(c.account_id, c.input_fingerprint, c.contributions).where(
            c.explainer_key == explainer_key
        )
        with self.engine.connect() as conn:
            return {str(a): (str(fp), bytes(v)) for a, fp, v in conn.execute(query)}


def _records(frame: pd.DataFrame, run: RunRecord, as_of: dt.date) -> list[dict[str, Any]]:
    missing = sorted({"account_id", "tier", "base_tier", "priority", "ceiling"} - set(frame))
    if missing:
        raise ValueError(f"history rows: missing columns {missing}")
    out = frame.assign(run_id=run.run_id, as_of=as_of, model_version=run.model_version)
    if "tier_since" not in out:
        out["tier_since"] = as_of
    else:
        out["tier_since"] = pd.to_datetime(out["tier_since"]).dt.date
    for col in ("figures", "drivers"):
        if col not in out:
            out[col] = pd.Series([{}] * len(out), index=out.index, dtype=object)
    keep = [c for c in ROW_COLUMNS if c in out]
    records: list[dict[str, Any]] = [
        {str(k): v for k, v in rec.items()} for rec in out[keep].to_dict("records")
    ]
    for rec in records:
        for key, value in rec.items():
            rec[key] = _plain(value)
    return records


def _plain(value: Any) -> Any:
    """Python scalars the database drivers accept (no numpy types, NaN as NULL)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if value is pd.NaT:
        return None
    return value


def migrate(engine: Engine) -> None:
    """Bring the schema up to the newest migration (a no-op when it is there already)."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
