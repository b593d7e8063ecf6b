"""The data contract: read a CRM export, map it onto the canonical tables, clean the known
dirt (and say what was cleaned), then validate everything at once.

Reading is the only I/O (``read_export``); mapping and cleaning (``clean_table``) and
validation (``validate_tables``) are pure functions of DataFrames. ``load_tables`` composes
them and raises one ``DataContractError`` listing every problem in every table, so a user
fixes an export in one round instead of one error at a time. Nothing downstream runs (so
nothing is written) before validation has passed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

from features.config import DataConfig, TableSource
from features.tables import (
    ACCOUNT_OPTIONAL,
    ACCOUNT_REQUIRED,
    ACTIVITY_OPTIONAL,
    ACTIVITY_REQUIRED,
    OPPORTUNITY_OPTIONAL,
    OPPORTUNITY_REQUIRED,
    OUTCOMES,
    Tables,
)
from features.values import NO_WORDS, YES_WORDS

MAX_EXAMPLES = 3
TABLE_NAMES = ("accounts", "opportunities", "activities")
PARQUET_SUFFIXES = (".parquet", ".pq")
DELIMITER_CANDIDATES = (",", ";", "\t", "|")
# Dates outside this span are typos (0201 for 2021) or sentinels (9999-12-31), not history.
EARLIEST_DATE = pd.Timestamp("1900-01-01")
LATEST_DATE = pd.Timestamp("2200-01-01")
# The yes/no words the model and the ICP read; digits stay numbers (a 0/1 column is a count
# as often as a flag, and the model and the ICP read 1/0 numbers as yes/no anyway).
TRUE_WORDS = frozenset(w for w in YES_WORDS if not w.isdigit())
FALSE_WORDS = frozenset(w for w in NO_WORDS if not w.isdigit())
THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")


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
    """Every change made to the export on its way in; nothing is cleaned silently."""

    steps: list[CleaningStep] = field(default_factory=list)

    def add(
        self, step: str, table: str, column: str | None, rows: int, examples: Sequence[str] = ()
    ) -> None:
        if rows > 0:
            self.steps.append(
                CleaningStep(step, table, column, int(rows), tuple(examples[:MAX_EXAMPLES]))
            )

    def extend(self, other: CleaningReport) -> None:
        self.steps.extend(other.steps)

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

    def __str__(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
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
}


def _string(required: bool = False, **kwargs: object) -> pa.Column:
    return pa.Column(str, nullable=True, required=required, **kwargs)  # type: ignore[arg-type]


def _date(required: bool = False, nullable: bool = True) -> pa.Column:
    return pa.Column("datetime64[ns]", nullable=nullable, required=required)


ACCOUNTS_SCHEMA = pa.DataFrameSchema(
    {
        "account_id": pa.Column(str, nullable=False, unique=True),
        "industry": _string(required=True),
        "employees": pa.Column(float, pa.Check.ge(0), nullable=True),
        "annual_revenue": pa.Column(float, pa.Check.ge(0), nullable=True),
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
    checks=[
        pa.Check(
            lambda df: (
                df["closed_at"].isna() | (df["closed_at"] >= df["created_at"])
                if {"closed_at", "created_at"} <= set(df.columns)
                else pd.Series(True, index=df.index)
            ),
            name="closed_at >= created_at",
        )
    ],
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

SCHEMAS = {
    "accounts": ACCOUNTS_SCHEMA,
    "opportunities": OPPORTUNITIES_SCHEMA,
    "activities": ACTIVITIES_SCHEMA,
}


# ---------------------------------------------------------------------------------------------
# Reading (the only I/O)
# ---------------------------------------------------------------------------------------------


def read_export(table: str, source: TableSource) -> tuple[pd.DataFrame | None, list[Problem]]:
    """Read one exported file as it is (CSV values as strings, so ids keep leading zeros)."""
    path = Path(source.path)
    if not path.exists():
        return None, [Problem(table, None, f"file not found: {path}")]
    if path.stat().st_size == 0:
        return None, [Problem(table, None, f"file is empty: {path}")]
    is_parquet = path.suffix.lower() in PARQUET_SUFFIXES
    if not is_parquet:
        # A header without the configured delimiter but with another one: the wrong delimiter
        # (checked before parsing, since the body may then split into ragged rows).
        with path.open(encoding="utf-8-sig", errors="replace") as handle:
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
                path, sep=source.delimiter, dtype=str, encoding="utf-8-sig", skipinitialspace=False
            )
    except pd.errors.EmptyDataError:
        return None, [Problem(table, None, f"file is empty: {path}")]
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, [Problem(table, None, f"cannot be read ({reason}): {path}")]
    if frame.shape[1] == 1 and len(SPECS[table].required) > 1:
        return None, [_one_column_problem(table, source, str(frame.columns[0]))]
    if frame.empty:
        return None, [Problem(table, None, f"file has a header but no rows: {path}")]
    return frame, []


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


def _per_value(values: pd.Series, transform: Callable[[pd.Series], pd.Series]) -> pd.Series:
    """Apply a string transform once per distinct value: exports repeat few labels many times."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    done = np.asarray(transform(pd.Series(uniques, dtype=object)), dtype=object)
    out = np.full(len(codes), np.nan, dtype=object)
    present = codes >= 0
    out[present] = done[codes[present]]
    return pd.Series(out, index=values.index).astype(pd.StringDtype(na_value=np.nan))


def _fold_text(values: pd.Series) -> pd.Series:
    return values.str.casefold().str.replace(r"\s+", " ", regex=True)


def _fold(values: pd.Series) -> pd.Series:
    """Label key for comparisons: case-folded with runs of whitespace as one space."""
    return _per_value(values, _fold_text)


def _lookup(values: pd.Series, table: dict[str, str], keep: bool) -> pd.Series:
    """Values found in ``table`` replaced; others kept (``keep``) or missing."""
    return _per_value(values, lambda v: v.map(lambda x: table.get(x, x if keep else np.nan)))


def _pairs(before: pd.Series, after: pd.Series, changed: pd.Series) -> list[str]:
    seen = pd.DataFrame({"b": before[changed], "a": after[changed]}).drop_duplicates()
    return [f"{b!r} -> {a!r}" for b, a in seen.head(MAX_EXAMPLES).itertuples(index=False)]


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


def clean_table(
    frame: pd.DataFrame, table: str, source: TableSource
) -> tuple[pd.DataFrame, CleaningReport, list[Problem]]:
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
            if column not in frame.columns:
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

    for column in [c for c in spec.numbers if c in frame.columns]:
        before = frame[column]
        frame[column], bad = _parse_number(before, table, column, report)
        if bad.any():
            problems.append(
                Problem(
                    table, column, "values are not numbers", int(bad.sum()), _examples(before[bad])
                )
            )
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
            expected = f"format {source.date_format!r}" if source.date_format else "ISO 8601"
            problems.append(
                Problem(
                    table,
                    column,
                    f"dates cannot be parsed (expected {expected}, years 1900-2199)",
                    int(bad.sum()),
                    _examples(before[bad]),
                )
            )
    if spec.infer_extra_types:
        for column in [c for c in frame.columns if c not in spec.known]:
            frame[column] = _infer_type(frame[column], table, column, report)
    for column in frame.columns:
        if column not in spec.dates and column not in spec.numbers and _is_text(frame[column]):
            frame[column] = _as_text(frame[column])

    duplicated = frame.duplicated()
    if duplicated.any():
        example_column = spec.id_columns[0] if spec.id_columns[0] in frame else frame.columns[0]
        report.add(
            "dropped exact duplicate rows",
            table,
            None,
            int(duplicated.sum()),
            _quote(frame.loc[duplicated, example_column]),
        )
        frame = frame.loc[~duplicated]
    for column in [c for c in source.drop_if_missing if c in frame.columns]:
        empty = frame[column].isna()
        report.add(f"dropped rows with empty {column}", table, column, int(empty.sum()))
        frame = frame.loc[~empty]

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
    return frame.reset_index(drop=True), report, problems


def _factor(factor: float) -> str:
    return f"x {factor:,.0f}" if float(factor).is_integer() else f"x {factor:g}"


def _trim(values: pd.Series, table: str, column: str, report: CleaningReport) -> pd.Series:
    text = _as_text(values)
    trimmed = _per_value(text, lambda v: v.str.strip())
    trimmed = trimmed.where(trimmed != "", np.nan)
    changed = text.notna() & (trimmed.isna() | (trimmed != text))
    report.add(
        "trimmed spaces",
        table,
        column,
        int(changed.sum()),
        _pairs(text, trimmed.fillna(""), changed),
    )
    return trimmed


def _map_labels(
    values: pd.Series,
    table: str,
    column: str,
    labels: dict[str, str],
    report: CleaningReport,
) -> pd.Series:
    folded = _fold(values)
    changed = values.notna() & (folded != values)
    report.add(
        "case-folded labels", table, column, int(changed.sum()), _pairs(values, folded, changed)
    )
    lookup = {" ".join(k.casefold().split()): v for k, v in labels.items()}
    mapped = _lookup(folded, lookup, keep=True)
    changed = folded.notna() & (mapped != folded)
    report.add("mapped labels", table, column, int(changed.sum()), _pairs(folded, mapped, changed))
    if column == "outcome":
        # An unknown outcome keeps its export spelling so the error shows the user's label.
        unknown = mapped.notna() & ~mapped.isin(OUTCOMES)
        mapped = mapped.where(~unknown, values)
    return mapped


def _unify_case(values: pd.Series, table: str, column: str, report: CleaningReport) -> pd.Series:
    folded = _fold(values)
    present = pd.DataFrame({"key": folded, "value": values}).dropna()
    if present.empty:
        return values
    # The commonest spelling wins; on a tie, a mixed-case one ("Germany" over "GERMANY"),
    # then the first seen.
    spellings = (
        present.assign(order=np.arange(len(present)))
        .groupby(["key", "value"], sort=False)
        .agg(n=("order", "size"), first=("order", "min"))
        .reset_index()
    )
    spellings["mixed"] = (spellings["value"] != spellings["value"].str.upper()) & (
        spellings["value"] != spellings["value"].str.lower()
    )
    spellings = spellings.sort_values(
        ["key", "n", "mixed", "first"], ascending=[True, False, False, True], kind="stable"
    )
    commonest = spellings.drop_duplicates("key").set_index("key")["value"]
    unified = _as_text(folded.map(commonest))
    changed = values.notna() & (unified != values)
    report.add(
        "unified case and spacing variants",
        table,
        column,
        int(changed.sum()),
        _pairs(values, unified, changed),
    )
    return unified.where(values.notna(), np.nan)


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
    folded = _fold(values)
    fixed = _lookup(folded, lookup, keep=False)
    fixed = fixed.where(fixed.notna(), values)
    changed = values.notna() & (fixed != values)
    report.add("fixed values", table, column, int(changed.sum()), _pairs(values, fixed, changed))
    return fixed


def _parse_number(
    values: pd.Series, table: str, column: str, report: CleaningReport
) -> tuple[pd.Series, pd.Series]:
    """Numbers as float; strings with thousands separators ("1,250,000") are read (reported)."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype(float), pd.Series(False, index=values.index)
    if pd.api.types.is_numeric_dtype(values):
        return values.astype(float), pd.Series(False, index=values.index)
    text = _as_text(values)
    separated = text.str.fullmatch(THOUSANDS).fillna(False).astype(bool)
    report.add(
        "removed thousands separators",
        table,
        column,
        int(separated.sum()),
        [repr(v) for v in pd.unique(text[separated])[:MAX_EXAMPLES]],
    )
    plain = text.where(~separated, text.str.replace(",", "", regex=False))
    numbers = pd.to_numeric(plain, errors="coerce").astype(float)
    return numbers, text.notna() & numbers.isna()


def _parse_date(values: pd.Series, date_format: str | None) -> tuple[pd.Series, pd.Series]:
    """Naive UTC datetime64[ns]; returns the parsed dates and the rows that did not parse."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
        if getattr(values.dt, "tz", None) is not None:
            parsed = values.dt.tz_convert("UTC").dt.tz_localize(None)
        present = values.notna()
    else:
        text = _as_text(values)
        present = text.notna()
        parsed = pd.to_datetime(text, format=date_format or "ISO8601", errors="coerce", utc=True)
        parsed = parsed.dt.tz_localize(None)
    in_span = (parsed >= EARLIEST_DATE) & (parsed < LATEST_DATE)
    bad = present & ~(parsed.notna() & in_span)
    return parsed.where(~bad).astype("datetime64[ns]"), bad


def _infer_type(values: pd.Series, table: str, column: str, report: CleaningReport) -> pd.Series:
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
    numbers, bad = _parse_number(values, table, column, scratch)
    if bad.any():
        return values
    report.extend(scratch)
    return numbers.astype(float)


# ---------------------------------------------------------------------------------------------
# Validation (pure)
# ---------------------------------------------------------------------------------------------


def validate_tables(frames: dict[str, pd.DataFrame | None]) -> list[Problem]:
    """Every broken rule in every table, and across tables (ids that point nowhere)."""
    problems: list[Problem] = []
    for table, frame in frames.items():
        if frame is None:
            continue
        try:
            SCHEMAS[table].validate(frame.reset_index(drop=True), lazy=True)
        except pa.errors.SchemaErrors as exc:
            problems.extend(_schema_problems(table, frame, exc.failure_cases))
    accounts = frames.get("accounts")
    if accounts is not None and "account_id" in accounts.columns:
        known = set(accounts["account_id"].dropna())
        for table in ("opportunities", "activities"):
            frame = frames.get(table)
            if frame is None or "account_id" not in frame.columns:
                continue
            ids = frame["account_id"]
            orphan = ids.notna() & ~ids.isin(known)
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


def _schema_problems(table: str, frame: pd.DataFrame, failures: pd.DataFrame) -> list[Problem]:
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
        values = group["failure_case"]
        if check == "field_uniqueness":
            n_ids = values.nunique()
            rule = f"rows share {n_ids:,} id{'s' if n_ids != 1 else ''} (ids must be unique)"
        elif check == "not_nullable":
            rule = "rows are empty (a value is required)"
        elif check == "greater_than_or_equal_to(0)":
            rule = "values below 0 (must be >= 0)"
        elif check.startswith("isin(") and column == "outcome":
            rule = (
                f"values have an unknown outcome label (must map to {', '.join(OUTCOMES)}; "
                "add it to the config's labels.outcome)"
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


def load_tables(data: DataConfig) -> LoadResult:
    """Read, map, clean and validate the export; one DataContractError lists every problem."""
    sources: dict[str, TableSource] = {
        name: source
        for name, source in (
            ("accounts", data.accounts),
            ("opportunities", data.opportunities),
            ("activities", data.activities),
        )
        if source is not None
    }
    report = CleaningReport()
    problems: list[Problem] = []
    frames: dict[str, pd.DataFrame | None] = {}
    for table, source in sources.items():
        raw, read_problems = read_export(table, source)
        problems.extend(read_problems)
        if raw is None:
            frames[table] = None
            continue
        cleaned, table_report, clean_problems = clean_table(raw, table, source)
        report.extend(table_report)
        problems.extend(clean_problems)
        frames[table] = cleaned
    if frames.get("accounts") is None and frames.get("opportunities") is not None:
        # Without accounts every account_id would look orphaned: one problem is enough.
        frames = {**frames, "accounts": None}
    reported = {(p.table, p.column) for p in problems if p.rule.startswith("required column")}
    problems.extend(
        p
        for p in validate_tables(frames)
        if not (p.rule.startswith("required column") and (p.table, p.column) in reported)
    )
    if problems:
        raise DataContractError(problems)
    tables = Tables(
        accounts=frames["accounts"],  # type: ignore[arg-type]  # None only with problems
        opportunities=frames["opportunities"],  # type: ignore[arg-type]
        activities=frames.get("activities"),
    )
    return LoadResult(tables=tables, report=report)
