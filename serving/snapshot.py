"""The account snapshot: the feature rows of every account as of the scoring date, written by
batch scoring (Parquet, with its date, model version and cold-start values in the file's
metadata) and read by the service to score accounts by id.

``SnapshotCache`` is how the service holds it: re-read when batch scoring replaces the file,
and when a new file is unreadable (truncated, garbage, half-copied) the last good snapshot
stays in use and the problem is reported, instead of every request failing.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.customers import is_customer_column

SNAPSHOT_METADATA_KEY = b"account_tiering"
logger = logging.getLogger("tiering.service")


class SnapshotError(ValueError):
    """A snapshot file that cannot be read as one."""


@dataclass(frozen=True)
class Snapshot:
    """The account feature rows the service scores accounts by id with."""

    features: pd.DataFrame
    """Indexed by account_id; columns as_of and the features."""
    as_of: pd.Timestamp
    model_version: str
    cold_start: dict[str, Any]
    """Feature values of an account with no known history or engagement as of ``as_of``."""

    @functools.cached_property
    def customer_block(self) -> tuple[list[str], np.ndarray]:
        """The customer columns (``cs_``) and their values as floats (rows as ``features``),
        converted once per snapshot instead of once per request."""
        names = [c for c in self.features.columns if is_customer_column(c)]
        values = (
            np.column_stack(
                [
                    pd.to_numeric(self.features[c], errors="coerce").to_numpy(dtype=float)
                    for c in names
                ]
            )
            if names
            else np.empty((len(self.features), 0))
        )
        return names, values


def write_snapshot(
    features: pd.DataFrame,
    path: Path,
    *,
    as_of: pd.Timestamp,
    model_version: str,
    cold_start: pd.DataFrame,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(features.reset_index(drop=True), preserve_index=False)
    cold = {
        k: (None if _is_missing(v) else v)
        for k, v in cold_start.drop(columns=["account_id", "as_of"], errors="ignore")
        .iloc[0]
        .items()
    }
    meta = {
        "as_of": as_of.date().isoformat(),
        "model_version": model_version,
        "cold_start": cold,
    }
    table = table.replace_schema_metadata(
        {
            **(table.schema.metadata or {}),
            SNAPSHOT_METADATA_KEY: json.dumps(meta, default=jsonable),
        }
    )
    pq.write_table(table, path)


def read_snapshot(path: Path) -> Snapshot:
    """Read an account snapshot written by :func:`score_accounts`."""
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise FileNotFoundError(f"no account snapshot at {path}: run `tiering score` first")
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(SNAPSHOT_METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path}: not an account snapshot written by `tiering score`")
    meta = json.loads(raw)
    frame = table.to_pandas()
    # Strings stay plain Python objects, as build_features returns them.
    for col in frame.columns:
        if isinstance(frame[col].dtype, pd.StringDtype):
            frame[col] = frame[col].astype(object).where(frame[col].notna(), np.nan)
    frame = frame.set_index(frame["account_id"].astype(str), drop=False)
    frame.index.name = None
    return Snapshot(
        features=frame,
        as_of=pd.Timestamp(meta["as_of"]),
        model_version=str(meta.get("model_version", "")),
        cold_start={k: (np.nan if v is None else v) for k, v in meta.get("cold_start", {}).items()},
    )


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def load_snapshot(path: Path) -> Snapshot:
    """``read_snapshot`` with every way a damaged file can fail turned into one
    ``SnapshotError`` naming the file (a missing file stays ``FileNotFoundError``)."""
    try:
        return read_snapshot(path)
    except FileNotFoundError:
        raise
    # A truncated or foreign file fails inside pyarrow, json or pandas in many ways; all of
    # them mean the same thing here.
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SnapshotError(f"account snapshot {path} is unreadable: {first[:200]}") from None


@dataclass(frozen=True)
class SnapshotStatus:
    as_of: str | None
    problem: str | None
    """Why the file on disk is not the one in use (None when it is)."""
    ever_loaded: bool


class SnapshotCache:
    """The snapshot in use, re-read when the file changes; the last good one survives a bad
    replacement. Thread-safe (the service scores in worker threads)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._good: Snapshot | None = None
        self._mtime: float | None = None
        self._problem: str | None = None
        self._lock = threading.Lock()

    def load(self) -> Snapshot | None:
        """First load, at startup: a damaged snapshot is an error (``SnapshotError``), a
        missing one is not (accounts are then scored from their own fields only)."""
        if self.path is None or not self.path.is_file():
            return None
        mtime = self.path.stat().st_mtime
        snapshot = load_snapshot(self.path)
        with self._lock:
            self._good, self._mtime, self._problem = snapshot, mtime, None
        return snapshot

    def current(self) -> Snapshot | None:
        if self.path is None:
            return None
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return self._good
        with self._lock:
            if mtime != self._mtime:
                self._mtime = mtime
                try:
                    self._good = load_snapshot(self.path)
                    self._problem = None
                except (SnapshotError, FileNotFoundError) as exc:
                    kept = (
                        f"kept the snapshot as of {self._good.as_of.date()} in use"
                        if self._good is not None
                        else "no snapshot in use"
                    )
                    self._problem = f"{exc}; {kept}"
                    logger.error("%s", self._problem)
            return self._good

    def status(self) -> SnapshotStatus:
        snapshot = self.current()
        return SnapshotStatus(
            as_of=None if snapshot is None else snapshot.as_of.date().isoformat(),
            problem=self._problem,
            ever_loaded=snapshot is not None,
        )

    @property
    def ready(self) -> bool:
        """Not ready only when a snapshot is configured, a file is there, and none was ever
        readable: the service cannot score accounts by id."""
        status = self.status()
        return status.ever_loaded or status.problem is None
