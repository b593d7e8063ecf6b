"""The data contract: read a CRM export, map it onto the canonical tables, clean the known
dirt (and say what was cleaned), then validate everything at once.

Reading is the only I/O (``read_export``); mapping and cleaning (``clean_table``) and
validation (``validate_tables``) are pure functions of DataFrames. ``load_tables`` composes
them and raises one ``DataContractError`` listing every problem in every table, so a user
fixes an export in one round instead of one error at a time. Nothing downstream runs (so
nothing is written) before validation has passed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow.compute as pc

from features.config import DataConfig, DealsSource, TableSource
from features.distinct import TEXT, Distinct, shared_encodings
from features.tables import (
    ACCOUNT_OPTIONAL,
    ACCOUNT_REQUIRED,
    ACTIVITY_OPTIONAL,
    ACTIVITY_REQUIRED,
    METRIC_REQUIRED,
    OPPORTUNITY_OPTIONAL,
    OPPORTUNITY_REQUIRED,
    OUTCOMES,
    SUBSCRIPTION_OPTIONAL,
    SUBSCRIPTION_REQUIRED,
    SUBSCRIPTION_STATUSES,
    Tables,
)
from features.values import NO_WORDS, YES_WORDS

MAX_EXAMPLES = 3
TABLE_NAMES = ("accounts", "opportunities", "activities")
CUSTOMER_TABLES = ("subscriptions", "usage", "tickets")
PARQUET_SUFFIXES = (".parquet", ".pq")
# The files of a partitioned export's table folder: part k of every table, same accounts.
PART_GLOB = "part-*.parquet"
DELIMITER_CANDIDATES = (",", ";", "\t", "|")
# Dates outside this span are typos (0201 for 2021) or sentinels (9999-12-31), not history.
EARLIEST_DATE = pd.Timestamp("1900-01-01")
LATEST_DATE = pd.Timestamp("2200-01-01")
# The yes/no words the model and the ICP read; digits stay numbers (a 0/1 column is a count
# as often as a flag, and the model and the ICP read 1/0 numbers as yes/no anyway).
TRUE_WORDS = frozenset(w for w in YES_WORDS if not w.isdigit())
FALSE_WORDS = frozenset(w for w in NO_WORDS if not w.isdigit())
# Currency signs and ISO codes around amounts ("$1,234.00", "EUR 65.300,00") carry no value.
CURRENCY = re.compile(
    r"[$€£¥₹¤]|^(?:USD|EUR|GBP|CHF|JPY|CAD|AUD|INR|CNY|BRL|MXN)\s*|"
    r"\s*(?:USD|EUR|GBP|CHF|JPY|CAD|AUD|INR|CNY|BRL|MXN)$"
)
# (decimal, thousands) pairs tried when numbers do not read, to propose the settings that do.
NUMBER_STYLES: tuple[tuple[str, str | None], ...] = (
    (".", ","),
    (",", "."),
    (",", " "),
    (".", "'"),
    (",", None),
    (".", None),
)
EXCEL = "excel"
# Excel's day 0 (its serial 60 is the non-existent 1900-02-29, so later serials count from here).
EXCEL_EPOCH = pd.Timestamp("1899-12-30")
# Formats tried on dates that do not parse, to propose a ``date_format`` that does.
DATE_FORMATS = (
    "ISO8601",
    "%d-%b-%y",
    "%d-%b-%Y",
    "%d %b %Y",
    "%d %b %y",
    "%b %d, %Y",
    "%m/%d/%Y",
    "%d/%m/%Y",
    "%m/%d/%y",
    "%d/%m/%y",
    "%d.%m.%Y",
    "%d.%m.%y",
    "%y-%m-%d",
    "%d-%m-%Y",
    "%m-%d-%Y",
    "%Y/%m/%d",
    "%Y%m%d",
    EXCEL,
)
MAX_FORMAT_PROBE = 2000


# ---------------------------------------------------------------------------------------------
# What the caller gets back
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleaningStep:
    """One kind of cleaning applied to one column: how many rows it changed, with examples."""

    step: str
    table: str
    column: str | None
    rows: int
    examples: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        examples = f" (e.g. {', '.join(self.examples)})" if self.examples else ""
        return f"{where}: {self.step}: {self.rows:,} rows{examples}"


@dataclass
class CleaningReport:
    """Every change made to the export on its way in; nothing is cleaned silently.

    ``notes`` say what the export lacks and what the models do about it (no amounts, no close
    dates, no firmographics, ...): the consequences a user reads before training."""

    steps: list[CleaningStep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(
        self, step: str, table: str, column: str | None, rows: int, examples: Sequence[str] = ()
    ) -> None:
        if rows > 0:
            self.steps.append(
                CleaningStep(step, table, column, int(rows), tuple(examples[:MAX_EXAMPLES]))
            )

    def extend(self, other: CleaningReport) -> None:
        self.steps.extend(other.steps)
        self.notes.extend(other.notes)

    def rows(
        self, step: str | None = None, table: str | None = None, column: str | None = None
    ) -> int:
        """Rows touched by the matching steps (``step`` matches as a prefix)."""
        return sum(
            s.rows
            for s in self.steps
            if (step is None or s.step.startswith(step))
            and (table is None or s.table == table)
            and (column is None or s.column == column)
        )

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "table": s.table,
                    "column": s.column or "",
                    "step": s.step,
                    "rows": s.rows,
                    "examples": ", ".join(s.examples),
                }
                for s in self.steps
            ],
            columns=["table", "column", "step", "rows", "examples"],
        )

    def __iter__(self) -> Iterator[CleaningStep]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class Problem:
    """One broken rule: where (table, column), which rule, how many rows, a few examples."""

    table: str
    column: str | None
    rule: str
    count: int | None = None
    examples: tuple[str, ...] = ()
    part: str | None = None
    """The part of a partitioned export the rows are in (``part-00003``), if any."""

    def __str__(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        if self.part is not None:
            where = f"{where} in {self.part}"
        count = f"{self.count:,} " if self.count is not None else ""
        examples = f" (e.g. {', '.join(self.examples)})" if self.examples else ""
        return f"{where}: {count}{self.rule}{examples}"


class DataContractError(ValueError):
    """The export breaks the data contract; ``problems`` lists every broken rule."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(
            f"the data breaks the contract ({n} problem{'s' if n != 1 else ''}):\n{lines}"
        )

    def __reduce__(self) -> tuple[type[DataContractError], tuple[list[Problem]]]:
        # Raised on a Dask worker, it travels pickled: rebuild it from its problems.
        return (DataContractError, (self.problems,))


@dataclass(frozen=True)
class LoadResult:
    tables: Tables
    report: CleaningReport


# ---------------------------------------------------------------------------------------------
# Per-table knowledge: which columns are ids, dates, numbers, labels
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableSpec:
    required: tuple[str, ...]
    optional: tuple[str, ...]
    id_columns: tuple[str, ...]
    dates: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()
    # Labels are case-folded (canonical values are lower-case): outcome, industry, type.
    labels: tuple[str, ...] = ()
    # Free categories keep their spelling, but case/spacing variants collapse to the commonest.
    categories: tuple[str, ...] = ()
    # Extra export columns become numbers or booleans when every value reads as one.
    infer_extra_types: bool = False

    @property
    def known(self) -> tuple[str, ...]:
        return self.required + self.optional


SPECS: dict[str, TableSpec] = {
    "accounts": TableSpec(
        required=ACCOUNT_REQUIRED,
        optional=ACCOUNT_OPTIONAL,
        id_columns=("account_id",),
        numbers=("employees", "annual_revenue", "founded_year"),
        labels=("industry",),
        categories=("country", "region", "territory", "owner"),
        infer_extra_types=True,
    ),
    "opportunities": TableSpec(
        required=OPPORTUNITY_REQUIRED,
        optional=OPPORTUNITY_OPTIONAL,
        id_columns=("opportunity_id", "account_id"),
        dates=("created_at", "closed_at"),
        numbers=("amount",),
        labels=("outcome",),
        categories=("product", "source"),
    ),
    "activities": TableSpec(
        required=ACTIVITY_REQUIRED,
        optional=ACTIVITY_OPTIONAL,
        id_columns=("account_id",),
        dates=("occurred_at",),
        numbers=("count",),
        labels=("type",),
        categories=("topic",),
    ),
    "subscriptions": TableSpec(
        required=SUBSCRIPTION_REQUIRED,
        optional=SUBSCRIPTION_OPTIONAL,
        id_columns=("account_id",),
        dates=("start", "end"),
        numbers=("recurring_revenue",),
        labels=("status",),
        categories=("product",),
    ),
    "usage": TableSpec(
        required=METRIC_REQUIRED,
        optional=(),
        id_columns=("account_id",),
        dates=("date",),
        numbers=("value",),
        labels=("metric",),
    ),
}
SPECS["tickets"] = SPECS["usage"]
# A flat deal export is cleaned as one table before its accounts are derived from it.
SPECS["deals"] = TableSpec(
    required=("created_at", "outcome"),
    optional=tuple(
        dict.fromkeys(("opportunity_id", "account_id") + OPPORTUNITY_OPTIONAL + ACCOUNT_OPTIONAL)
    ),
    id_columns=("opportunity_id", "account_id"),
    dates=SPECS["opportunities"].dates,
    numbers=SPECS["opportunities"].numbers + SPECS["accounts"].numbers,
    labels=SPECS["opportunities"].labels + SPECS["accounts"].labels,
    categories=SPECS["opportunities"].categories + SPECS["accounts"].categories,
    infer_extra_types=True,
)
# Deal ids are generated from the row's content when the export has none.
GENERATED_IDS = {"opportunities": "opportunity_id", "deals": "opportunity_id"}


def _string(required: bool = False, **kwargs: object) -> pa.Column:
    return pa.Column(str, nullable=True, required=required, **kwargs)  # type: ignore[arg-type]


def _date(required: bool = False, nullable: bool = True) -> pa.Column:
    return pa.Column("datetime64[ns]", nullable=nullable, required=required)


ACCOUNTS_SCHEMA = pa.DataFrameSchema(
    {
        "account_id": pa.Column(str, nullable=False, unique=True),
        "industry": _string(),
        "employees": pa.Column(float, pa.Check.ge(0), nullable=True, required=False),
        "annual_revenue": pa.Column(float, pa.Check.ge(0), nullable=True, required=False),
        "name": _string(),
        "country": _string(),
        "region": _string(),
        "territory": _string(),
        "owner": _string(),
        "founded_year": pa.Column(
            float, pa.Check.in_range(1600, 2100), nullable=True, required=False
        ),
    },
    strict=False,
    name="accounts",
)

OPPORTUNITIES_SCHEMA = pa.DataFrameSchema(
    {
        "opportunity_id": pa.Column(str, nullable=False, unique=True),
        "account_id": pa.Column(str, nullable=False),
        "created_at": _date(required=True, nullable=False),
        "closed_at": _date(),
        "outcome": pa.Column(str, pa.Check.isin(list(OUTCOMES)), nullable=False),
        "amount": pa.Column(float, pa.Check.ge(0), nullable=True, required=False),
        "product": _string(),
        "source": _string(),
    },
    # closed_at >= created_at is checked by ``_closed_before_created``: one line per export.
    strict=False,
    name="opportunities",
)

ACTIVITIES_SCHEMA = pa.DataFrameSchema(
    {
        "account_id": pa.Column(str, nullable=False),
        "occurred_at": _date(required=True, nullable=False),
        "type": pa.Column(str, nullable=False),
        "topic": _string(),
        "count": pa.Column("int64", pa.Check.ge(0), nullable=False, required=False),
    },
    strict=False,
    name="activities",
)

SUBSCRIPTIONS_SCHEMA = pa.DataFrameSchema(
    {
        "account_id": pa.Column(str, nullable=False),
        "start": _date(required=True, nullable=False),
        "end": _date(),
        "recurring_revenue": pa.Column(float, pa.Check.ge(0), nullable=False),
        "product": _string(),
        "status": pa.Column(
            str, pa.Check.isin(list(SUBSCRIPTION_STATUSES)), nullable=True, required=False
        ),
    },
    strict=False,
    name="subscriptions",
)


def _metric_schema(name: str) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            "account_id": pa.Column(str, nullable=False),
            "date": _date(required=True, nullable=False),
            "metric": pa.Column(str, nullable=False),
            "value": pa.Column(float, nullable=False),
        },
        strict=False,
        name=name,
    )


SCHEMAS = {
    "accounts": ACCOUNTS_SCHEMA,
    "opportunities": OPPORTUNITIES_SCHEMA,
    "activities": ACTIVITIES_SCHEMA,
    "subscriptions": SUBSCRIPTIONS_SCHEMA,
    "usage": _metric_schema("usage"),
    "tickets": _metric_schema("tickets"),
}


# ---------------------------------------------------------------------------------------------
# Reading (the only I/O)
# ---------------------------------------------------------------------------------------------


def read_export(table: str, source: TableSource) -> tuple[pd.DataFrame | None, list[Problem]]:
    """Read one exported file as it is (CSV values as strings, so ids keep leading zeros)."""
    path = Path(source.path)
    if not path.exists():
        return None, [Problem(table, None, f"file not found: {path}")]
    if path.is_dir():
        return _read_parts(table, path)
    if path.stat().st_size == 0:
        return None, [Problem(table, None, f"file is empty: {path}")]
    is_parquet = path.suffix.lower() in PARQUET_SUFFIXES
    encoding = _python_encoding(source.encoding)
    if encoding is None:
        return None, [
            Problem(
                table,
                None,
                f"unknown encoding {source.encoding!r} (config 'encoding' under [data.{table}]; "
                "e.g. 'utf-8', 'latin-1', 'cp1252')",
            )
        ]
    if not is_parquet:
        # A header without the configured delimiter but with another one: the wrong delimiter
        # (checked before parsing, since the body may then split into ragged rows).
        with path.open(encoding=encoding, errors="replace") as handle:
            header = handle.readline().rstrip("\r\n")
        if header and source.delimiter not in header:
            others = [d for d in DELIMITER_CANDIDATES if d != source.delimiter and d in header]
            if others:
                return None, [_one_column_problem(table, source, header)]
    try:
        if is_parquet:
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(
                path, sep=source.delimiter, dtype=str, encoding=encoding, skipinitialspace=False
            )
    except pd.errors.EmptyDataError:
        return None, [Problem(table, None, f"file is empty: {path}")]
    except UnicodeDecodeError as exc:
        return None, [_encoding_problem(table, source, path, exc)]
    except (pd.errors.ParserError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, [Problem(table, None, f"cannot be read ({reason}): {path}")]
    if frame.shape[1] == 1 and len(SPECS[table].required) > 1:
        return None, [_one_column_problem(table, source, str(frame.columns[0]))]
    if frame.empty:
        return None, [Problem(table, None, f"file has a header but no rows: {path}")]
    return frame, []


def _read_parts(table: str, path: Path) -> tuple[pd.DataFrame | None, list[Problem]]:
    """A partitioned table read whole, its parts in order (see :func:`export_parts`)."""
    import pyarrow.parquet as pq

    files = sorted(path.glob(PART_GLOB))
    if not files:
        return None, [
            Problem(table, None, f"folder has no {PART_GLOB} files (a partitioned export): {path}")
        ]
    try:
        frame = pq.ParquetDataset(files).read().to_pandas()
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, [Problem(table, None, f"cannot be read ({reason}): {path}")]
    if frame.empty:
        return None, [Problem(table, None, f"parts have no rows: {path}")]
    return frame, []


def _python_encoding(name: str) -> str | None:
    """The codec to read with; UTF-8 also drops a byte-order mark. None: no such codec."""
    import codecs

    try:
        codec = codecs.lookup(name).name
    except LookupError:
        return None
    return "utf-8-sig" if codec == "utf-8" else name


def _encoding_problem(
    table: str, source: TableSource, path: Path, exc: UnicodeDecodeError
) -> Problem:
    sample = path.read_bytes()[: 1 << 20]
    guess = "cp1252"
    try:
        sample.decode(guess)
    except UnicodeDecodeError:
        guess = "latin-1"
    return Problem(
        table,
        None,
        f"cannot be read as {source.encoding} (byte {exc.object[exc.start : exc.start + 1]!r} at "
        f"position {exc.start:,} is not {source.encoding}); set encoding = {guess!r} (or the "
        f"file's encoding) under [data.{table}] in the config: {path}",
    )


def _one_column_problem(table: str, source: TableSource, header: str) -> Problem:
    counts = {d: header.count(d) for d in DELIMITER_CANDIDATES if d != source.delimiter}
    likely = max(counts, key=lambda d: counts[d]) if counts and max(counts.values()) else None
    shown = header if len(header) <= 60 else header[:57] + "..."
    hint = (
        f"looks like the delimiter is {likely!r}, config says {source.delimiter!r}"
        if likely
        else f"check the delimiter (config says {source.delimiter!r})"
    )
    return Problem(
        table, None, f"wrong delimiter: the header reads as one column {shown!r}; {hint}"
    )


# ---------------------------------------------------------------------------------------------
# Mapping and cleaning (pure)
# ---------------------------------------------------------------------------------------------


def _pairs_of(before: np.ndarray, after: np.ndarray, changed: np.ndarray) -> list[str]:
    """The first few distinct 'before -> after' changes, in order of first appearance."""
    seen: dict[tuple[object, object], None] = {}
    for b, a in zip(before[changed], after[changed], strict=True):
        seen.setdefault((b, "" if a is None or a != a else a), None)
        if len(seen) == MAX_EXAMPLES:
            break
    return [f"{b!r} -> {a!r}" for b, a in seen]


def _per_value(values: pd.Series, transform: Callable[[pd.Series], pd.Series]) -> pd.Series:
    """Apply a string transform once per distinct value: exports repeat few labels many times."""
    distinct = Distinct.of(values)
    done = np.asarray(transform(pd.Series(distinct.values, dtype=object)), dtype=object)
    if values.dtype == TEXT and not (distinct.values != done).any():
        return values
    return distinct.column(done)


WHITESPACE = re.compile(r"\s+")


def _fold_values(values: np.ndarray) -> np.ndarray:
    """Label keys of distinct values: case-folded, runs of whitespace as one space."""
    return np.array([WHITESPACE.sub(" ", v.casefold()) for v in values], dtype=object)


def _fold(values: pd.Series) -> pd.Series:
    """Label key for comparisons: case-folded with runs of whitespace as one space."""
    distinct = Distinct.of(values)
    return distinct.column(_fold_values(distinct.values))


def _looked_up(values: np.ndarray, table: dict[str, str], keep: bool) -> np.ndarray:
    """Values found in ``table`` replaced; others kept (``keep``) or missing."""
    return np.array([table.get(v, v if keep else np.nan) for v in values], dtype=object)


def _quote(values: pd.Series) -> list[str]:
    unique = pd.unique(values.dropna())[:MAX_EXAMPLES]
    return [repr(v.item() if isinstance(v, np.generic) else v) for v in unique]


def _examples(values: pd.Series) -> tuple[str, ...]:
    return tuple(_quote(values.astype(str)))


def _is_text(values: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(values) or values.dtype == object


def _as_text(values: pd.Series) -> pd.Series:
    """Strings with NaN for missing; integral floats (Parquet ids) lose their '.0'."""
    if pd.api.types.is_float_dtype(values):
        whole = values.dropna()
        if len(whole) and (whole == np.floor(whole)).all():
            values = values.astype("Int64")
    if not _is_text(values) or values.dtype == object:
        values = values.astype(object).where(values.notna(), np.nan)
        values = values.map(lambda v: v if isinstance(v, float) and np.isnan(v) else str(v))
    return values.astype(pd.StringDtype(na_value=np.nan))


def map_columns(
    frame: pd.DataFrame, table: str, source: TableSource
) -> tuple[pd.DataFrame, list[Problem]]:
    """Rename export columns to canonical ones; one export column may feed two (id and name)."""
    problems = []
    missing = {c: e for c, e in source.columns.items() if e not in frame.columns}
    for canonical, export in missing.items():
        rule = (
            "required column missing"
            if canonical in SPECS[table].required
            else "mapped column missing"
        )
        problems.append(
            Problem(
                table,
                canonical,
                f"{rule} (config maps it to {export!r}, which the file lacks; "
                f"the file has: {_column_list(frame)})",
            )
        )
    present = {c: e for c, e in source.columns.items() if c not in missing}
    mapped = {canonical: frame[export] for canonical, export in present.items()}
    # Export columns taken by a mapping leave under their canonical name; a canonical name that
    # the export also uses for something else is shadowed by the explicit mapping.
    rest = frame.drop(columns=[c for c in frame.columns if c in present.values() or c in mapped])
    out = pd.concat([pd.DataFrame(mapped, index=frame.index), rest], axis=1)
    return out, problems


@dataclass
class CleanedTable:
    """One table after mapping and cleaning.

    ``unparsed`` marks, per date or number column, the rows whose value could not be read
    (aligned with ``frame``): they are reported once as unparseable, never again as empty.
    """

    frame: pd.DataFrame
    report: CleaningReport
    problems: list[Problem]
    unparsed: pd.DataFrame


def clean_table(frame: pd.DataFrame, table: str, source: TableSource) -> CleanedTable:
    """Map one exported table onto its canonical form, counting every change.

    Returns the cleaned frame, what was cleaned, and the values that cannot be made valid
    (unparseable numbers and dates, config entries naming unknown columns). Rule checks on
    the cleaned values are ``validate_tables``' job.
    """
    spec = SPECS[table]
    report = CleaningReport()
    frame, problems = map_columns(frame, table, source)
    frame = frame.copy()
    for key, entries in (
        ("labels", source.labels),
        ("fixes", source.fixes),
        ("scale", source.scale),
        ("drop_if_missing", dict.fromkeys(source.drop_if_missing)),
    ):
        for column in entries:
            if column not in frame.columns and not (
                isinstance(source, DealsSource) and column == "account_id"
            ):
                problems.append(
                    Problem(table, column, f"config '{key}' names a column the table does not have")
                )

    for column in [c for c in spec.id_columns if c in frame.columns]:
        frame[column] = _as_text(frame[column])
    for column in frame.columns:
        if _is_text(frame[column]):
            frame[column] = _trim(frame[column], table, column, report)

    label_columns = [c for c in frame.columns if c in spec.labels or c in source.labels]
    for column in label_columns:
        frame[column] = _map_labels(
            _as_text(frame[column]), table, column, source.labels.get(column, {}), report
        )
    for column in [c for c in spec.categories if c in frame.columns]:
        frame[column] = _unify_case(_as_text(frame[column]), table, column, report)
    for column, fixes in source.fixes.items():
        if column in frame.columns:
            frame[column] = _fix(
                _as_text(frame[column]), table, column, fixes, column in label_columns, report
            )

    unparsed = pd.DataFrame(index=frame.index)
    for column in [c for c in spec.numbers if c in frame.columns]:
        before = frame[column]
        frame[column], bad = _parse_number(
            before, table, column, report, source.decimal, source.thousands
        )
        if bad.any():
            unparsed[column] = bad
            problems.append(_number_problem(table, column, before, bad, source))
    for column, factor in source.scale.items():
        if column not in frame.columns:
            continue
        if not pd.api.types.is_numeric_dtype(frame[column]):
            problems.append(Problem(table, column, "config 'scale' names a column of text"))
            continue
        frame[column] = frame[column] * factor
        report.add("scaled", table, column, int(frame[column].notna().sum()), [_factor(factor)])
    for column in [c for c in spec.dates if c in frame.columns]:
        before = frame[column]
        frame[column], bad = _parse_date(before, source.date_format)
        if bad.any():
            unparsed[column] = bad
            problems.append(_date_problem(table, column, before, bad, source.date_format))
    if spec.infer_extra_types:
        for column in [c for c in frame.columns if c not in spec.known]:
            frame[column] = _infer_type(frame[column], table, column, report, source)
    for column in frame.columns:
        if column not in spec.dates and column not in spec.numbers and _is_text(frame[column]):
            frame[column] = _as_text(frame[column])
    if "amount" in frame.columns and "outcome" in frame.columns:
        frame["amount"] = _unknown_nonpositive_amounts(frame, table, report)
    if isinstance(source, DealsSource):
        frame, key_problems = _derive_account_id(frame, source, report)
        problems.extend(key_problems)

    for column in [c for c in source.drop_if_missing if c in frame.columns]:
        empty = frame[column].isna()
        report.add(f"dropped rows with empty {column}", table, column, int(empty.sum()))
        frame = frame.loc[~empty]
    frame = _drop_duplicates(frame, table, report)
    id_column = GENERATED_IDS.get(table)
    if id_column is not None and id_column not in frame.columns and id_column not in source.columns:
        frame.insert(0, id_column, _content_ids(frame))
        report.add(
            "generated ids from each row's content (the export has none; same row, same id)",
            table,
            id_column,
            len(frame),
            _quote(frame[id_column]),
        )

    if table == "activities":
        if "count" not in frame.columns:
            frame["count"] = 1
        else:
            empty = frame["count"].isna()
            report.add("filled empty count with 1", table, "count", int(empty.sum()))
            counts = frame["count"].fillna(1)
            fractional = counts != np.floor(counts)
            if fractional.any():
                problems.append(
                    Problem(
                        table,
                        "count",
                        "counts are not whole numbers",
                        int(fractional.sum()),
                        tuple(_quote(counts[fractional])),
                    )
                )
            else:
                frame["count"] = counts.astype("int64")
    if frame.empty:
        problems.append(Problem(table, None, "no rows left after cleaning (see drop_if_missing)"))
    ordered = [c for c in spec.known if c in frame.columns]
    frame = frame[ordered + [c for c in frame.columns if c not in ordered]]
    unparsed = unparsed.reindex(frame.index, fill_value=False).reset_index(drop=True)
    return CleanedTable(frame.reset_index(drop=True), report, problems, unparsed)


def _drop_duplicates(frame: pd.DataFrame, table: str, report: CleaningReport) -> pd.DataFrame:
    """Exact duplicates judged on the content, deal ids aside: an export whose ids were added
    row by row (or generated) would otherwise hide copies of the same deal behind new ids."""
    id_column = GENERATED_IDS.get(table)
    content = [c for c in frame.columns if c != id_column]
    duplicated = pd.Series(_duplicated(frame, content or list(frame.columns)), index=frame.index)
    if not duplicated.any():
        return frame
    spec = SPECS[table]
    example_column = next((c for c in spec.id_columns if c in frame), frame.columns[0])
    step = (
        "dropped exact duplicate rows (same content; ids aside)"
        if id_column is not None
        else "dropped exact duplicate rows"
    )
    report.add(
        step, table, None, int(duplicated.sum()), _quote(frame.loc[duplicated, example_column])
    )
    return frame.loc[~duplicated]


def _duplicated(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Rows equal to an earlier row on ``columns`` (missing equals missing), as
    ``DataFrame.duplicated`` has it: each column becomes codes of its distinct values, the
    codes one number per row."""
    row = np.zeros(len(frame), dtype=np.int64)
    size = 1
    for column in columns:
        values = frame[column]
        if _is_text(values) and values.dtype != object:
            distinct = Distinct.of(values)
            codes, n = distinct.codes, len(distinct.values)
        else:
            codes, found = pd.factorize(values, use_na_sentinel=True)
            n = len(found)
        if size * (n + 1) >= 2**62:  # renumber the rows seen so far, to stay in int64
            compact, seen = pd.factorize(row)
            row, size = compact.astype(np.int64), len(seen)
        # In place: a table of millions of rows would otherwise allocate three temporaries of
        # its length per column.
        np.multiply(row, n + 1, out=row)
        row += codes
        row += 1
        size *= n + 1
    ordered = np.sort(row)  # a sort tells "no copies" (the usual case) faster than a hash
    if not (ordered[1:] == ordered[:-1]).any():
        return np.zeros(len(row), dtype=bool)
    return pd.Index(row).duplicated()


def _content_ids(frame: pd.DataFrame) -> pd.Series:
    """A stable id per row: a hash of its cleaned values, so re-reading the same export (or a
    later one holding the same deal) gives the same id."""
    columns = [
        (f"{name}=" + frame[name].astype(str).where(frame[name].notna(), "")).astype(str)
        for name in frame.columns
    ]
    joined = columns[0] if columns else pd.Series("", index=frame.index)
    if len(columns) > 1:
        joined = joined.str.cat(pd.concat(columns[1:], axis=1), sep="\x1f")
    ids = [f"D-{hashlib.sha1(v.encode('utf-8')).hexdigest()[:12]}" for v in joined]
    return pd.Series(ids, index=frame.index, dtype=pd.StringDtype(na_value=np.nan))


def _unknown_nonpositive_amounts(
    frame: pd.DataFrame, table: str, report: CleaningReport
) -> pd.Series:
    """A won deal booked at zero or below says nothing about what the account spends (and has
    no logarithm); a negative amount on a lost or open deal is a credit note, not a deal. Both
    become unknown amounts, reported."""
    amount = frame["amount"]
    won = frame["outcome"] == "won"
    zero_won = (won & (amount <= 0)).fillna(False).astype(bool)
    negative = (~won & (amount < 0)).fillna(False).astype(bool)
    id_column = "opportunity_id" if "opportunity_id" in frame else "amount"
    report.add(
        "won deals with a zero or negative amount: amount set to unknown (left out of the "
        "deal-value model and its figures)",
        table,
        "amount",
        int(zero_won.sum()),
        _quote(frame.loc[zero_won, id_column]),
    )
    report.add(
        "negative amounts on lost or open deals: set to unknown",
        table,
        "amount",
        int(negative.sum()),
        _quote(frame.loc[negative, id_column]),
    )
    return amount.where(~(zero_won | negative))


def _resolve(name: str, source: TableSource) -> str:
    """A column named in the config as the file has it or as ``columns`` maps it."""
    if name in source.columns:
        return name
    mapped = {export: canonical for canonical, export in source.columns.items()}
    return mapped.get(name, name)


KEY_SEPARATOR = " | "


def _derive_account_id(
    frame: pd.DataFrame, source: DealsSource, report: CleaningReport
) -> tuple[pd.DataFrame, list[Problem]]:
    """account_id from the configured key: one column as it is, several joined."""
    key = [_resolve(k, source) for k in source.account_key]
    missing = [k for k in key if k not in frame.columns]
    if missing:
        return frame, [
            Problem(
                "deals",
                name,
                f"account_key column missing (the file has: {_column_list(frame)}; name the "
                "column(s) that identify an account in account_key under [data.deals])",
            )
            for name in missing
        ]
    if key == ["account_id"]:
        return frame, []
    parts = [_as_text(frame[k]) for k in key]
    joined = parts[0].fillna("")
    for part in parts[1:]:
        joined = joined + KEY_SEPARATOR + part.fillna("")
    all_empty = pd.concat([p.isna() for p in parts], axis=1).all(axis=1)
    frame = frame.copy()
    frame["account_id"] = joined.where(~all_empty, np.nan).astype(pd.StringDtype(na_value=np.nan))
    return frame, []


def _factor(factor: float) -> str:
    return f"x {factor:,.0f}" if float(factor).is_integer() else f"x {factor:g}"


def _trim(values: pd.Series, table: str, column: str, report: CleaningReport) -> pd.Series:
    text = _as_text(values)
    distinct = Distinct.of(text)
    stripped = np.array([v.strip() for v in distinct.values], dtype=object)
    trimmed = np.where(stripped == "", np.nan, stripped)
    changed = distinct.values != trimmed
    report.add(
        "trimmed spaces",
        table,
        column,
        distinct.rows(changed),
        _pairs_of(distinct.values, trimmed, changed),
    )
    return distinct.column(trimmed) if changed.any() else text


def _map_labels(
    values: pd.Series,
    table: str,
    column: str,
    labels: dict[str, str],
    report: CleaningReport,
) -> pd.Series:
    distinct = Distinct.of(values)
    folded = _fold_values(distinct.values)
    changed = distinct.values != folded
    report.add(
        "case-folded labels",
        table,
        column,
        distinct.rows(changed),
        _pairs_of(distinct.values, folded, changed),
    )
    lookup = {" ".join(k.casefold().split()): v for k, v in labels.items()}
    mapped = _looked_up(folded, lookup, keep=True)
    changed = folded != mapped
    report.add(
        "mapped labels", table, column, distinct.rows(changed), _pairs_of(folded, mapped, changed)
    )
    if column == "outcome":
        # An unknown outcome keeps its export spelling so the error shows the user's label.
        unknown = np.array([v not in OUTCOMES for v in mapped], dtype=bool)
        mapped = np.where(unknown, distinct.values, mapped)
    if values.dtype == TEXT and not (distinct.values != mapped).any():
        return values
    return distinct.column(mapped)


def _unify_case(values: pd.Series, table: str, column: str, report: CleaningReport) -> pd.Series:
    distinct = Distinct.of(values)
    if not len(distinct.values):
        return values
    # The commonest spelling wins; on a tie, a mixed-case one ("Germany" over "GERMANY"),
    # then the first seen (distinct values are in order of first appearance).
    spellings = pd.DataFrame(
        {
            "key": _fold_values(distinct.values),
            "value": distinct.values,
            "n": distinct.counts,
            "first": np.arange(len(distinct.values)),
            "mixed": [v not in (v.upper(), v.lower()) for v in distinct.values],
        }
    )
    commonest = (
        spellings.sort_values(
            ["key", "n", "mixed", "first"], ascending=[True, False, False, True], kind="stable"
        )
        .drop_duplicates("key")
        .set_index("key")["value"]
    )
    unified = spellings["key"].map(commonest).to_numpy(dtype=object)
    changed = distinct.values != unified
    report.add(
        "unified case and spacing variants",
        table,
        column,
        distinct.rows(changed),
        _pairs_of(distinct.values, unified, changed),
    )
    return distinct.column(unified) if changed.any() else values


def _fix(
    values: pd.Series,
    table: str,
    column: str,
    fixes: dict[str, str],
    is_label: bool,
    report: CleaningReport,
) -> pd.Series:
    lookup = {
        " ".join(k.casefold().split()): (" ".join(v.casefold().split()) if is_label else v)
        for k, v in fixes.items()
    }
    distinct = Distinct.of(values)
    fixed = _looked_up(_fold_values(distinct.values), lookup, keep=False)
    fixed = np.where(pd.isna(fixed), distinct.values, fixed)
    changed = distinct.values != fixed
    report.add(
        "fixed values",
        table,
        column,
        distinct.rows(changed),
        _pairs_of(distinct.values, fixed, changed),
    )
    return distinct.column(fixed)


def _thousands(decimal: str, thousands: str | None) -> str | None:
    return thousands if thousands is not None else ("," if decimal == "." else None)


def _read_numbers(
    text: pd.Series, decimal: str, thousands: str | None
) -> tuple[pd.Series, pd.Series]:
    """Numbers written with the given marks; returns the floats (NaN where unreadable) and
    the rows that had thousands separators."""
    sep = _thousands(decimal, thousands)
    d = re.escape(decimal)
    plain = text.str.fullmatch(rf"[+-]?(?:\d+(?:{d}\d*)?|{d}\d+)").fillna(False).astype(bool)
    grouped = pd.Series(False, index=text.index)
    if sep is not None:
        t = re.escape(sep)
        grouped = (
            text.str.fullmatch(rf"[+-]?\d{{1,3}}(?:{t}\d{{3}})+(?:{d}\d+)?")
            .fillna(False)
            .astype(bool)
        )
    normal = text.where(~grouped, text.str.replace(sep or "", "", regex=False))
    normal = normal.where(~(plain | grouped), normal.str.replace(decimal, ".", regex=False))
    if decimal != ".":
        # Anything else (1e5, .5) would read with the wrong decimal mark: not a number here.
        normal = normal.where(plain | grouped, np.nan)
    numbers = pd.to_numeric(normal, errors="coerce").astype(float)
    return numbers, grouped & numbers.notna()


def _parse_number(
    values: pd.Series,
    table: str,
    column: str,
    report: CleaningReport,
    decimal: str = ".",
    thousands: str | None = None,
) -> tuple[pd.Series, pd.Series]:
    """Numbers as float: currency signs and thousands separators are removed (reported), the
    decimal mark is the configured one."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype(float), pd.Series(False, index=values.index)
    if pd.api.types.is_numeric_dtype(values):
        return values.astype(float), pd.Series(False, index=values.index)
    text = _as_text(values)
    # Non-breaking and narrow spaces are how many locales group thousands.
    text = _per_value(text, lambda v: v.str.replace("\u00a0", " ").str.replace("\u202f", " "))
    bare = _per_value(text, lambda v: v.str.replace(CURRENCY, "", regex=True).str.strip())
    stripped = text.notna() & (bare != text)
    report.add(
        "removed currency signs",
        table,
        column,
        int(stripped.sum()),
        [repr(v) for v in pd.unique(text[stripped])[:MAX_EXAMPLES]],
    )
    numbers, grouped = _read_numbers(bare, decimal, thousands)
    report.add(
        "removed thousands separators",
        table,
        column,
        int(grouped.sum()),
        [repr(v) for v in pd.unique(text[grouped])[:MAX_EXAMPLES]],
    )
    return numbers, text.notna() & numbers.isna()


def _number_problem(
    table: str, column: str, before: pd.Series, bad: pd.Series, source: TableSource
) -> Problem:
    """Unreadable numbers, with the decimal / thousands settings that would read them."""
    text = _as_text(before).dropna()
    bare = _per_value(text, lambda v: v.str.replace(CURRENCY, "", regex=True).str.strip())
    bare = _per_value(bare, lambda v: v.str.replace("\u00a0", " ").str.replace("\u202f", " "))
    probe = pd.Series(pd.unique(bare.dropna())[:MAX_FORMAT_PROBE], dtype=object).astype(
        pd.StringDtype(na_value=np.nan)
    )
    current = _thousands(source.decimal, source.thousands)
    rule = (
        f"values are not numbers (read with decimal = {source.decimal!r} and thousands = "
        f"{current!r})"
    )
    best, best_count = (
        None,
        int(_read_numbers(probe, source.decimal, source.thousands)[0].notna().sum()),
    )
    for decimal, thousands in NUMBER_STYLES:
        count = int(_read_numbers(probe, decimal, thousands)[0].notna().sum())
        if count > best_count:
            best, best_count = (decimal, thousands), count
    if best is not None:
        setting = f"decimal = {best[0]!r}" + (
            f" and thousands = {best[1]!r}" if best[1] is not None else ""
        )
        share = (
            "all of them"
            if best_count == len(probe)
            else f"{best_count:,} of {len(probe):,} distinct values"
        )
        rule += f"; {setting} under [data.{table}] reads {share}"
    else:
        rule += f"; set decimal and thousands under [data.{table}] to the export's number format"
    return Problem(table, column, rule, int(bad.sum()), _examples(before[bad]))


def _to_dates(text: pd.Series, date_format: str | None) -> pd.Series:
    """Text to naive UTC datetime64[ns] (NaT where it does not read or falls outside the span)."""
    if date_format == EXCEL:
        serial = pd.to_numeric(text, errors="coerce")
        serial = serial.where((serial >= 1) & (serial < 2_958_466))
        parsed = EXCEL_EPOCH + pd.to_timedelta(serial, unit="D")
    else:
        fmt = date_format or "ISO8601"
        parsed = pd.to_datetime(text, format=fmt, errors="coerce", utc=True).dt.tz_localize(None)
    parsed = parsed.astype("datetime64[ns]")
    return parsed.where((parsed >= EARLIEST_DATE) & (parsed < LATEST_DATE))


def _parse_date(values: pd.Series, date_format: str | None) -> tuple[pd.Series, pd.Series]:
    """Naive UTC datetime64[ns]; returns the parsed dates and the rows that did not parse."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
        if getattr(values.dt, "tz", None) is not None:
            parsed = values.dt.tz_convert("UTC").dt.tz_localize(None)
        present = values.notna()
        parsed = parsed.astype("datetime64[ns]")
        in_span = (parsed >= EARLIEST_DATE) & (parsed < LATEST_DATE)
        bad = present & ~(parsed.notna() & in_span)
        return parsed.where(~bad), bad
    text = _as_text(values)
    present = text.notna()
    # Dates repeat: parse each distinct text once.
    codes, uniques = pd.factorize(text, use_na_sentinel=True)
    distinct = _to_dates(pd.Series(uniques, dtype=object).astype(str), date_format).to_numpy()
    out = np.full(len(codes), np.datetime64("NaT"), dtype="datetime64[ns]")
    out[codes >= 0] = distinct[codes[codes >= 0]]
    parsed = pd.Series(out, index=values.index)
    return parsed, present & parsed.isna()


def propose_date_formats(values: pd.Series) -> tuple[list[str], int, int]:
    """The ``date_format`` values that read the most of these dates (several when they tie,
    e.g. day-first and month-first both read 03/04/12), how many they read, of how many."""
    text = pd.Series(pd.unique(_as_text(values).dropna()), dtype=object).astype(str)
    text = text.head(MAX_FORMAT_PROBE)
    counts = {fmt: int(_to_dates(text, fmt).notna().sum()) for fmt in DATE_FORMATS}
    best = max(counts.values(), default=0)
    if best == 0:
        return [], 0, len(text)
    return [f for f, c in counts.items() if c == best], best, len(text)


def _date_problem(
    table: str, column: str, before: pd.Series, bad: pd.Series, date_format: str | None
) -> Problem:
    current = f"date_format = {date_format!r}" if date_format else "ISO 8601 (date_format unset)"
    rule = f"dates cannot be parsed with {current}, years 1900-2199"
    formats, count, total = propose_date_formats(before)
    current_key = date_format or "ISO8601"
    current_count = int((~bad & _as_text(before).notna()).sum())
    if formats and current_key not in formats and count > 0:
        best = formats[0]
        shown = "'ISO8601'" if best == "ISO8601" else repr(best)
        share = "all of them" if count == total else f"{count:,} of {total:,} distinct values"
        rule += f"; date_format = {shown} under [data.{table}] reads {share}"
        if len(formats) > 1:
            others = ", ".join(repr(f) for f in formats[1:3])
            rule += f" (so does {others}: check whether the export puts the day or the month first)"
    elif current_count == 0:
        rule += (
            f"; set date_format under [data.{table}] to the export's format (strftime codes "
            "such as '%d-%b-%y', or 'excel' for serial day numbers)"
        )
    return Problem(table, column, rule, int(bad.sum()), _examples(before[bad]))


def _infer_type(
    values: pd.Series,
    table: str,
    column: str,
    report: CleaningReport,
    source: TableSource | None = None,
) -> pd.Series:
    """An extra column whose every value reads as a number or a yes/no becomes one."""
    if not _is_text(values) or values.isna().all():
        return values
    folded = values.dropna().str.casefold()
    if folded.isin(TRUE_WORDS | FALSE_WORDS).all():
        return (
            values.str.casefold()
            .map(lambda v: v in TRUE_WORDS if isinstance(v, str) else pd.NA)
            .astype("boolean")
        )
    scratch = CleaningReport()
    decimal = source.decimal if source is not None else "."
    thousands = source.thousands if source is not None else None
    numbers, bad = _parse_number(values, table, column, scratch, decimal, thousands)
    if bad.any():
        return values
    report.extend(scratch)
    return numbers.astype(float)


# ---------------------------------------------------------------------------------------------
# Validation (pure)
# ---------------------------------------------------------------------------------------------


def validate_tables(
    frames: dict[str, pd.DataFrame | None],
    unparsed: dict[str, pd.DataFrame] | None = None,
) -> list[Problem]:
    """Every broken rule in every table, and across tables (ids that point nowhere).

    ``unparsed`` (per table, rows x columns, True where a value could not be read) keeps a
    value that is already reported as unreadable from being reported again as empty."""
    problems: list[Problem] = []
    unparsed = unparsed or {}
    for table, frame in frames.items():
        if frame is None:
            continue
        failed = unparsed.get(table, pd.DataFrame(index=frame.index))
        try:
            SCHEMAS[table].validate(frame.reset_index(drop=True), lazy=True)
        except pa.errors.SchemaErrors as exc:
            problems.extend(_schema_problems(table, frame, exc.failure_cases, failed))
        if table == "opportunities":
            problems.extend(_closed_before_created(frame, failed))
    accounts = frames.get("accounts")
    if accounts is not None and "account_id" in accounts.columns:
        known = set(accounts["account_id"].dropna())
        for table in ("opportunities", "activities", *CUSTOMER_TABLES):
            frame = frames.get(table)
            if frame is None or "account_id" not in frame.columns:
                continue
            ids = frame["account_id"]
            orphan = ids.notna().to_numpy() & ~_isin(ids, known)
            if orphan.any():
                problems.append(
                    Problem(
                        table,
                        "account_id",
                        "values not in accounts",
                        int(orphan.sum()),
                        tuple(_quote(ids[orphan])),
                    )
                )
    return problems


def _isin(values: pd.Series, allowed: set[str]) -> np.ndarray:
    """``values.isin(allowed)`` as a bool array (missing is not in). Text is looked up once per
    distinct value, through the column's encoding (made once per load: see
    ``features.distinct``), not once per row."""
    if values.dtype == TEXT:
        distinct = Distinct.of(values)
        found = np.fromiter((v in allowed for v in distinct.values), bool, len(distinct.values))
        if not len(found):
            return np.zeros(len(values), dtype=bool)
        return (distinct.codes >= 0) & found[np.maximum(distinct.codes, 0)]
    return values.isin(allowed).to_numpy(dtype=bool)


def _closed_before_created(frame: pd.DataFrame, failed: pd.DataFrame) -> list[Problem]:
    if not {"created_at", "closed_at"} <= set(frame.columns):
        return []
    readable = ~failed.any(axis=1).to_numpy() if len(failed.columns) else True
    early = (frame["closed_at"] < frame["created_at"]).fillna(False).to_numpy(dtype=bool) & readable
    if not early.any():
        return []
    rows = frame.loc[early].head(MAX_EXAMPLES)
    examples = tuple(
        f"{row.opportunity_id!r} created {row.created_at:%Y-%m-%d}, closed {row.closed_at:%Y-%m-%d}"
        if "opportunity_id" in frame
        else f"created {row.created_at:%Y-%m-%d}, closed {row.closed_at:%Y-%m-%d}"
        for row in rows.itertuples(index=False)
    )
    return [
        Problem(
            "opportunities",
            "closed_at",
            "deals closed before they were created (closed_at must be on or after created_at; "
            "correct the dates in the export)",
            int(early.sum()),
            examples,
        )
    ]


def _schema_problems(
    table: str,
    frame: pd.DataFrame,
    failures: pd.DataFrame,
    failed: pd.DataFrame | None = None,
) -> list[Problem]:
    problems = []
    frame = frame.reset_index(drop=True)
    for (column_key, check_key), group in failures.groupby(
        [failures["column"].fillna(""), failures["check"].astype(str)], sort=False
    ):
        column, check = str(column_key), str(check_key)
        if check == "column_in_dataframe":
            for missing in group["failure_case"].astype(str):
                problems.append(Problem(table, missing, _missing_column_rule(missing, frame)))
            continue
        if group["schema_context"].iloc[0] == "DataFrameSchema":
            # A row-wise rule across columns: report each bad row once, by its id.
            rows = np.unique(group["index"].dropna().to_numpy(dtype=np.int64))
            id_column = SPECS[table].id_columns[0]
            examples = frame[id_column].take(rows) if id_column in frame else pd.Series(rows)
            problems.append(
                Problem(table, None, f"rows break {check}", len(rows), tuple(_quote(examples)))
            )
            continue
        if check == "not_nullable" and failed is not None and column in failed:
            # Rows whose value did not parse are reported as such, not as empty as well.
            rows = group["index"].to_numpy(dtype=np.int64)
            group = group[~failed[column].to_numpy(dtype=bool)[rows]]
            if group.empty:
                continue
        values = group["failure_case"]
        if check == "field_uniqueness":
            n_ids = values.nunique()
            rule = f"rows share {n_ids:,} id{'s' if n_ids != 1 else ''} (ids must be unique)"
            if table == "accounts" and len(group) > len(frame) / 2:
                # Most rows repeat an id: a deal-level report, not an accounts table.
                rule += (
                    "; a flat deal export with the account on every row goes under "
                    "[data.deals] with its account_key, and the accounts are derived from it"
                )
        elif check == "not_nullable":
            rule = "rows are empty (a value is required)"
        elif check == "greater_than_or_equal_to(0)":
            rule = "values below 0 (must be >= 0)"
        elif check.startswith("isin(") and column == "outcome":
            rule = (
                f"values have an unknown outcome label (must map to {', '.join(OUTCOMES)}; "
                "add it to the config's labels.outcome)"
            )
        elif check.startswith("isin(") and column == "status":
            rule = (
                "values have an unknown subscription status (must map to "
                f"{', '.join(SUBSCRIPTION_STATUSES)}; add it to the config's labels.status)"
            )
        elif check.startswith("in_range("):
            rule = f"values out of range {check.removeprefix('in_range')}"
        elif check.startswith("dtype("):
            rule = f"values have the wrong type (expected {check.removeprefix('dtype')})"
        else:
            rule = f"values break {check}"
        problems.append(Problem(table, column or None, rule, len(group), tuple(_quote(values))))
    return problems


def _column_list(frame: pd.DataFrame) -> str:
    return ", ".join(map(str, frame.columns[:12])) + (", ..." if frame.shape[1] > 12 else "")


def _missing_column_rule(column: str, frame: pd.DataFrame) -> str:
    return (
        f"required column missing (the file has: {_column_list(frame)}; "
        "map it under 'columns' in the config)"
    )


# ---------------------------------------------------------------------------------------------
# The one entry point
# ---------------------------------------------------------------------------------------------


def split_deals(
    frame: pd.DataFrame, source: DealsSource, report: CleaningReport
) -> tuple[pd.DataFrame, pd.DataFrame, list[Problem]]:
    """A cleaned flat deal export -> (accounts, opportunities).

    One account per ``account_id`` (built from ``account_key``), its fields from its latest
    deal by ``created_at`` (an empty value there falls back to the latest deal that has one);
    accounts whose deals disagree on a field are reported, field by field."""
    problems: list[Problem] = []
    key = [_resolve(k, source) for k in source.account_key]
    if source.account_fields is None:
        fields = [c for c in ACCOUNT_OPTIONAL if c in frame.columns]
    else:
        fields = [_resolve(c, source) for c in source.account_fields]
    problems.extend(_absent(fields, "account_fields", frame))
    fields = [c for c in fields if c in frame.columns and c != "account_id"]
    deal_known = [c for c in OPPORTUNITY_REQUIRED + OPPORTUNITY_OPTIONAL if c in frame.columns]
    taken = {"account_id", *key, *fields, *deal_known}
    if source.deal_fields is None:
        extra = [c for c in frame.columns if c not in taken]
    else:
        extra = [_resolve(c, source) for c in source.deal_fields]
        problems.extend(_absent(extra, "deal_fields", frame))
        extra = [c for c in extra if c in frame.columns and c not in taken]
    ignored = [c for c in frame.columns if c not in taken and c not in extra]
    if ignored:
        report.add(
            "ignored columns (neither account key, account field nor deal field)",
            "deals",
            None,
            len(frame),
            [repr(c) for c in ignored],
        )
    if "account_id" not in frame.columns:
        return frame.iloc[0:0], frame, problems

    opportunities = frame[
        [c for c in frame.columns if c in deal_known or c in extra or c == "account_id"]
    ]
    known = frame[frame["account_id"].notna()]
    ordered = known.sort_values("created_at", kind="stable", na_position="first")
    grouped = ordered.groupby("account_id", sort=True)
    accounts = grouped[fields].last() if fields else pd.DataFrame(index=grouped.size().index)
    accounts = accounts.reset_index()
    for name in fields:
        distinct = grouped[name].nunique()
        varying = distinct[distinct > 1]
        report.add(
            "account field differs between an account's deals: kept its latest deal's value",
            "accounts",
            name,
            len(varying),
            [repr(str(v)) for v in varying.index[:MAX_EXAMPLES]],
        )
    joined = ", ".join(source.account_key)
    report.add(
        f"derived accounts from the deals: one per account key ({joined}); account fields "
        f"({', '.join(fields) or 'none'}) from each account's latest deal",
        "accounts",
        "account_id",
        len(accounts),
        _quote(accounts["account_id"]),
    )
    for column in accounts.columns:
        if column in SPECS["accounts"].numbers and not pd.api.types.is_float_dtype(
            accounts[column]
        ):
            accounts[column] = pd.to_numeric(accounts[column], errors="coerce").astype(float)
        elif _is_text(accounts[column]):
            accounts[column] = _as_text(accounts[column])
    return accounts, opportunities.reset_index(drop=True), problems


def _absent(names: list[str], key: str, frame: pd.DataFrame) -> list[Problem]:
    return [
        Problem(
            "deals",
            name,
            f"config '{key}' names a column the file does not have (the file has: "
            f"{_column_list(frame)})",
        )
        for name in names
        if name not in frame.columns
    ]


def _drop_empty_columns(accounts: pd.DataFrame, report: CleaningReport) -> pd.DataFrame:
    """An account column with no value at all is a field this export does not have: left out,
    so that neither the models nor the evidence score count it as missing for every account."""
    empty = [c for c in accounts.columns if c != "account_id" and accounts[c].isna().all()]
    for column in empty:
        report.add(
            "column has no value in any row: left out (the models, the ICP and the evidence "
            "score use the fields this export has)",
            "accounts",
            column,
            len(accounts),
        )
    return accounts.drop(columns=empty)


def export_date(data: DataConfig, today: date | None = None) -> pd.Timestamp:
    """The date the export was taken: ``data.as_of`` if set, else today."""
    return pd.Timestamp(data.as_of or today or date.today()).normalize()


def future_dates(
    frames: dict[str, pd.DataFrame | None], data: DataConfig, today: date | None = None
) -> list[Problem]:
    """Dates after the export's own date: typos (2031 for 2021) that would otherwise move the
    default scoring date into the future and change every tier."""
    limit = export_date(data, today)
    where = "data.as_of" if data.as_of else "today; data.as_of is not set"
    problems = []
    for table, columns in (
        ("opportunities", ("created_at", "closed_at")),
        ("activities", ("occurred_at",)),
    ):
        frame = frames.get(table)
        if frame is None:
            continue
        for column in [c for c in columns if c in frame.columns]:
            late = (
                (frame[column] >= limit + pd.Timedelta(days=1)).fillna(False).to_numpy(dtype=bool)
            )
            if not late.any():
                continue
            id_column = "opportunity_id" if "opportunity_id" in frame else "account_id"
            examples = tuple(
                f"{i!r} {d:%Y-%m-%d}"
                for i, d in frame.loc[late, [id_column, column]]
                .head(MAX_EXAMPLES)
                .itertuples(index=False)
            )
            problems.append(
                Problem(
                    table,
                    column,
                    f"dates after the export's date {limit:%Y-%m-%d} ({where}); correct them in "
                    "the export, or set data.as_of to the date the export was taken",
                    int(late.sum()),
                    examples,
                )
            )
    return problems


def derive_closed_at(
    opportunities: pd.DataFrame, data: DataConfig, report: CleaningReport, end: pd.Timestamp
) -> pd.DataFrame:
    """No close dates in the export: a won or lost deal's outcome counts as known
    ``closed_after_days`` after its creation (the typical sales cycle), or at the end of the
    data (``end``) if that comes first: the export already knows the outcome, and a derived
    date must not move the end of the data (the default scoring date). Deal history features
    and the training split's leave-out of too-recent deals then work as with real dates."""
    if "closed_at" in opportunities.columns:
        return opportunities
    closed = opportunities["outcome"].isin(["won", "lost"])
    days = pd.Timedelta(days=data.closed_after_days)
    out = opportunities.copy()
    derived = out["created_at"].where(closed) + days
    out["closed_at"] = derived.where(derived.isna() | (derived <= end), end)
    report.add(
        f"derived closed_at = created_at + {data.closed_after_days} days (data.closed_after_days), "
        "at the latest the end of the data, for won and lost deals: the export has no close dates",
        "opportunities",
        "closed_at",
        int(closed.sum()),
    )
    return out


def default_amounts(
    opportunities: pd.DataFrame, data: DataConfig, report: CleaningReport
) -> pd.DataFrame:
    """No won deal with an amount anywhere in the export: every won deal counts as
    ``default_deal_value``, so revenue figures and the revenue model count won deals (in units
    of that value) instead of failing for want of amounts."""
    won = opportunities["outcome"] == "won"
    if "amount" in opportunities.columns and bool((opportunities.loc[won, "amount"] > 0).any()):
        return opportunities
    out = opportunities.copy()
    out["amount"] = np.where(won, data.default_deal_value, np.nan)
    report.add(
        f"no won deal has an amount: every won deal counts as {data.default_deal_value:,g} "
        "(data.default_deal_value)",
        "opportunities",
        "amount",
        int(won.sum()),
    )
    report.notes.append(
        f"no amounts on won deals: every won deal counts as {data.default_deal_value:,g} "
        "(data.default_deal_value), so expected revenue is P(convert) x the won deals expected "
        "in the horizon x that value, and the revenue figures of train count won deals"
    )
    return out


def _notes(tables: Tables, data: DataConfig, derived_closed: bool) -> list[str]:
    """What the export lacks and what follows from it, said before anyone trains."""
    notes = []
    missing = [c for c in ("industry", "employees", "annual_revenue") if c not in tables.accounts]
    if missing:
        notes.append(
            f"no {', '.join(missing)}: the models learn from the fields the export has; ICP "
            "criteria on these columns cannot be evaluated, and the evidence score leaves them out"
        )
    if derived_closed:
        notes.append(
            f"no closed_at: a won or lost deal counts as closed {data.closed_after_days} days "
            "after created_at (data.closed_after_days) for deal history, and deals created within "
            "that many days of the end of the data are left out of training as not yet closed"
        )
    if tables.activities is None:
        notes.append(
            "no activities: no engagement features; the evidence score uses the account fields, "
            "deal history and open deals"
        )
    if tables.subscriptions is None:
        notes.append(
            "no subscriptions: customer status and value come from won-deal history (a customer "
            "is an account with a won deal, its value its won revenue of the last 12 months); "
            "churn risk, revenue at risk and expected expansion are not computed (map a billing "
            "export under [data.subscriptions])"
        )
    elif tables.usage is None or tables.tickets is None:
        lacking = [n for n in ("usage", "tickets") if getattr(tables, n) is None]
        notes.append(
            f"no {' and no '.join(lacking)}: the churn and expansion models learn without "
            "usage trends or support load"
        )
    return notes


def load_tables(data: DataConfig, today: date | None = None) -> LoadResult:
    """Read, map, clean and validate the export; one DataContractError lists every problem.

    ``today`` stands in for the clock when ``data.as_of`` is unset (dates after it are refused).
    """
    with shared_encodings():
        return _load_tables(data, today)


def _load_tables(data: DataConfig, today: date | None) -> LoadResult:
    report = CleaningReport()
    problems: list[Problem] = []
    frames: dict[str, pd.DataFrame | None] = {}
    unparsed: dict[str, pd.DataFrame] = {}
    for table, source in data.sources().items():
        raw, read_problems = read_export(table, source)
        problems.extend(read_problems)
        if raw is None:
            if table == "deals":
                frames["accounts"] = frames["opportunities"] = None
            else:
                frames[table] = None
            continue
        cleaned = clean_table(raw, table, source)
        report.extend(cleaned.report)
        problems.extend(cleaned.problems)
        if table == "deals":
            assert isinstance(source, DealsSource)
            accounts, opportunities, split_problems = split_deals(cleaned.frame, source, report)
            problems.extend(split_problems)
            frames["accounts"], frames["opportunities"] = accounts, opportunities
            unparsed["opportunities"] = cleaned.unparsed
        else:
            frames[table] = cleaned.frame
            unparsed[table] = cleaned.unparsed
    if frames.get("accounts") is None and frames.get("opportunities") is not None:
        # Without accounts every account_id would look orphaned: one problem is enough.
        frames = {**frames, "accounts": None}
    reported = {(p.table, p.column) for p in problems if p.rule.startswith("required column")}
    problems.extend(
        p
        for p in validate_tables(frames, unparsed)
        if not (p.rule.startswith("required column") and (p.table, p.column) in reported)
    )
    problems.extend(future_dates(frames, data, today))
    if problems:
        raise DataContractError(problems)
    final_opportunities = frames["opportunities"]
    final_accounts = frames["accounts"]
    # Both are None only with problems, which raised above.
    assert final_opportunities is not None and final_accounts is not None
    derived_closed = "closed_at" not in final_opportunities.columns
    tables = Tables(
        accounts=_drop_empty_columns(final_accounts, report),
        opportunities=final_opportunities,
        activities=frames.get("activities"),
        **{name: frames.get(name) for name in CUSTOMER_TABLES},
    )
    end = pd.Timestamp(data.as_of) if data.as_of else tables.end_of_data()
    tables = Tables(
        accounts=tables.accounts,
        opportunities=default_amounts(
            derive_closed_at(final_opportunities, data, report, end), data, report
        ),
        activities=tables.activities,
        **{name: getattr(tables, name) for name in CUSTOMER_TABLES},
    )
    report.notes.extend(_notes(tables, data, derived_closed))
    return LoadResult(tables=tables, report=report)


# ---------------------------------------------------------------------------------------------
# Partitioned exports: every table a folder of parts, part k of each holding the same accounts
# ---------------------------------------------------------------------------------------------


def export_parts(data: DataConfig) -> list[str] | None:
    """The part names (``part-00000``, ...) of a partitioned export, None for plain files.

    Every configured table must then be a folder holding the same parts: a part is a complete
    export of its accounts, which is what lets it be checked and featurised on its own."""
    sources = data.sources()
    folders = {name: Path(s.path) for name, s in sources.items() if Path(s.path).is_dir()}
    if not folders:
        return None
    files = [name for name in sources if name not in folders]
    if files:
        raise DataContractError(
            [
                Problem(
                    name,
                    None,
                    f"is one file while {', '.join(folders)} are folders of parts; a "
                    "partitioned export splits every table by the same accounts (write it "
                    "as a folder of part-NNNNN.parquet files too)",
                )
                for name in files
            ]
        )
    names = {name: {f.stem for f in path.glob(PART_GLOB)} for name, path in folders.items()}
    every = sorted(set().union(*names.values()))
    problems = [
        Problem(
            name,
            None,
            f"lacks parts the other tables have: {', '.join(sorted(set(every) - have)[:5])} "
            f"(every table needs the same {PART_GLOB} files: {folders[name]})",
        )
        for name, have in names.items()
        if have != set(every)
    ]
    if not every:
        problems.append(Problem(next(iter(folders)), None, f"folders have no {PART_GLOB} files"))
    if problems:
        raise DataContractError(problems)
    return every


def part_config(data: DataConfig, part: str) -> DataConfig:
    """``data`` with every table's folder replaced by its file of ``part``."""
    update = {
        name: source.model_copy(update={"path": Path(source.path) / f"{part}.parquet"})
        for name, source in data.sources().items()
    }
    return data.model_copy(update=update)


def load_part(data: DataConfig, part: str, today: date | None = None) -> LoadResult:
    """:func:`load_tables` on one part of a partitioned export; its problems name the part.

    Rules within an account (deals and activities point at accounts, dates in order, ...) are
    checked here in full, since all rows of an account are in one part: a row in another
    part than its account is refused as pointing nowhere. Ids unique across the parts are
    checked by :func:`parts_problems`."""
    try:
        return load_tables(part_config(data, part), today)
    except DataContractError as exc:
        raise DataContractError([dataclasses.replace(p, part=part) for p in exc.problems]) from None


def parts_problems(data: DataConfig, parts: Sequence[str]) -> list[Problem]:
    """Ids that more than one part holds: the one rule no part can check alone. A pass over
    the id columns only (a few bytes per row), never the tables."""
    import pyarrow as pyarrow_
    import pyarrow.parquet as pq

    problems = []
    for table, column in (("accounts", "account_id"), ("opportunities", "opportunity_id")):
        source = getattr(data, table)
        if source is None:
            continue
        name = source.columns.get(column, column)
        seen: list[pyarrow_.Array] = []
        owner: list[pyarrow_.Array] = []
        for number, part in enumerate(parts):
            path = Path(source.path) / f"{part}.parquet"
            if name not in pq.read_schema(path).names:
                break  # reported by the part's own check (or generated from content)
            ids = pq.read_table(path, columns=[name])[name].combine_chunks()
            ids = pc.utf8_trim_whitespace(ids.cast(pyarrow_.string()))
            unique = pc.unique(ids.drop_null())
            seen.append(unique)
            owner.append(pyarrow_.array(np.full(len(unique), number, dtype=np.int32)))
        if not seen:
            continue
        ids = pyarrow_.concat_arrays(seen)
        counts = pc.value_counts(ids)
        shared = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        if len(shared) == 0:
            continue
        where = pc.is_in(ids, value_set=shared)
        in_parts = np.unique(pyarrow_.concat_arrays(owner).filter(where).to_numpy())
        problems.append(
            Problem(
                table,
                column,
                f"ids are in more than one part ({', '.join(parts[i] for i in in_parts[:5])}); "
                "ids must be unique, and all rows of an account belong in one part",
                len(shared),
                tuple(_quote(pd.Series(shared.slice(0, MAX_EXAMPLES).to_pylist()))),
            )
        )
    return problems


def check_parts(
    data: DataConfig,
    parts: Sequence[str],
    progress: Callable[[int, str], None] | None = None,
) -> LoadResult:
    """A partitioned export checked one part at a time, so memory grows with a part, not the
    export: every part's problems (each naming its part) and the ids shared across parts, as
    one error; else the first part's tables (a sample of the accounts, for the quality report
    and the training checks) with the cleaning of every part. ``progress(number, part)`` is
    called before each part is read."""
    problems: list[Problem] = []
    reports: list[CleaningReport] = []
    first: Tables | None = None
    for number, part in enumerate(parts):
        if progress is not None:
            progress(number, part)
        try:
            result = load_part(data, part)
        except DataContractError as exc:
            problems.extend(exc.problems)
            continue
        reports.append(result.report)
        if first is None:
            first = result.tables
    problems.extend(parts_problems(data, parts))
    if problems:
        raise DataContractError(problems)
    assert first is not None
    return LoadResult(tables=first, report=merge_reports(reports))


def merge_reports(reports: Sequence[CleaningReport]) -> CleaningReport:
    """The cleaning of every part as one report: each step's rows summed over the parts."""
    merged = CleaningReport()
    steps: dict[tuple[str, str, str | None], list[CleaningStep]] = {}
    for report in reports:
        for step in report.steps:
            steps.setdefault((step.step, step.table, step.column), []).append(step)
        merged.notes.extend(n for n in report.notes if n not in merged.notes)
    for (name, table, column), group in steps.items():
        examples = [e for step in group for e in step.examples]
        merged.add(name, table, column, sum(s.rows for s in group), examples)
    return merged
