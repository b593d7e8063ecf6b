"""The demo CRM: seeded, vectorised synthetic accounts, activities and deals, with the ground truth.

Every deal's outcome is drawn from a hidden true win probability that depends, non-linearly and
with interactions, only on what a point-in-time feature builder can observe when the deal is
created: the account's firmographics and technographics, its engagement in the 30/90/180 days
before, and the outcomes of its earlier deals that had closed by then. Product and source do not
move the win probability (they only move the amount), and there is no hidden per-account noise
in it, so a good model can approach the truth's discrimination. The truth is written beside the
data (``truth/``) for evaluation and tests; feature code never reads it.

Accounts are generated in fixed-size chunks, each with its own random stream derived from the
seed, so memory stays bounded at a million accounts, chunks can be generated in parallel, and the
same seed gives the same bytes whatever the number of worker processes.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from demo.customers import CUSTOMER_TABLES, customer_paths, customer_schemas, draw_customers
from features.tables import ACTIVITY_TYPES

Format = Literal["csv", "parquet"]
TruthAsOf = Literal["monthly", "end"]
# What a chunk is serialised to: DataFrames (numbers as numbers or as export text) or file bytes.
Output = Literal["frames", "frames_text", "csv", "parquet"]
TABLES = (
    "accounts",
    "opportunities",
    "activities",
    "opportunities_truth",
    "accounts_truth",
    "process_truth",
    *CUSTOMER_TABLES,
)

# The process truth: one row per account (see _process_truth and demo.truth.horizon_truth).
PROCESS_COLUMNS = (
    "account_id",
    "true_deal_rate",  # deals created per day (a Poisson process, uniform in time)
    "true_activity_rate",  # base activity per day, in multiples of BASE_EVENTS
    "true_engagement",  # engagement propensity: scales each deal's pre-deal intensity
    "true_base_logit",  # firmographic part of the win log-odds (see true_logit)
    "true_icp_industry",  # the industry is one of ICP_INDUSTRIES (an intent interaction)
    "true_cycle_days",  # median close cycle before the won/lost factor
    "true_deal_value_prospect",  # expected amount of a won deal before the first win
    "true_deal_value_customer",  # ... and once the account is a customer
)

# Accounts per chunk: fixed, because the chunking is part of the random stream.
CHUNK_ACCOUNTS = 25_000
# Tables keyed by account: a partitioned export splits each of them by account range.
ACCOUNT_TABLES = ("accounts", "opportunities", "activities", *CUSTOMER_TABLES[:3])

# ---------------------------------------------------------------------------------------------
# The world: categories and the true effects (log-odds) the generator uses.
# ---------------------------------------------------------------------------------------------
INDUSTRIES = (
    # name, share, win effect, revenue per employee (USD), technology propensity, deal-size effect
    ("software", 0.15, 0.55, 260_000, 0.8, 0.2),
    ("fintech", 0.08, 0.45, 420_000, 0.6, 0.35),
    ("healthcare", 0.11, 0.15, 180_000, 0.0, 0.1),
    ("telecom", 0.06, 0.2, 350_000, 0.3, 0.25),
    ("manufacturing", 0.14, 0.0, 220_000, -0.3, 0.1),
    ("retail", 0.12, -0.35, 150_000, -0.2, -0.2),
    ("logistics", 0.08, -0.1, 200_000, -0.3, 0.0),
    ("education", 0.07, -0.6, 90_000, -0.4, -0.45),
    ("media", 0.07, -0.15, 200_000, 0.2, -0.1),
    ("energy", 0.06, -0.05, 500_000, -0.2, 0.3),
    ("professional services", 0.06, -0.2, 160_000, 0.1, -0.15),
)
IND_NAME = np.array([i[0] for i in INDUSTRIES], dtype=object)
IND_SHARE = np.array([i[1] for i in INDUSTRIES])
IND_WIN = np.array([i[2] for i in INDUSTRIES])
IND_REV_PER_EMP = np.array([i[3] for i in INDUSTRIES], dtype=float)
IND_TECH = np.array([i[4] for i in INDUSTRIES])
IND_AMOUNT = np.array([i[5] for i in INDUSTRIES])
# The industries of the true ICP (also an interaction partner of intent surges).
ICP_INDUSTRIES = ("software", "fintech", "healthcare", "telecom")
IND_IS_ICP = np.isin(IND_NAME, ICP_INDUSTRIES)
SOFTWARE_OR_FINTECH = np.isin(IND_NAME, ("software", "fintech"))
HEALTHCARE = IND_NAME == "healthcare"

REGIONS = (
    # region, share, win effect, territory code, countries, country shares
    ("north america", 0.42, 0.25, "NA", ("United States", "Canada"), (0.85, 0.15)),
    (
        "europe",
        0.30,
        0.1,
        "EMEA",
        ("United Kingdom", "Germany", "France", "Netherlands", "Sweden", "Spain"),
        (0.3, 0.25, 0.2, 0.1, 0.08, 0.07),
    ),
    (
        "apac",
        0.18,
        -0.2,
        "APAC",
        ("Australia", "Japan", "Singapore", "India"),
        (0.3, 0.25, 0.2, 0.25),
    ),
    ("latam", 0.10, -0.4, "LATAM", ("Brazil", "Mexico", "Chile", "Colombia"), (0.5, 0.3, 0.1, 0.1)),
)
REGION_NAME = np.array([r[0] for r in REGIONS], dtype=object)
REGION_SHARE = np.array([r[1] for r in REGIONS])
REGION_WIN = np.array([r[2] for r in REGIONS])
EUROPE = 1

# Employee bands: lower edges and the (non-monotone) true win effect: mid-market buys best.
BAND_EDGES = np.array([50, 200, 1000, 5000])
BAND_WIN = np.array([-0.65, -0.1, 0.35, 0.45, -0.05])
SEGMENTS = np.array(["SMB", "Mid-Market", "Enterprise"], dtype=object)

TECH = ("tech_cloud", "tech_crm", "tech_marketing_automation", "tech_data_warehouse")
# per flag: base log-odds, slope per decade of employees, weight of the industry's propensity
TECH_ADOPTION = np.array([[0.6, 0.3, 0.8], [0.0, 0.6, 0.5], [-0.6, 0.4, 0.6], [-1.4, 0.7, 0.7]])
TECH_WIN = np.array([0.15, 0.35, 0.1, 0.25])

# Indexes into features.tables.ACTIVITY_TYPES; intent surges carry a topic.
INTENT = 5
MEETING = 3
TOPICS = (
    "crm",
    "data warehouse",
    "marketing automation",
    "analytics",
    "security",
    "cloud migration",
    "ai",
    "compliance",
)
# Events over the whole span for an account of average engagement and ~120 employees.
BASE_EVENTS = np.array([38.0, 6.0, 16.0, 1.5, 1.5, 4.0])
# Extra events in the 90 days before a deal is created, per unit of the deal's intensity.
PRE_DEAL_EVENTS = np.array([6.0, 2.0, 3.0, 1.3, 0.5, 1.6])
PRE_DEAL_DAYS = 90
# A deal's pre-deal intensity: log-normal, scaled by the account's engagement propensity.
INTENSITY_MU, INTENSITY_SIGMA, INTENSITY_ENGAGEMENT_POWER = -0.2, 0.8, 0.3
WEB_VISIT_P = 0.55  # page views of a web session: geometric
COUNT_BITS = 6
COUNT_MAX = (1 << COUNT_BITS) - 1  # page views of one web session, capped
# How much one occurrence weighs in the true engagement score: meetings and intent matter most.
ENGAGEMENT_WEIGHT = np.array([0.1, 0.8, 0.3, 3.0, 1.2, 2.0])

PRODUCTS = np.array(["core", "analytics", "automation", "enterprise suite", "add-on"], dtype=object)
PRODUCT_LOGIT = np.array([1.0, 0.3, 0.5, -1.2, -0.6])
PRODUCT_SIZE_SLOPE = np.array([-0.3, 0.0, 0.0, 0.9, -0.2])  # per decade of employees
PRODUCT_CUSTOMER = np.array([0.0, 0.2, 0.0, 0.0, 1.4])  # existing customers buy add-ons
PRODUCT_AMOUNT = np.array([0.0, 0.3, 0.1, 0.9, -0.9])
SOURCES = np.array(["inbound", "outbound", "partner", "event"], dtype=object)
AMOUNT_SIGMA = 0.55

WIN_INTERCEPT = -4.1

# Deal creation: a Poisson process uniform over the span, about 4.4 deals per 1,096 days for an
# account of average engagement and ~120 employees, capped at 25 over the span.
DEALS_PER_1096_DAYS = 4.4
MAX_DEALS = 25.0
# Close cycle: median CYCLE_DAYS x (employees / 120) ** CYCLE_SIZE_POWER, log-normal noise,
# longer for wins than for losses, rounded to whole days and clipped to [CYCLE_MIN, CYCLE_MAX].
CYCLE_DAYS, CYCLE_SIZE_POWER, CYCLE_SIGMA = 55.0, 0.12, 0.45
CYCLE_WON, CYCLE_LOST = 1.25, 0.8
CYCLE_MIN, CYCLE_MAX = 20, 180

# Word lists as text: the names are for display only.
_PREFIX_WORDS = (
    "Acme Blue Summit North Bright Iron Silver Cedar Vertex Nova Atlas Pioneer Harbor Granite "
    "Apex Crescent Lumen Quantum Sterling Evergreen Falcon Maple Orbit Prairie Redwood Sable "
    "Titan Union Willow Zenith Beacon Cobalt Delta Ember Frontier Golden Horizon Juniper "
    "Keystone Liberty"
)
_CORE_WORDS = (
    "Analytics Systems Logistics Health Labs Works Dynamics Networks Partners Foods Energy "
    "Capital Media Robotics Software Solutions Industries Retail Bio Freight Learning Telecom "
    "Motors Digital Data Cloud Foundry Supply Pharma Studios"
)
_FIRST_NAMES = (
    "Ava Ben Chloe Diego Emma Farid Grace Hiro Isla Jonas Kira Liam Maya Noah Olivia Priya"
)
_LAST_NAMES = (
    "Adams Becker Costa Dubois Evans Fischer Garcia Hughes Ito Jensen Kowalski Lopez Moreau "
    "Nakamura Okafor Patel Quinn Rossi"
)
PREFIXES = np.array(_PREFIX_WORDS.split(), dtype=object)
CORES = np.array(_CORE_WORDS.split(), dtype=object)
LEGAL = np.array(["Inc", "LLC", "Ltd", "GmbH", "SA", "Corp", "Group", "Co"], dtype=object)
FIRST = np.array(_FIRST_NAMES.split(), dtype=object)
LAST = np.array(_LAST_NAMES.split(), dtype=object)
REPS_PER_TERRITORY = 4


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoData:
    """raw: accounts, opportunities, activities as a CRM would export them (dirt included);
    truth: ``opportunities`` (opportunity_id, true_p_win, true_expected_amount), ``accounts``
    (account_id, as_of, true_p_win, true_deal_value, true_expected_value) and ``process`` (one
    row per account: the parameters of its deal and activity processes, PROCESS_COLUMNS)."""

    raw: dict[str, pd.DataFrame]
    truth: dict[str, pd.DataFrame]
    start: pd.Timestamp
    end: pd.Timestamp


def generate(
    n_accounts: int = 5000,
    seed: int = 7,
    dirt_rate: float = 0.02,
    start: str = "2023-10-01",
    years: int = 3,
    *,
    thousands_separators: bool = True,
    truth_as_of: TruthAsOf = "monthly",
    workers: int = 1,
) -> DemoData:
    """Generate the demo CRM in memory.

    ``thousands_separators`` makes ``annual_revenue`` and ``amount`` text with a few
    "1,250,000" cells, as in a CSV export; without it they stay numeric (as in Parquet).
    ``truth_as_of="end"`` keeps only the end-date snapshot of the account truth.
    """
    span = _Span.of(start, years)
    output: Output = "frames_text" if thousands_separators else "frames"
    jobs = _plan(n_accounts, seed, dirt_rate, span, output, truth_as_of)
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
    for payload in _run(jobs, workers):
        for name, frame in payload.items():
            parts[name].append(frame)
    frames = {name: pd.concat(parts[name], ignore_index=True) for name in TABLES}
    return DemoData(
        raw={
            name: frames[name]
            for name in ("accounts", "opportunities", "activities", *CUSTOMER_TABLES[:3])
        },
        truth={
            "opportunities": frames["opportunities_truth"],
            "accounts": frames["accounts_truth"],
            "process": frames["process_truth"],
            "customers": frames["customers_truth"],
        },
        start=span.start_ts,
        end=span.end_ts,
    )


def write_demo(
    out_dir: str | Path,
    n_accounts: int = 5000,
    seed: int = 7,
    dirt_rate: float = 0.02,
    fmt: Format = "csv",
    *,
    start: str = "2023-10-01",
    years: int = 3,
    truth_as_of: TruthAsOf = "monthly",
    workers: int | None = None,
    part_accounts: int | None = None,
) -> dict[str, Path]:
    """Write accounts, opportunities, activities and ``truth/`` into ``out_dir``, chunk by chunk.

    Returns the written paths by name: accounts, opportunities, activities, opportunities_truth,
    accounts_truth, process_truth (CSV files, or Parquet with ``fmt="parquet"``). ``workers`` processes generate
    chunks in parallel (default: up to 2 when there is more than one chunk); the bytes written
    do not depend on it.

    ``part_accounts`` (Parquet only) writes a partitioned export: every table keyed by account
    becomes a directory of parts (``accounts/part-00000.parquet``, ``opportunities/part-00000
    .parquet``, ...), part k of every table holding the same ``part_accounts`` consecutive
    accounts, so one part of each table is a complete, smaller export. The truth stays one file
    per table. The rows are those of the unpartitioned export.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be 'csv' or 'parquet', not {fmt!r}")
    if part_accounts is not None and (fmt != "parquet" or part_accounts < 1):
        raise ValueError(
            f"part_accounts must be a positive number of accounts with fmt='parquet', "
            f"not {part_accounts!r} with fmt={fmt!r}"
        )
    span = _Span.of(start, years)
    jobs = _plan(n_accounts, seed, dirt_rate, span, fmt, truth_as_of)
    out = Path(out_dir)
    paths = {
        "accounts": out / f"accounts.{fmt}",
        "opportunities": out / f"opportunities.{fmt}",
        "activities": out / f"activities.{fmt}",
        "opportunities_truth": out / "truth" / f"opportunities_truth.{fmt}",
        "accounts_truth": out / "truth" / f"accounts_truth.{fmt}",
        "process_truth": out / "truth" / f"process_truth.{fmt}",
        **customer_paths(out, fmt),
    }
    (out / "truth").mkdir(parents=True, exist_ok=True)
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if part_accounts is not None:
        for name in ACCOUNT_TABLES:
            paths[name] = out / name
        _write_parts(paths, _run(jobs, workers), part_accounts)
        return paths
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if fmt == "csv":
        with ExitStack() as stack:
            files = {name: stack.enter_context(path.open("wb")) for name, path in paths.items()}
            for payload in _run(jobs, workers):
                for name, data in payload.items():
                    files[name].write(data)
        return paths
    schemas = _parquet_schemas()
    with ExitStack() as stack:
        # without the stored Arrow schema, dictionary columns read back as plain strings
        writers = {
            name: stack.enter_context(
                pq.ParquetWriter(str(path), schemas[name], store_schema=False)
            )
            for name, path in paths.items()
        }
        for payload in _run(jobs, workers):
            for name, table in payload.items():
                writers[name].write_table(table)
    return paths


def _write_parts(
    paths: dict[str, Path], payloads: Iterator[dict[str, Any]], part_accounts: int
) -> None:
    """The chunks' Arrow tables written as a partitioned export (see ``write_demo``).

    A part may span chunks and a chunk parts: rows go to the part of their account's number,
    and a part's files are closed once the chunks have moved past its accounts."""
    schemas = _parquet_schemas()
    for name in ACCOUNT_TABLES:
        paths[name].mkdir(parents=True, exist_ok=True)
        for stale in paths[name].glob("part-*.parquet"):
            stale.unlink()  # a smaller export written here before must not leave parts behind
    with ExitStack() as stack:
        whole = {
            name: stack.enter_context(
                pq.ParquetWriter(str(path), schemas[name], store_schema=False)
            )
            for name, path in paths.items()
            if name not in ACCOUNT_TABLES
        }
        open_parts: dict[tuple[str, int], pq.ParquetWriter] = {}
        n_accounts = 0
        for payload in payloads:
            done = n_accounts // part_accounts
            for key in [k for k in open_parts if k[1] < done]:
                open_parts.pop(key).close()
            for name, table in payload.items():
                if name not in ACCOUNT_TABLES:
                    whole[name].write_table(table)
                    continue
                part = (_account_numbers(table["account_id"]) - 1) // part_accounts
                for number in np.unique(part):
                    key = (name, int(number))
                    if key not in open_parts:
                        path = paths[name] / f"part-{int(number):05d}.parquet"
                        open_parts[key] = pq.ParquetWriter(
                            str(path), schemas[name], store_schema=False
                        )
                    open_parts[key].write_table(table.filter(pa.array(part == number)))
            n_accounts = int(_account_numbers(payload["accounts"]["account_id"]).max())
        for writer in open_parts.values():
            writer.close()
    # Every part has a file of every table, empty when its accounts have no such rows.
    for number in range(-(-n_accounts // part_accounts)):
        for name in ACCOUNT_TABLES:
            path = paths[name] / f"part-{number:05d}.parquet"
            if not path.exists():
                pq.write_table(schemas[name].empty_table(), str(path), store_schema=False)


def _account_numbers(column: pa.ChunkedArray) -> np.ndarray:
    """The numbers of the generator's account ids (A-000123 -> 123); the activities' ids are
    dictionary-coded, so their dictionary is parsed once."""
    array = column.combine_chunks()
    if pa.types.is_dictionary(array.type):
        return _account_numbers(pa.chunked_array([array.dictionary]))[
            array.indices.to_numpy(zero_copy_only=False)
        ]
    return pc.cast(pc.utf8_slice_codeunits(array, 2), pa.int64()).to_numpy(zero_copy_only=False)


def true_logit(
    firmographic: np.ndarray,
    icp_industry: np.ndarray,
    engagement: dict[str, np.ndarray],
    prior_won: np.ndarray,
    prior_lost: np.ndarray,
) -> np.ndarray:
    """The hidden log-odds of winning a deal created on a given day.

    ``engagement`` holds the weighted engagement score over the 30/90/180 days before
    (``s30``, ``s90``, ``s180``), meetings in the last 90 days and intent surges in the last 30.
    Log terms give diminishing returns; the indicator terms are interactions a linear model on
    raw counts cannot express.
    """
    s30, s90, s180 = engagement["s30"], engagement["s90"], engagement["s180"]
    meetings = engagement["meetings_90"] > 0
    eng = (
        0.42 * np.log1p(s30)
        + 0.25 * np.log1p(np.maximum(s90 - s30, 0))
        + 0.1 * np.log1p(np.maximum(s180 - s90, 0))
        + 0.45 * meetings
        + 0.35 * ((engagement["intent_30"] >= 2) & icp_industry)
    )
    customer = prior_won > 0
    history = (
        0.5 * np.log1p(prior_won)
        - 0.4 * np.log1p(prior_lost)
        + 0.3 * (customer & meetings)
        - 0.25 * (~customer & (prior_lost >= 2))
    )
    return WIN_INTERCEPT + firmographic + eng + history


# ---------------------------------------------------------------------------------------------
# Time span
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Span:
    start: np.datetime64  # day resolution
    days: int  # the end date is start + days - 1

    @classmethod
    def of(cls, start: str, years: int) -> _Span:
        if years < 1:
            raise ValueError(f"years must be at least 1, not {years}")
        first = pd.Timestamp(start).normalize()
        end = first + pd.DateOffset(years=years) - pd.Timedelta(days=1)
        return cls(np.datetime64(first.date(), "D"), int((end - first).days) + 1)

    @property
    def start_ts(self) -> pd.Timestamp:
        return pd.Timestamp(self.start)

    @property
    def end_ts(self) -> pd.Timestamp:
        return pd.Timestamp(self.start + np.timedelta64(self.days - 1, "D"))

    def snapshot_days(self, truth_as_of: TruthAsOf) -> np.ndarray:
        """Day offsets of the account-truth snapshots: each month's first day, and the end."""
        end = self.days - 1
        if truth_as_of == "end":
            return np.array([end])
        months = np.arange(
            self.start.astype("datetime64[M]"), (self.start + end).astype("datetime64[M]") + 1
        )
        offsets = (months.astype("datetime64[D]") - self.start).astype(np.int64)
        offsets = offsets[(offsets >= 0) & (offsets < end)]
        return np.append(offsets, end)

    def dates(self, offsets: np.ndarray) -> np.ndarray:
        return (self.start + offsets.astype("timedelta64[D]")).astype("datetime64[ns]")


# ---------------------------------------------------------------------------------------------
# One chunk of accounts with everything that belongs to them
# ---------------------------------------------------------------------------------------------
@dataclass
class _Activities:
    account_id: np.ndarray  # the chunk's account ids (the dictionary)
    account: np.ndarray  # index into account_id
    day: np.ndarray
    type_label: np.ndarray  # index into _type_labels(): clean labels, then dirty variants
    topic: np.ndarray  # index into TOPICS, -1 for none
    count: np.ndarray
    span: _Span


@dataclass(frozen=True)
class _Job:
    """One chunk of accounts: what a worker process needs to generate and serialise it."""

    seed: int
    chunk: int
    first_account: int
    n_accounts: int
    first_opportunity: int
    id_width: int
    dirt_rate: float
    span: _Span
    output: Output
    truth_as_of: TruthAsOf


def _plan(
    n_accounts: int,
    seed: int,
    dirt_rate: float,
    span: _Span,
    output: Output,
    truth_as_of: TruthAsOf,
) -> list[_Job]:
    """The chunks, each knowing where its opportunity numbers start.

    Opportunity ids run across chunks, so the deal count of every chunk is drawn up front by
    replaying the start of its random stream (accounts and deal counts: a few percent of the work).
    """
    if n_accounts < 1:
        raise ValueError(f"n_accounts must be at least 1, not {n_accounts}")
    if not 0 <= dirt_rate < 0.5:
        raise ValueError(f"dirt_rate must be in [0, 0.5), not {dirt_rate}")
    if truth_as_of not in ("monthly", "end"):
        raise ValueError(f"truth_as_of must be 'monthly' or 'end', not {truth_as_of!r}")
    id_width = max(6, len(str(n_accounts)))
    jobs, first_opportunity = [], 1
    for chunk, first in enumerate(range(0, n_accounts, CHUNK_ACCOUNTS)):
        n = min(CHUNK_ACCOUNTS, n_accounts - first)
        job = _Job(
            seed, chunk, first, n, first_opportunity, id_width, dirt_rate, span, output, truth_as_of
        )
        jobs.append(job)
        rng = _rng(job)
        first_opportunity += int(_deal_counts(rng, _draw_accounts(rng, n, span), span).sum())
    return jobs


def _rng(job: _Job) -> np.random.Generator:
    return np.random.default_rng([job.seed, job.chunk])


def _run(jobs: list[_Job], workers: int) -> Iterator[dict[str, Any]]:
    """The chunks' payloads in order; with workers, a few chunks are generated ahead."""
    if workers <= 1 or len(jobs) == 1:
        for job in jobs:
            yield _make_chunk(job)
        return
    # spawn: forking a process that runs Arrow's thread pools is unsafe
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: list[Future[dict[str, Any]]] = []
        for job in jobs:
            pending.append(pool.submit(_make_chunk, job))
            if len(pending) > workers:  # bounded: memory stays flat while the parent writes
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def _make_chunk(job: _Job) -> dict[str, Any]:
    """Generate one chunk and serialise it as ``job.output`` asks: DataFrames, CSV bytes or
    Arrow tables, keyed by TABLES."""
    rng = _rng(job)
    span = job.span
    acc = _draw_accounts(rng, job.n_accounts, span)
    deals = _draw_deal_dates(rng, acc, span)
    act = _draw_activities(rng, acc, deals, span)
    index = _EngagementIndex(act["account"], act["day"], act["type"], act["count"], span.days)
    deals_eng = index.windows(deals["account"], deals["day"])
    deals.update(_draw_outcomes(rng, acc, deals, deals_eng, span))
    deals.update(_draw_deal_terms(rng, acc, deals, deals_eng))

    account_ids = _ids(
        "A-", np.arange(job.first_account + 1, job.first_account + job.n_accounts + 1), job.id_width
    )
    opportunity_ids = _ids("O-", np.arange(len(deals["account"])) + job.first_opportunity, 7)
    text = job.output in ("csv", "frames_text")
    frames = {
        "accounts": _accounts_frame(rng, acc, account_ids, job.dirt_rate, text),
        "opportunities": _opportunities_frame(
            rng, deals, account_ids, opportunity_ids, span, job.dirt_rate, text
        ),
        "opportunities_truth": pd.DataFrame(
            {
                "opportunity_id": pd.array(opportunity_ids, dtype="str"),
                "true_p_win": np.round(deals["p_win"], 6),
                "true_expected_amount": np.round(deals["expected_amount"], 2),
            }
        ),
        "accounts_truth": _account_truth(acc, deals, index, span, job.truth_as_of, account_ids),
        "process_truth": _process_truth(acc, span, account_ids),
        **draw_customers(
            job.seed,
            job.chunk,
            acc,
            deals,
            span.snapshot_days("monthly")[:-1],
            span.start,
            span.days,
            account_ids,
        ),
    }
    activities = _dirty_activities(rng, act, account_ids, span, job.dirt_rate)
    if job.output in ("frames", "frames_text"):
        frames["accounts_truth"]["account_id"] = frames["accounts_truth"]["account_id"].astype(
            "str"
        )
        return {**frames, "activities": _activities_frame(activities)}
    if job.output == "csv":
        header = job.chunk == 0
        payload = {
            name: frame.to_csv(index=False, header=header, lineterminator="\n").encode()
            for name, frame in frames.items()
        }
        buffer = io.BytesIO()
        options = pa_csv.WriteOptions(
            include_header=header, quoting_style="none", quoting_header="none"
        )
        pa_csv.write_csv(_activities_table(activities, "csv"), buffer, options)
        return {**payload, "activities": buffer.getvalue()}
    schemas = _parquet_schemas()
    payload = {
        name: pa.Table.from_pandas(frame, preserve_index=False).cast(schemas[name])
        for name, frame in frames.items()
    }
    return {**payload, "activities": _activities_table(activities, "parquet")}


def _parquet_schemas() -> dict[str, pa.Schema]:
    text, day = pa.string(), pa.timestamp("ns")
    coded = pa.dictionary(pa.int32(), pa.string())
    return customer_schemas() | {
        "accounts": pa.schema(
            [
                ("account_id", text),
                ("name", text),
                ("industry", text),
                ("employees", pa.int64()),
                ("annual_revenue", pa.float64()),
                ("country", text),
                ("region", text),
                ("founded_year", pa.int64()),
                ("territory", text),
                ("owner", text),
                *[(name, pa.bool_()) for name in TECH],
            ]
        ),
        "opportunities": pa.schema(
            [
                ("opportunity_id", text),
                ("account_id", text),
                ("created_at", day),
                ("closed_at", day),
                ("outcome", text),
                ("amount", pa.float64()),
                ("product", text),
                ("source", text),
            ]
        ),
        "activities": pa.schema(
            [
                ("account_id", coded),
                ("occurred_at", day),
                ("type", coded),
                ("topic", coded),
                ("count", pa.int32()),
            ]
        ),
        "opportunities_truth": pa.schema(
            [
                ("opportunity_id", text),
                ("true_p_win", pa.float64()),
                ("true_expected_amount", pa.float64()),
            ]
        ),
        "accounts_truth": pa.schema(
            [
                ("account_id", coded),
                ("as_of", day),
                ("true_p_win", pa.float64()),
                ("true_deal_value", pa.float64()),
                ("true_expected_value", pa.float64()),
            ]
        ),
        "process_truth": pa.schema(
            [
                ("account_id", text),
                *[
                    (name, pa.bool_() if name == "true_icp_industry" else pa.float64())
                    for name in PROCESS_COLUMNS[1:]
                ],
            ]
        ),
    }


def _draw_accounts(rng: np.random.Generator, n: int, span: _Span) -> dict[str, np.ndarray]:
    industry = rng.choice(len(INDUSTRIES), size=n, p=IND_SHARE)
    region = rng.choice(len(REGIONS), size=n, p=REGION_SHARE)
    country = np.empty(n, dtype=object)
    for r, (_, _, _, _, names, shares) in enumerate(REGIONS):
        rows = np.flatnonzero(region == r)
        country[rows] = np.array(names, dtype=object)[
            rng.choice(len(names), size=len(rows), p=shares)
        ]
    employees = np.clip(np.round(np.exp(rng.normal(np.log(120), 1.5, n))), 2, 400_000)
    decades = np.log10(employees) - 2.0  # 0 at 100 employees
    revenue = employees * IND_REV_PER_EMP[industry] * np.exp(rng.normal(0, 0.45, n))
    revenue = np.round(revenue, -3)
    age = 2 + rng.gamma(2.0, 6.0, n) + 8 * np.clip(decades, 0, None) * rng.random(n)
    founded = (span.start_ts.year - np.round(age)).clip(1850)
    adoption = (
        TECH_ADOPTION[:, 0][None, :]
        + TECH_ADOPTION[:, 1][None, :] * decades[:, None]
        + TECH_ADOPTION[:, 2][None, :] * IND_TECH[industry][:, None]
    )
    tech = rng.random((n, len(TECH))) < 1 / (1 + np.exp(-adoption))
    band = np.searchsorted(BAND_EDGES, employees, side="right")
    segment = np.searchsorted([200, 2000], employees, side="right")
    territory = region * len(SEGMENTS) + segment
    owner = territory * REPS_PER_TERRITORY + rng.integers(0, REPS_PER_TERRITORY, n)

    firmographic = (
        IND_WIN[industry]
        + BAND_WIN[band]
        + REGION_WIN[region]
        + tech @ TECH_WIN
        + 0.3 * (tech[:, 1] & tech[:, 3])  # CRM and a warehouse: the integration story lands
        - 0.35 * (~tech[:, 0] & (employees >= 1000))  # large and on-premise: long security reviews
        - 0.45 * (SOFTWARE_OR_FINTECH[industry] & (employees < 50))  # startups cannot afford it
        - 0.3 * (HEALTHCARE[industry] & (region == EUROPE))  # data-residency objections
    )
    # Engagement propensity is heavy-tailed and a little higher for good-fit accounts.
    engagement = np.exp(rng.normal(-0.5, 1.0, n) + 0.25 * firmographic)
    return {
        "industry": industry,
        "region": region,
        "country": country,
        "employees": employees,
        "decades": decades,
        "revenue": revenue,
        "founded": founded,
        "tech": tech,
        "territory": territory,
        "owner": owner,
        "firmographic": firmographic,
        "icp_industry": IND_IS_ICP[industry],
        "engagement": engagement,
        "topic": rng.integers(0, len(TOPICS), n),
        "prefix": rng.integers(0, len(PREFIXES), n),
        "core": rng.integers(0, len(CORES), n),
        "legal": rng.integers(0, len(LEGAL), n),
        # amount scale of a deal with this account before product and noise
        "log_amount": np.log(22_000)
        + 0.42 * np.log(employees / 120)
        + IND_AMOUNT[industry]
        + 0.1 * (region <= EUROPE),
    }


def _expected_deals(acc: dict[str, np.ndarray], span: _Span) -> np.ndarray:
    """Expected deals per account over the span: more for engaged and for larger accounts."""
    rate = acc["engagement"] ** 0.7 * (acc["employees"] / 120) ** 0.12
    return np.minimum(DEALS_PER_1096_DAYS * rate * span.days / 1096, MAX_DEALS)


def _deal_counts(rng: np.random.Generator, acc: dict[str, np.ndarray], span: _Span) -> np.ndarray:
    """Deals per account: about 4.4 over three years on average, more for engaged accounts."""
    return rng.poisson(_expected_deals(acc, span))


def _draw_deal_dates(
    rng: np.random.Generator, acc: dict[str, np.ndarray], span: _Span
) -> dict[str, np.ndarray]:
    """Deal creation days, sorted by account then day, and each deal's pre-deal intensity."""
    per_account = _deal_counts(rng, acc, span)
    account = np.repeat(np.arange(len(per_account)), per_account)
    day = rng.integers(0, span.days, len(account))
    order = np.lexsort((day, account))
    account, day = account[order], day[order]
    intensity = (
        np.exp(rng.normal(INTENSITY_MU, INTENSITY_SIGMA, len(account)))
        * acc["engagement"][account] ** INTENSITY_ENGAGEMENT_POWER
    )
    return {"account": account, "day": day, "intensity": intensity}


def _draw_activities(
    rng: np.random.Generator, acc: dict[str, np.ndarray], deals: dict[str, np.ndarray], span: _Span
) -> dict[str, np.ndarray]:
    """Activity events (a base rate per account and a rise before each deal), aggregated to one
    row per (account, day, type, topic) with a count, sorted by account, day, type, topic.

    Each event is packed into one int64: (account, day, type/topic slot) in the high bits and
    its count in the low bits, so that one plain sort (much faster than an argsort) groups the
    events of a row together; this is the bulk of the generator's work at a million accounts.
    """
    n = len(acc["engagement"])
    n_slots = INTENT + len(TOPICS)  # type and intent topic in one code
    base_rate = _activity_rate(acc) * span.days / 1096
    packed = []
    for t in range(len(ACTIVITY_TYPES)):
        # the span's base events, uniform over the days
        k = rng.poisson(BASE_EVENTS[t] * base_rate)
        account = np.repeat(np.arange(n, dtype=np.int64), k)
        day = rng.integers(0, span.days, len(account), dtype=np.int64)
        # the rise before each deal: denser the closer the creation day
        k = rng.poisson(PRE_DEAL_EVENTS[t] * deals["intensity"])
        src = np.repeat(np.arange(len(k)), k)
        before = 1 + (PRE_DEAL_DAYS * rng.random(len(src)) ** 2).astype(np.int64)
        pre_day = deals["day"][src] - before
        kept = pre_day >= 0  # the rise before deals created early in the span is cut off
        account = np.concatenate([account, deals["account"][src[kept]]])
        day = np.concatenate([day, pre_day[kept]])
        if t == INTENT:
            topic = np.where(
                rng.random(len(account)) < 0.6,
                acc["topic"][account],
                rng.integers(0, len(TOPICS), len(account)),
            )
            slot = INTENT + topic
        else:
            slot = np.full(len(account), t, dtype=np.int64)
        # a web visit is a session of one or more page views
        count = np.minimum(rng.geometric(WEB_VISIT_P, len(account)), COUNT_MAX) if t == 0 else 1
        packed.append((((account * span.days + day) * n_slots + slot) << COUNT_BITS) | count)
    events = np.concatenate(packed)
    del packed
    events.sort()
    key = events >> COUNT_BITS
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    total = np.add.reduceat(events & COUNT_MAX, starts) if len(events) else events
    del events
    key = key[starts]
    del starts
    slot = (key % n_slots).astype(np.int8)
    cell = key // n_slots
    del key
    kind = np.minimum(slot, INTENT)
    account = (cell // span.days).astype(np.int32)
    return {
        "account": account,
        "day": (cell - account * span.days).astype(np.int32),
        "type": kind,
        "topic": np.where(kind == INTENT, slot - INTENT, -1).astype(np.int8),
        "count": total.astype(np.int32),
    }


class _EngagementIndex:
    """Cumulative engagement per account and day: any window before any day in O(log n)."""

    windows_days = (30, 90, 180)

    def __init__(
        self, account: np.ndarray, day: np.ndarray, kind: np.ndarray, count: np.ndarray, days: int
    ):
        self.days = days
        # sorted, because rows are sorted by account then day
        self.key = account.astype(np.int64) * days + day
        self.cum = {
            "score": np.r_[0.0, np.cumsum(ENGAGEMENT_WEIGHT[kind] * count)],
            "meetings": np.r_[0, np.cumsum(np.where(kind == MEETING, count, 0), dtype=np.int32)],
            "intent": np.r_[0, np.cumsum(np.where(kind == INTENT, count, 0), dtype=np.int32)],
        }

    def _before(self, account: np.ndarray, day: np.ndarray) -> np.ndarray:
        """Row position of the first activity of `account` on or after `day` (clipped at 0)."""
        return np.searchsorted(self.key, account * self.days + np.maximum(day, 0), side="left")

    def windows(self, account: np.ndarray, day: np.ndarray) -> dict[str, np.ndarray]:
        """Engagement in the windows [day - w, day - 1]."""
        now = self._before(account, day)
        pos = {w: self._before(account, day - w) for w in self.windows_days}
        score = self.cum["score"]
        return {
            "s30": score[now] - score[pos[30]],
            "s90": score[now] - score[pos[90]],
            "s180": score[now] - score[pos[180]],
            "meetings_90": self.cum["meetings"][now] - self.cum["meetings"][pos[90]],
            "intent_30": self.cum["intent"][now] - self.cum["intent"][pos[30]],
        }


def _draw_outcomes(
    rng: np.random.Generator,
    acc: dict[str, np.ndarray],
    deals: dict[str, np.ndarray],
    eng: dict[str, np.ndarray],
    span: _Span,
) -> dict[str, np.ndarray]:
    """Outcomes and close days. A deal's truth needs the outcomes of the account's earlier deals
    that closed before it was created, so deals are decided rank by rank (first deal of every
    account, then the second, ...): vectorised over accounts, a short loop over ranks."""
    account, day = deals["account"], deals["day"]
    n_deals = len(account)
    u = rng.random(n_deals)
    cycle_noise = rng.normal(0, CYCLE_SIGMA, n_deals)
    base = acc["firmographic"][account]
    icp_industry = acc["icp_industry"][account]
    cycle_median = _cycle_median(acc)[account]

    first = np.searchsorted(account, account, side="left")
    rank = np.arange(n_deals) - first
    won = np.zeros(n_deals, dtype=bool)
    closed = np.full(n_deals, np.iinfo(np.int64).max // 2)
    prior_won = np.zeros(n_deals, dtype=np.int64)
    prior_lost = np.zeros(n_deals, dtype=np.int64)
    logit = np.zeros(n_deals)
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(rank))] if n_deals else np.array([0])
    for r in range(len(bounds) - 1):
        idx = by_rank[bounds[r] : bounds[r + 1]]
        for j in range(r):
            prev = idx - (r - j)
            done = closed[prev] < day[idx]
            prior_won[idx] += done & won[prev]
            prior_lost[idx] += done & ~won[prev]
        eng_r = {k: v[idx] for k, v in eng.items()}
        logit[idx] = true_logit(
            base[idx], icp_industry[idx], eng_r, prior_won[idx], prior_lost[idx]
        )
        won[idx] = u[idx] < _sigmoid(logit[idx])
        # lost deals die faster: closed_at is a leakage trap
        cycle = (
            cycle_median[idx] * np.exp(cycle_noise[idx]) * np.where(won[idx], CYCLE_WON, CYCLE_LOST)
        )
        closed[idx] = day[idx] + np.clip(np.round(cycle), CYCLE_MIN, CYCLE_MAX).astype(np.int64)
    is_open = closed > span.days - 1
    return {
        "p_win": _sigmoid(logit),
        "won": won & ~is_open,
        "open": is_open,
        "closed_day": np.where(is_open, -1, closed),
        "prior_won": prior_won,
    }


def _product_probabilities(decades: np.ndarray, customer: np.ndarray) -> np.ndarray:
    logits = (
        PRODUCT_LOGIT[None, :]
        + PRODUCT_SIZE_SLOPE[None, :] * decades[:, None]
        + PRODUCT_CUSTOMER[None, :] * customer[:, None]
    )
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


def _expected_amount(log_amount: np.ndarray, product: np.ndarray) -> np.ndarray:
    """Mean of the log-normal amount of a won deal."""
    return np.exp(log_amount + PRODUCT_AMOUNT[product] + AMOUNT_SIGMA**2 / 2)


def _draw_deal_terms(
    rng: np.random.Generator,
    acc: dict[str, np.ndarray],
    deals: dict[str, np.ndarray],
    eng: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    account = deals["account"]
    n_deals = len(account)
    probs = _product_probabilities(acc["decades"][account], deals["prior_won"] > 0)
    product = (rng.random(n_deals)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
    product = np.minimum(product, len(PRODUCTS) - 1)
    log_amount = acc["log_amount"][account] + PRODUCT_AMOUNT[product]
    amount = np.round(np.exp(log_amount + rng.normal(0, AMOUNT_SIGMA, n_deals)), -2)
    # engaged accounts come inbound more often; the source never moves the win probability
    inbound = 0.25 + 0.35 * (1 - np.exp(-eng["s30"] / 10))
    source_probs = np.column_stack(
        [inbound, (1 - inbound) * 0.55, (1 - inbound) * 0.25, (1 - inbound) * 0.2]
    )
    source = (rng.random(n_deals)[:, None] > np.cumsum(source_probs, axis=1)).sum(axis=1)
    quoted_when_lost = rng.random(n_deals) < 0.2
    return {
        "product": product,
        "source": np.minimum(source, len(SOURCES) - 1),
        "amount": amount,
        "expected_amount": _expected_amount(acc["log_amount"][account], product),
        "quoted_when_lost": quoted_when_lost,
    }


def _account_truth(
    acc: dict[str, np.ndarray],
    deals: dict[str, np.ndarray],
    index: _EngagementIndex,
    span: _Span,
    truth_as_of: TruthAsOf,
    account_ids: np.ndarray,
) -> pd.DataFrame:
    """Per account and snapshot day: the truth for a deal created that day."""
    n = len(account_ids)
    snap = span.snapshot_days(truth_as_of)
    account = np.repeat(np.arange(n), len(snap))
    day = np.tile(snap, n)
    eng = index.windows(account, day)

    closed = ~deals["open"]
    key = deals["account"][closed] * span.days + deals["closed_day"][closed]
    order = np.argsort(key, kind="stable")
    key = key[order]
    cum_won = np.r_[0, np.cumsum(deals["won"][closed][order])]
    cum_all = np.r_[0, np.arange(1, len(key) + 1)]
    lo = np.searchsorted(key, account * span.days, side="left")
    hi = np.searchsorted(key, account * span.days + day, side="left")
    prior_won = cum_won[hi] - cum_won[lo]
    prior_lost = (cum_all[hi] - cum_all[lo]) - prior_won

    p_win = _sigmoid(
        true_logit(
            acc["firmographic"][account], acc["icp_industry"][account], eng, prior_won, prior_lost
        )
    )
    # the expected deal value moves with the date only through "already a customer"
    value_by_status = np.column_stack(
        [_mean_deal_value(acc, np.full(n, customer)) for customer in (False, True)]
    )
    deal_value = value_by_status[account, (prior_won > 0).astype(np.int64)]
    return pd.DataFrame(
        {
            # categorical: a million accounts' monthly snapshots never become Python strings
            "account_id": pd.Categorical.from_codes(
                account, categories=pd.Index(account_ids, dtype="str")
            ),
            "as_of": span.dates(day),
            "true_p_win": np.round(p_win, 6),
            "true_deal_value": np.round(deal_value, 2),
            "true_expected_value": np.round(p_win * deal_value, 2),
        }
    )


def _process_truth(
    acc: dict[str, np.ndarray], span: _Span, account_ids: np.ndarray
) -> pd.DataFrame:
    """Per account: the parameters of its deal and activity processes, constant over time, from
    which ``demo.truth.horizon_truth`` computes the expected won revenue in any horizon."""
    n = len(account_ids)
    return pd.DataFrame(
        {
            "account_id": pd.array(account_ids, dtype="str"),
            "true_deal_rate": np.round(_expected_deals(acc, span) / span.days, 10),
            "true_activity_rate": np.round(_activity_rate(acc) / 1096, 10),
            "true_engagement": np.round(acc["engagement"], 8),
            "true_base_logit": np.round(acc["firmographic"], 8),
            "true_icp_industry": acc["icp_industry"],
            "true_cycle_days": np.round(_cycle_median(acc), 6),
            "true_deal_value_prospect": np.round(_mean_deal_value(acc, np.zeros(n, bool)), 2),
            "true_deal_value_customer": np.round(_mean_deal_value(acc, np.ones(n, bool)), 2),
        }
    )


def _cycle_median(acc: dict[str, np.ndarray]) -> np.ndarray:
    """Median days from creation to close, before the won/lost factor and the noise."""
    return CYCLE_DAYS * (acc["employees"] / 120) ** CYCLE_SIZE_POWER


def _activity_rate(acc: dict[str, np.ndarray]) -> np.ndarray:
    """Base activity per 1,096 days, in multiples of BASE_EVENTS: engaged and larger accounts
    are busier."""
    return acc["engagement"] * (acc["employees"] / 120) ** 0.15


def _mean_deal_value(acc: dict[str, np.ndarray], customer: np.ndarray) -> np.ndarray:
    """Expected amount of a won deal over the account's product mix."""
    probs = _product_probabilities(acc["decades"], customer)
    by_product = np.exp(acc["log_amount"][:, None] + PRODUCT_AMOUNT[None, :] + AMOUNT_SIGMA**2 / 2)
    return (probs * by_product).sum(axis=1)


# ---------------------------------------------------------------------------------------------
# Raw export: frames with dirt
# ---------------------------------------------------------------------------------------------
def _accounts_frame(
    rng: np.random.Generator,
    acc: dict[str, np.ndarray],
    account_ids: np.ndarray,
    dirt_rate: float,
    separators: bool,
) -> pd.DataFrame:
    n = len(account_ids)
    region_code = np.array([r[3] for r in REGIONS], dtype=object)
    territory_names = (region_code[:, None] + "-" + SEGMENTS[None, :]).ravel()
    reps = np.arange(len(territory_names) * REPS_PER_TERRITORY)
    rep_names = FIRST[reps % len(FIRST)] + " " + LAST[(reps * 7 + reps // len(FIRST)) % len(LAST)]
    frame = pd.DataFrame(
        {
            "account_id": account_ids,
            "name": PREFIXES[acc["prefix"]] + " " + CORES[acc["core"]] + " " + LEGAL[acc["legal"]],
            "industry": _dirty_labels(rng, IND_NAME[acc["industry"]], dirt_rate),
            "employees": pd.array(acc["employees"].astype(np.int64), dtype="Int64"),
            "annual_revenue": acc["revenue"],
            "country": acc["country"],
            "region": _dirty_labels(rng, REGION_NAME[acc["region"]], dirt_rate / 2),
            "founded_year": pd.array(acc["founded"].astype(np.int64), dtype="Int64"),
            "territory": territory_names[acc["territory"]],
            "owner": rep_names[acc["owner"]],
            **{name: acc["tech"][:, i] for i, name in enumerate(TECH)},
        }
    )
    for column in ("industry", "employees", "annual_revenue", "country", "founded_year"):
        frame.loc[rng.random(n) < dirt_rate, column] = None
    if separators:
        frame["annual_revenue"] = _as_text(rng, frame["annual_revenue"], dirt_rate)
    for column in ("name", "industry", "country", "region", "territory", "owner"):
        frame[column] = frame[column].astype("str")
    return _with_duplicates(rng, frame, dirt_rate)


def _opportunities_frame(
    rng: np.random.Generator,
    deals: dict[str, np.ndarray],
    account_ids: np.ndarray,
    opportunity_ids: np.ndarray,
    span: _Span,
    dirt_rate: float,
    separators: bool,
) -> pd.DataFrame:
    n_deals = len(deals["account"])
    is_open = deals["open"]
    outcome = np.where(is_open, "open", np.where(deals["won"], "won", "lost")).astype(object)
    # lost deals mostly carry amount 0: a leakage trap for anyone who uses amount as a feature
    lost_zero = ~is_open & ~deals["won"] & ~deals["quoted_when_lost"]
    amount = np.where(is_open, np.nan, np.where(lost_zero, 0.0, deals["amount"]))
    closed_at = np.where(
        is_open, np.datetime64("NaT"), span.dates(np.maximum(deals["closed_day"], 0))
    )
    product = PRODUCTS[deals["product"]].copy()
    source = SOURCES[deals["source"]].copy()
    product[rng.random(n_deals) < dirt_rate] = None
    source[rng.random(n_deals) < dirt_rate] = None
    frame = pd.DataFrame(
        {
            "opportunity_id": pd.array(opportunity_ids, dtype="str"),
            "account_id": pd.array(account_ids[deals["account"]], dtype="str"),
            "created_at": span.dates(deals["day"]),
            "closed_at": closed_at.astype("datetime64[ns]"),
            "outcome": pd.array(
                _dirty_labels(rng, outcome, dirt_rate, OUTCOME_VARIANTS), dtype="str"
            ),
            "amount": amount,
            "product": pd.array(product, dtype="str"),
            "source": pd.array(source, dtype="str"),
        }
    )
    if separators:
        frame["amount"] = _as_text(rng, frame["amount"], dirt_rate)
    return _with_duplicates(rng, frame, dirt_rate)


OUTCOME_VARIANTS = {
    "won": ("Won", " won ", "WON", "Closed Won"),
    "lost": ("Lost", "lost ", "LOST", "Closed Lost"),
    "open": ("Open", " OPEN", "In Progress"),
}


def _case_variants(label: str) -> tuple[str, ...]:
    return (label.title(), label.upper(), f"{label} ", f" {label.title()}")


def _dirty_labels(
    rng: np.random.Generator,
    labels: np.ndarray,
    rate: float,
    variants: dict[str, tuple[str, ...]] | None = None,
) -> np.ndarray:
    """Replace a share `rate` of labels with case/spacing variants (or the given synonyms)."""
    out = labels.astype(object).copy()
    hit = np.flatnonzero(rng.random(len(out)) < rate)
    pick = rng.integers(0, 1 << 30, len(hit))
    uniques: list[str] = list(pd.unique(out[hit])) if len(hit) else []
    for label in uniques:  # a handful of distinct labels
        rows = out[hit] == label
        options = np.array(variants[label] if variants else _case_variants(label), dtype=object)
        out[hit[rows]] = options[pick[rows] % len(options)]
    return out


def _as_text(rng: np.random.Generator, values: pd.Series, rate: float) -> pd.Series:
    """Numbers as a CSV export writes them: whole numbers, empty when missing, and a share
    `rate` with thousands separators ("1,250,000")."""
    numbers = pd.to_numeric(values)
    missing = numbers.isna().to_numpy()
    whole = np.where(missing, 0, numbers.to_numpy(dtype=float, na_value=0.0)).astype(np.int64)
    text = whole.astype(str).astype(object)
    text[missing] = None
    rows = np.flatnonzero((rng.random(len(text)) < rate) & ~missing & (whole >= 1000))
    text[rows] = [f"{v:,}" for v in whole[rows]]  # only the few dirty cells
    return pd.Series(text, index=values.index, dtype="str")


def _duplicate_rows(rng: np.random.Generator, n_rows: int, rate: float) -> np.ndarray | None:
    """Row positions with a few exact duplicates, each right after its original (exports repeat
    rows on retries); None when there are none."""
    if rate <= 0 or n_rows == 0:
        return None
    times = 1 + (rng.random(n_rows) < rate / 4)
    return np.repeat(np.arange(n_rows), times)


def _with_duplicates(rng: np.random.Generator, frame: pd.DataFrame, rate: float) -> pd.DataFrame:
    rows = _duplicate_rows(rng, len(frame), rate)
    return frame if rows is None else frame.iloc[rows].reset_index(drop=True)


def _type_labels() -> np.ndarray:
    variants = [_case_variants(t)[i % 4] for i, t in enumerate(ACTIVITY_TYPES)]
    return np.array(list(ACTIVITY_TYPES) + variants, dtype=object)


def _dirty_activities(
    rng: np.random.Generator,
    act: dict[str, np.ndarray],
    account_ids: np.ndarray,
    span: _Span,
    rate: float,
) -> _Activities:
    rows = len(act["day"])
    label = (act["type"] + len(ACTIVITY_TYPES) * (rng.random(rows) < rate)).astype(np.int8)
    keep = _duplicate_rows(rng, rows, rate)
    if keep is None:
        keep = slice(None)  # type: ignore[assignment]  # no copy when there is no dirt
    return _Activities(
        account_id=account_ids,
        account=act["account"][keep].astype(np.int32),
        day=act["day"][keep].astype(np.int32),
        type_label=label[keep],
        topic=act["topic"][keep].astype(np.int8),
        count=act["count"][keep].astype(np.int32),
        span=span,
    )


def _activities_frame(act: _Activities) -> pd.DataFrame:
    topics = np.array([*TOPICS, None], dtype=object)
    return pd.DataFrame(
        {
            "account_id": pd.array(act.account_id[act.account], dtype="str"),
            "occurred_at": act.span.dates(act.day),
            "type": pd.array(_type_labels()[act.type_label], dtype="str"),
            "topic": pd.array(topics[act.topic], dtype="str"),
            "count": act.count.astype(np.int64),
        }
    )


def _activities_table(act: _Activities, fmt: Format) -> pa.Table:
    """Dictionary-encoded columns: a million accounts' activities never become Python strings."""
    topics = pa.array(list(TOPICS))
    topic = pa.DictionaryArray.from_arrays(
        pa.array(act.topic.astype(np.int32), mask=act.topic < 0), topics
    )
    if fmt == "csv":
        occurred = pa.array(act.span.start.astype(np.int64) + act.day, pa.int32()).cast(pa.date32())
    else:
        occurred = pa.array(act.span.dates(act.day).astype(np.int64), pa.timestamp("ns"))
    return pa.table(
        {
            "account_id": pa.DictionaryArray.from_arrays(
                pa.array(act.account, pa.int32()), pa.array(act.account_id.astype(str))
            ),
            "occurred_at": occurred,
            "type": pa.DictionaryArray.from_arrays(
                pa.array(act.type_label.astype(np.int32)), pa.array(_type_labels().astype(str))
            ),
            "topic": topic,
            "count": pa.array(act.count, pa.int32()),
        }
    )


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _ids(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    digits = np.char.zfill(numbers.astype(str), width)
    return np.char.add(prefix, digits).astype(object)
