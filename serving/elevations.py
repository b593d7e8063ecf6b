"""Elevations kept in the tier-history database (table ``tiering_elevations``, migration
0002): when each started, until when it lasts, the base tier and the signal, so a running
elevation holds its seat at later runs and its end is told in the history."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pandas as pd
from sqlalchemy import Date, Float, Integer, SmallInteger, String, Text, delete, insert, select
from sqlalchemy.orm import Mapped, mapped_column

from serving.history import Base, HistoryStore
from tiering.config import Config, ElevationConfig
from tiering.elevation import Elevation


class ElevationRow(Base):
    __tablename__ = "tiering_elevations"

    elevation_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(200), index=True)
    started_on: Mapped[dt.date] = mapped_column(Date)
    until: Mapped[dt.date] = mapped_column(Date)
    base_tier: Mapped[int] = mapped_column(SmallInteger)
    signal: Mapped[str] = mapped_column(Text)
    score: Mapped[float] = mapped_column(Float)


def _elevation(row: dict[str, object]) -> Elevation:
    return Elevation(
        account_id=str(row["account_id"]),
        started_on=pd.Timestamp(row["started_on"]),  # type: ignore[arg-type]
        until=pd.Timestamp(row["until"]),  # type: ignore[arg-type]
        base_tier=int(row["base_tier"]),  # type: ignore[call-overload]
        signal=str(row["signal"]),
        score=float(row["score"]),  # type: ignore[arg-type]
    )


def running_elevations(store: HistoryStore, as_of: dt.date) -> list[Elevation]:
    """Elevations started before ``as_of`` and lasting through it, one per account."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(ElevationRow)
            .where((ElevationRow.started_on < as_of) & (ElevationRow.until >= as_of))
            .order_by(ElevationRow.started_on)
        ).mappings()
        found = {str(r["account_id"]): _elevation(dict(r)) for r in rows}
    return list(found.values())


def ended_elevations(store: HistoryStore, since_as_of: dt.date, as_of: dt.date) -> dict[str, str]:
    """Elevations in force at the previous run that ended before ``as_of``: account -> text."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(ElevationRow).where(
                (ElevationRow.started_on <= since_as_of)
                & (ElevationRow.until >= since_as_of)
                & (ElevationRow.until < as_of)
            )
        ).mappings()
        return {
            str(r["account_id"]): (
                f"elevation ended on {r['until'].isoformat()} (base Tier {r['base_tier']}; "
                f"{r['signal']}); back at the tier the policy gives it"
            )
            for r in rows
        }


def record_elevations(store: HistoryStore, as_of: dt.date, started: Iterable[Elevation]) -> None:
    """Write this run's new elevations (a rerun of the date replaces those it started)."""
    with store.engine.begin() as conn:
        conn.execute(delete(ElevationRow).where(ElevationRow.started_on == as_of))
        rows = [
            {
                "account_id": e.account_id,
                "started_on": e.started_on.date(),
                "until": e.until.date(),
                "base_tier": e.base_tier,
                "signal": e.signal,
                "score": e.score,
            }
            for e in started
        ]
        if rows:
            conn.execute(insert(ElevationRow), rows)


def read_intent(config: ElevationConfig) -> pd.DataFrame | None:
    """The optional intent-signal table, mapped to account_id, date, topic, strength."""
    source = config.intent
    if source is None:
        return None
    from pathlib import Path

    path = Path(source.path)
    if not path.is_file():
        raise ValueError(f"elevation.intent: file not found: {path}")
    frame = (
        pd.read_parquet(path)
        if path.suffix.lower() in (".parquet", ".pq")
        else pd.read_csv(path, sep=source.delimiter, encoding=source.encoding)
    )
    frame = frame.rename(columns={e: c for c, e in source.columns.items()})
    missing = sorted({"account_id", "date", "strength"} - set(frame.columns))
    if missing:
        raise ValueError(
            f"elevation.intent ({path}): columns {missing} missing; map them under "
            "[elevation.intent.columns] (the file has: "
            f"{', '.join(map(str, frame.columns))})"
        )
    dates = pd.to_datetime(frame["date"], errors="coerce")
    bad = dates.isna()
    if bad.any():
        raise ValueError(
            f"elevation.intent ({path}).date: {int(bad.sum())} values are not dates "
            f"(e.g. {frame.loc[bad, 'date'].astype(str).head(3).tolist()})"
        )
    return frame.assign(date=dates)


def intent_signal_of(
    config: Config, activities: pd.DataFrame | None, account_ids: pd.Series, as_of: pd.Timestamp
) -> pd.DataFrame:
    """This run's signal per account from the activity table and the intent table."""
    from tiering.elevation import engagement_events, intent_signal

    events = engagement_events(activities, read_intent(config.elevation), config.elevation)
    return intent_signal(events, account_ids, as_of, config.elevation)
