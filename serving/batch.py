"""Batch scoring of the whole account list, and the files it leaves behind.

Tiers are population-relative (20/60/20 of *this* list, or so many seats per rep), so a batch
run scores every account before it tiers any: predictions are computed chunk by chunk (bounded
memory, a progress bar that moves), tiers are assigned once over all accounts, then reasons
are phrased chunk by chunk again.

Three files come out, each written atomically (a temporary file in the target folder, then
``os.replace``), and only after every account has been scored: a run killed half-way leaves
the previous outputs untouched and no partial file.

- the scores (``--out``; Parquet, or CSV by extension) with every field;
- a CRM write-back CSV next to it (``<stem>_crm.csv``): account_id, tier, reason_summary,
  p_convert, expected_revenue, open_pipeline, icp_fit;
- the account snapshot (feature rows as of the scoring date) that the HTTP service reads to
  score an account by its id. Its Parquet metadata carries the scoring date, the model
  version and the feature row of an account nobody knows anything about (the cold-start row
  that a new account's own fields are laid over).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from serving.snapshot import Snapshot as Snapshot  # re-exported: batch scoring writes it
from serving.snapshot import jsonable, write_snapshot
from serving.snapshot import read_snapshot as read_snapshot  # re-exported for callers of batch
from tiering.bundle import Bundle
from tiering.config import Config
from tiering.customers import with_change_reasons

if TYPE_CHECKING:
    from features.icp import IcpPatterns
    from serving.tier_changes import RunHistory
    from tiering.capacity import CapacityPlan, GroupedTiers
    from tiering.policy import TierAssignment
    from tiering.reuse import ReasonCache

CRM_COLUMNS = (
    "account_id",
    "tier",
    "reason_summary",
    "p_convert",
    "expected_revenue",
    "open_pipeline",
    "icp_fit",
    "segment",
    "customer_tier",
    "revenue_at_risk",
    "expected_expansion",
    "customer_change_reason",
)
# With the tier history on: "previous tier", "tier since", "change reason".
CRM_HISTORY_COLUMNS = ("previous_tier", "tier_since", "change_reason")
# Accounts whose reason texts are phrased at once inside a scoring chunk: the texts and the
# explainer's working data of only this many accounts are alive together.
REASON_CHUNK_SIZE = 10_000
# An account id no account list contains: its feature row is "nothing known" as of the date.
COLD_START_ID = "\x00cold-start"

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): stage is "features", "reasons" or "write"; counts are accounts
(files for "write")."""


@dataclass(frozen=True)
class BatchResult:
    scores: pd.DataFrame
    output: Path
    crm: Path
    snapshot: Path
    as_of: pd.Timestamp
    model_version: str
    cutoffs_used: str
    capacity_warnings: tuple[str, ...] | None = None
    """With [capacity] within owner or territory: the groups' warnings (None: global)."""
    books: pd.DataFrame | None = None
    """Owner and territory of each scored account (same order as ``scores``)."""


def crm_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}_crm.csv")


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


# ----------------------------------------------------------------------------- scoring


def score_accounts(
    config: Config,
    bundle: Bundle,
    as_of: pd.Timestamp | str | None = None,
    out: Path = Path("outputs/tiers.parquet"),
    progress: Progress | None = None,
    *,
    snapshot: Path | None = None,
    reasons: bool = True,
) -> BatchResult:
    """Tier every account of the configured account list as of ``as_of`` (default: the
    configured date, else the end of the data) and write the three output files."""
    from features.build import build_features, scoring_requests
    from features.contract import load_tables

    out = Path(out)
    if out.is_dir():  # refused before the work, not when the finished file cannot replace it
        raise ValueError(
            f"--out {out} is a directory (a cluster run's Parquet parts?); a single-process run "
            f"writes one file: choose a file, e.g. --out {out.with_name(out.name + '.parquet')}, "
            "or score on the cluster again with --cluster"
        )
    report = progress or _no_progress
    tables = load_tables(config.data).tables
    when = _scoring_date(as_of, config, tables.end_of_data())
    requests = scoring_requests(tables.accounts, when)
    features = _in_chunks(
        requests,
        config.scoring.chunk_size,
        lambda chunk: build_features(tables, chunk, config.features),
        lambda done: report("features", done, len(requests)),
    )
    cold = build_features(
        tables,
        pd.DataFrame({"account_id": [COLD_START_ID], "as_of": [when]}),
        config.features,
    )
    snapshot_path = Path(snapshot) if snapshot is not None else config.scoring.snapshot
    history = _run_history(config, bundle, when, tables.accounts)
    plan = _capacity_plan(config, bundle, features, tables.accounts)
    if history is not None and config.elevation.enabled:
        from serving.elevations import intent_signal_of

        history.signal = intent_signal_of(config, tables.activities, features["account_id"], when)
    previous = previous_customer_tiers(out)
    with atomic_outputs([out, crm_path(out), snapshot_path]) as (out_tmp, crm_tmp, snap_tmp):
        scores, cutoffs_used = write_scores(
            bundle,
            features,
            out_tmp,
            crm_tmp,
            like=out,
            chunk_size=config.scoring.chunk_size,
            reasons=reasons,
            top_reasons=config.scoring.top_reasons,
            progress=lambda done: report("reasons", done, len(features)),
            history=history,
            capacity=plan,
            previous_customers=previous,
            cache=None if history is None or not reasons else history.reason_cache(bundle),
        )
        report("write", 1, 3)
        write_snapshot(
            features, snap_tmp, as_of=when, model_version=bundle.version, cold_start=cold
        )
        report("write", 2, 3)
        # Last, in one transaction: a failure here leaves the previous files in place too.
        if history is not None:
            history.commit()
        report("write", 3, 3)
    grouped = _write_group_cutoffs(plan, bundle, scores, snapshot_path, when)
    return BatchResult(
        scores=scores,
        output=out,
        crm=crm_path(out),
        snapshot=snapshot_path,
        as_of=when,
        model_version=bundle.version,
        cutoffs_used=cutoffs_used,
        capacity_warnings=(
            None
            if grouped is None or grouped.plan.within == "global"
            else tuple(grouped.assignment.warnings)
        ),
        books=_books(tables.accounts, scores["account_id"]),
    )


def _run_history(
    config: Config, bundle: Bundle, when: pd.Timestamp, accounts: pd.DataFrame
) -> RunHistory | None:
    from serving.tier_changes import RunHistory, open_history

    if not config.history.enabled:
        return None
    return RunHistory(
        open_history(config),
        config,
        when,
        accounts=accounts,
        model_version=bundle.version,
        policy=bundle.policy,
    )


def _capacity_plan(
    config: Config, bundle: Bundle, features: pd.DataFrame, accounts: pd.DataFrame
) -> CapacityPlan | None:
    from tiering.capacity import plan_capacity, read_reps

    cap = config.capacity
    reserved = (
        config.elevation.reserved_share
        if config.elevation.enabled and config.history.enabled
        else 0.0
    )
    if cap.within == "global" and reserved <= 0:
        return None
    unique = accounts.drop_duplicates("account_id")
    keyed = unique.set_index(unique["account_id"].astype(str))
    ids = features["account_id"].astype(str)

    def column(name: str) -> pd.Series | None:
        return keyed[name].reindex(ids) if name in keyed else None

    reps = read_reps(cap.reps) if cap.reps is not None else None
    return plan_capacity(
        column("owner"), column("territory"), cap, bundle.policy, reps, reserved_share=reserved
    )


def _write_group_cutoffs(
    plan: CapacityPlan | None,
    bundle: Bundle,
    scores: pd.DataFrame,
    snapshot: Path,
    when: pd.Timestamp,
) -> GroupedTiers | None:
    """The groups' cut-offs beside the snapshot, for single online requests."""
    from serving.group_cutoffs import write_group_cutoffs
    from tiering.capacity import assign_within

    grouped = None
    if plan is not None:
        grouped = assign_within(
            scores["priority"].to_numpy(dtype=np.float64),
            scores["icp_fit"].to_numpy(dtype=np.float64),
            scores["evidence"].to_numpy(dtype=np.float64),
            bundle.policy,
            plan,
        )
    write_group_cutoffs(grouped, scores["account_id"].to_numpy(), snapshot, when)
    return grouped


def _books(accounts: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    unique = accounts.drop_duplicates("account_id")
    keyed = unique.set_index(unique["account_id"].astype(str))
    cols = [c for c in ("owner", "territory") if c in keyed]
    return keyed[cols].reindex(ids.astype(str)).reset_index(drop=True)


def _scoring_date(
    as_of: pd.Timestamp | str | None, config: Config, end_of_data: pd.Timestamp
) -> pd.Timestamp:
    if as_of is not None:
        try:
            return pd.Timestamp(as_of).normalize()
        except (TypeError, ValueError):
            raise ValueError(f"as_of: not a date: {as_of!r} (use YYYY-MM-DD)") from None
    if config.data.as_of is not None:
        return pd.Timestamp(config.data.as_of)
    return end_of_data


def _in_chunks(
    frame: pd.DataFrame,
    chunk_size: int,
    fn: Callable[[pd.DataFrame], pd.DataFrame],
    done: Callable[[int], None],
) -> pd.DataFrame:
    parts = []
    for start in range(0, len(frame), chunk_size):
        parts.append(fn(frame.iloc[start : start + chunk_size]))
        done(min(start + chunk_size, len(frame)))
    if not parts:
        return fn(frame)
    return pd.concat(parts) if len(parts) > 1 else parts[0]


@dataclass(frozen=True)
class TieredPopulation:
    """Predictions, ICP fit, priority and tiers of the whole list (no reason texts yet)."""

    scores: pd.DataFrame
    """OUTPUT_COLUMNS of ``tiering.scoring``, one row per account."""
    icp: IcpPatterns
    """ICP fit of every account, labels kept per pattern until a chunk's texts need them."""
    assignment: TierAssignment
    grouped: GroupedTiers | None = None
    """Tiers within owners or territories ([capacity]); None for the global policy."""

    @property
    def cutoffs_used(self) -> str:
        if self.grouped is not None:
            from tiering.capacity import describe_plan

            return describe_plan(self.grouped)
        return self.assignment.describe_cutoffs()


def tier_population(
    bundle: Bundle,
    features: pd.DataFrame,
    chunk_size: int,
    capacity: CapacityPlan | None = None,
) -> TieredPopulation:
    """``tiering.scoring.score(population=True)`` without the texts: the model runs chunk by
    chunk, the tiers are assigned once over every account (within the groups of
    ``capacity``, when given)."""
    ranked, icp = rank_population(bundle, features, chunk_size)
    return assign_population(bundle, ranked, icp, capacity)


def rank_population(
    bundle: Bundle, features: pd.DataFrame, chunk_size: int
) -> tuple[pd.DataFrame, IcpPatterns]:
    """What tiers are assigned from, chunk by chunk: ``account_id``, ``RANK_COLUMNS`` and the
    customers' figures (``CUSTOMER_COLUMNS``), one row per feature row; and the ICP labels."""
    from features.icp import IcpPatterns, icp_patterns
    from tiering.customers import CUSTOMER_COLUMNS
    from tiering.scoring import customers, rank

    parts, fits = [], []
    for start in range(0, len(features), chunk_size):
        chunk = features.iloc[start : start + chunk_size]
        fit = icp_patterns(chunk, bundle.icp)
        icp = pd.DataFrame({"icp_fit": fit.score.astype(np.float64, copy=False)}, index=chunk.index)
        part = rank(bundle, chunk, fit=icp)
        part.insert(0, "account_id", chunk["account_id"].to_numpy(dtype=object))
        parts.append(part)
        fits.append(fit)
    ranked = pd.concat(parts)
    segment = customers(bundle, features, population=True).set_axis(ranked.index)
    return pd.concat([ranked, segment[CUSTOMER_COLUMNS]], axis=1), IcpPatterns.concat(fits)


POPULATION_COLUMNS = [
    "account_id",
    "p_convert",
    "expected_revenue",
    "icp_fit",
    "evidence",
    "priority",
    "customer_priority",
]
"""What the one pass over the whole list reads of each account: the tier policy's inputs, the
customers' priority, and the figures of the run's summary (a few numbers per account)."""
DECIDED_COLUMNS = ["tier", "tier_rule", "cutoffs_used", "model_version", "customer_tier"]
"""What that pass decides of each account."""


def assign_population(
    bundle: Bundle,
    ranked: pd.DataFrame,
    icp: IcpPatterns,
    capacity: CapacityPlan | None = None,
) -> TieredPopulation:
    """Tiers assigned once over every row of ``ranked`` (``rank_population``'s frame, or the
    parts of several concatenated): :func:`decide_population`, then the decisions laid on the
    rows (:func:`with_decisions`)."""
    decided = decide_population(bundle, ranked[POPULATION_COLUMNS], capacity)
    return dataclasses.replace(
        decided,
        scores=with_decisions(bundle, ranked, decided.scores),
        icp=icp,
    )


def decide_population(
    bundle: Bundle, ranked: pd.DataFrame, capacity: CapacityPlan | None = None
) -> TieredPopulation:
    """The tier policy over every row of ``ranked`` (at least ``POPULATION_COLUMNS``), within
    the groups of ``capacity`` when given, and the customer-success tiers over every customer.
    Its scores are ``POPULATION_COLUMNS`` and ``DECIDED_COLUMNS``; it has no ICP labels."""
    from tiering.customers import population_customer_tiers
    from tiering.scoring import model_version, tier

    scored = ranked[POPULATION_COLUMNS].copy()
    grouped = None
    if capacity is None:
        assignment = tier(scored, bundle, population=True)
        described: Any = assignment.describe_cutoffs()
    else:
        from tiering.capacity import assign_within

        grouped = assign_within(
            scored["priority"].to_numpy(dtype=np.float64),
            scored["icp_fit"].to_numpy(dtype=np.float64),
            scored["evidence"].to_numpy(dtype=np.float64),
            bundle.policy,
            capacity,
        )
        assignment = grouped.assignment
        described = grouped.describe_rows()
    # The texts repeat over the list: categoricals hold each once, not once per account.
    scored["tier"] = assignment.tier.astype(np.int64)
    scored["tier_rule"] = pd.Categorical(assignment.rule)
    scored["cutoffs_used"] = (
        _repeated(described, len(scored))
        if isinstance(described, str)
        else pd.Categorical(described)
    )
    scored["model_version"] = _repeated(model_version(bundle), len(scored))
    scored["customer_tier"] = population_customer_tiers(scored["customer_priority"], bundle)
    return TieredPopulation(scored, None, assignment, grouped)  # type: ignore[arg-type]


def _repeated(text: str, n: int) -> Any:
    """``text`` as a categorical of ``n`` rows: held once, not once per row."""
    return pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), dtype=pd.CategoricalDtype([text]))


def with_decisions(bundle: Bundle, ranked: pd.DataFrame, decided: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``ranked`` (``rank_population``'s frame) with what the pass over the whole
    list decided of them (``decided``: :func:`decide_population`'s scores, or the stability
    policy's, for the same rows in the same order): ``OUTPUT_COLUMNS`` of ``tiering.scoring``,
    then the customers' columns."""
    from tiering.customers import CUSTOMER_COLUMNS, with_customer_tiers
    from tiering.scoring import OUTPUT_COLUMNS

    if len(decided) != len(ranked):
        raise ValueError(f"{len(decided)} decisions for {len(ranked)} ranked rows")
    texts = {c: np.asarray(decided[c], dtype=object) for c in DECIDED_COLUMNS[1:4]}
    scored = ranked.assign(tier=decided["tier"].to_numpy(dtype=np.int64), **texts)
    customer = with_customer_tiers(scored[CUSTOMER_COLUMNS], decided["customer_tier"], bundle)
    return pd.concat([scored[OUTPUT_COLUMNS], customer], axis=1)


def scored_chunks(
    bundle: Bundle,
    features: pd.DataFrame,
    population: TieredPopulation,
    *,
    chunk_size: int,
    reasons: bool = True,
    top_reasons: int = 3,
    reason_chunk_size: int = REASON_CHUNK_SIZE,
    cache: ReasonCache | None = None,
) -> Iterator[pd.DataFrame]:
    """Every field of ``tiering.scoring.score`` for one chunk at a time, reasons phrased
    against the whole list's tiers (ranks and cut-offs of all accounts), ``reason_chunk_size``
    accounts at a time. With ``cache``, the SHAP values of accounts whose model input did not
    change come from it, and every chunk carries ``tiering.reuse.CACHE_COLUMNS`` for the
    history to store (``RunHistory.annotate`` takes them out)."""
    for start in range(0, len(features), chunk_size):
        stop = min(start + chunk_size, len(features))
        part = population.scores.iloc[start:stop]
        if not reasons:
            yield part
            continue
        pieces = [
            _phrased(
                bundle,
                features,
                population,
                slice(sub, min(sub + reason_chunk_size, stop)),
                top_reasons,
                cache,
            )
            for sub in range(start, stop, reason_chunk_size)
        ]
        yield pd.concat(pieces) if len(pieces) > 1 else pieces[0]


def _phrased(
    bundle: Bundle,
    features: pd.DataFrame,
    population: TieredPopulation,
    rows: slice,
    top: int,
    cache: ReasonCache | None = None,
) -> pd.DataFrame:
    """The scores of ``rows`` with every text field."""
    part = population.scores.iloc[rows]
    fit = population.icp.rows(rows)
    # Explained once for all of ``rows`` (the groups below phrase slices of it).
    explained = None if cache is None else cache.explain(bundle, features.iloc[rows])
    contributions = (
        bundle.contributions(features.iloc[rows]) if explained is None else explained.contributions
    )
    if population.grouped is None:
        text = _chunk_reasons(
            bundle,
            features.iloc[rows],
            part,
            fit.shared_missed(),
            population.assignment,
            rows,
            top,
            contributions,
        )
    else:
        from tiering.capacity import grouped_reasons

        text = grouped_reasons(
            population.grouped,
            population.assignment,
            rows,
            fit.shared_missed(),
            lambda sub, assignment, missed: _chunk_reasons(
                bundle,
                features.iloc[rows].iloc[sub],
                part.iloc[sub],
                missed,
                assignment,
                slice(None),
                top,
                (contributions[0].iloc[sub], contributions[1].iloc[sub]),
            ),
        )
    met, missed = fit.label_lists()
    if explained is not None:
        from tiering.reuse import FINGERPRINT_COLUMN, PACKED_COLUMN

        cached: dict[str, Any] = {
            FINGERPRINT_COLUMN: explained.fingerprints,
            PACKED_COLUMN: pd.Series(explained.packed, index=part.index, dtype=object),
        }
        part = part.assign(**cached)
    return part.assign(
        headline=text["headline"].to_numpy(),
        reasons=text["reasons"].to_numpy(),
        reason_summary=text["reason_summary"].to_numpy(),
        tier_rule_text=text["tier_rule_text"].to_numpy(),
        icp_met=pd.Series(met, index=part.index, dtype=object),
        icp_missed=pd.Series(missed, index=part.index, dtype=object),
        next_tier_hint=text["next_tier_hint"].to_numpy(),
        playbook=text["playbook"].to_numpy(),
    )


def score_population(
    bundle: Bundle,
    features: pd.DataFrame,
    *,
    chunk_size: int,
    reasons: bool = True,
    top_reasons: int = 3,
    reason_chunk_size: int = REASON_CHUNK_SIZE,
) -> tuple[pd.DataFrame, str]:
    """The whole list scored in memory (every field), and the cut-offs used."""
    population = tier_population(bundle, features, chunk_size)
    chunks = scored_chunks(
        bundle,
        features,
        population,
        chunk_size=chunk_size,
        reasons=reasons,
        top_reasons=top_reasons,
        reason_chunk_size=reason_chunk_size,
    )
    return pd.concat(list(chunks)), population.cutoffs_used


def write_scores(
    bundle: Bundle,
    features: pd.DataFrame,
    scores_path: Path,
    crm_file: Path,
    *,
    like: Path,
    chunk_size: int,
    reasons: bool = True,
    top_reasons: int = 3,
    progress: Callable[[int], None] = lambda done: None,
    reason_chunk_size: int = REASON_CHUNK_SIZE,
    history: RunHistory | None = None,
    capacity: CapacityPlan | None = None,
    previous_customers: pd.DataFrame | None = None,
    cache: ReasonCache | None = None,
) -> tuple[pd.DataFrame, str]:
    """Score the whole list and stream the scores and the CRM rows to disk chunk by chunk, so
    the reason texts of only one chunk are ever in memory. Returns the scores without the
    texts (``tiering.scoring.OUTPUT_COLUMNS``) and the cut-offs used. With ``history``, the
    tiers are those of the stability policy and every row says how its tier changed, and
    ``cache`` (``RunHistory.reason_cache``) stands in for the SHAP values it holds."""
    population = tier_population(bundle, features, chunk_size, capacity)
    if history is not None:
        population = history.prepare(population)
    population = dataclasses.replace(
        population, scores=with_change_reasons(population.scores, previous_customers)
    )
    with _ChunkWriter(scores_path, csv=like.suffix.lower() == ".csv") as writer:
        chunks = scored_chunks(
            bundle,
            features,
            population,
            chunk_size=chunk_size,
            reasons=reasons,
            top_reasons=top_reasons,
            reason_chunk_size=reason_chunk_size,
            cache=cache,
        )
        for i, chunk in enumerate(chunks):
            if history is not None:
                chunk = history.annotate(chunk)
            writer.write(chunk)
            crm_rows(chunk).to_csv(crm_file, mode="a" if i else "w", header=i == 0, index=False)
            progress(min((i + 1) * chunk_size, len(features)))
    return population.scores, population.cutoffs_used


def _chunk_reasons(
    bundle: Bundle,
    features: pd.DataFrame,
    scored: pd.DataFrame,
    icp_missed: list[list[str]],
    assignment: TierAssignment,
    rows: slice,
    top: int,
    contributions: tuple[pd.DataFrame, pd.DataFrame],
) -> pd.DataFrame:
    from tiering.scoring import phrase

    sub = dataclasses.replace(
        assignment,
        tier=assignment.tier[rows],
        rule=assignment.rule[rows],
        ceiling=assignment.ceiling[rows],
        by_priority=assignment.by_priority[rows],
        rank=None if assignment.rank is None else assignment.rank[rows],
    )
    return pd.DataFrame(
        phrase(bundle, features, scored, icp_missed, sub, top=top, contributions=contributions),
        index=features.index,
    )


def previous_customer_tiers(out: Path) -> pd.DataFrame | None:
    """The customer tiers of the run whose output ``out`` still holds (None without one, or
    from a version without customer tiers): what the customers' change reasons compare with."""
    out = Path(out)
    columns = ["account_id", "customer_tier"]
    try:
        if out.suffix.lower() == ".csv":
            frame = pd.read_csv(out, usecols=columns, dtype={"account_id": str})
        else:
            frame = pd.read_parquet(out, columns=columns)
    except (OSError, ValueError, KeyError):
        return None
    return frame


def crm_rows(scores: pd.DataFrame) -> pd.DataFrame:
    """The CRM write-back: one row per account, the columns a CRM field mapping expects."""
    frame = scores.reset_index(drop=True)
    if "reason_summary" not in frame:
        frame = frame.assign(reason_summary="")
    extra = [c for c in CRM_HISTORY_COLUMNS if c in frame]
    return frame.loc[:, [*CRM_COLUMNS, *extra]]


# ----------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_outputs(targets: list[Path]) -> Iterator[list[Path]]:
    """Yield one temporary path per target, in the target's folder (so ``os.replace`` is an
    atomic rename on the same file system); on success replace the targets, on any error or
    interruption remove the temporaries and leave the targets as they were."""
    temps: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_temps(target)
            temps.append(target.with_name(f".{target.name}.{os.getpid()}.tmp"))
        yield temps
        for tmp, target in zip(temps, targets, strict=True):
            os.replace(tmp, target)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def _remove_stale_temps(target: Path) -> None:
    """Temporaries of runs that were killed (SIGKILL runs no cleanup) and are no longer alive."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\.tmp$")
    for candidate in target.parent.glob(f".{target.name}.*.tmp"):
        match = pattern.match(candidate.name)
        if match and not _alive(int(match[1])):
            candidate.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_REASONS_JSON = json.JSONEncoder(default=jsonable, check_circular=False)
"""The drivers as JSON text: ``json.dumps``' text, one encoder for every account (drivers are
plain records, no cycle to look for)."""


class _ChunkWriter:
    """Appends scored chunks to one Parquet file (a row group each) or one CSV file.

    The structured drivers (lists of records whose values mix text and numbers) are stored as
    JSON text in both formats; lists of labels stay lists in Parquet and become "; "-joined
    text in CSV."""

    def __init__(self, path: Path, *, csv: bool) -> None:
        self.path = path
        self.csv = csv
        self.rows = 0
        self._parquet: Any = None

    def __enter__(self) -> _ChunkWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._parquet is not None:
            self._parquet.close()

    def write(self, chunk: pd.DataFrame) -> None:
        flat = chunk.reset_index(drop=True)
        reasons = [_REASONS_JSON.encode(v) for v in flat["reasons"]] if "reasons" in flat else None
        if self.csv:
            self._write_csv(flat if reasons is None else flat.assign(reasons=reasons))
        else:
            self._write_parquet(flat, reasons)
        self.rows += len(flat)

    def _write_csv(self, flat: pd.DataFrame) -> None:
        for col in flat.columns:
            if flat[col].dtype == object and flat[col].map(_is_list).any():
                flat[col] = flat[col].map(lambda v: "; ".join(map(str, v)) if _is_list(v) else v)
        flat.to_csv(self.path, mode="a" if self.rows else "w", header=not self.rows, index=False)

    def _write_parquet(self, flat: pd.DataFrame, reasons: list[str] | None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if reasons is None:
            table = pa.Table.from_pandas(flat, preserve_index=False)
        else:
            # The JSON texts go to Arrow as they are: through a pandas column they would be
            # converted once more (about 90 MB of text per 50,000 accounts).
            table = pa.Table.from_pandas(flat.drop(columns="reasons"), preserve_index=False)
            table = table.add_column(
                flat.columns.get_loc("reasons"), "reasons", pa.array(reasons, pa.large_string())
            )
        if self._parquet is None:
            # A column that is empty in the first chunk (e.g. no next-tier hint) has no type
            # yet; it is text in every later chunk.
            schema = pa.schema([_typed_field(f) for f in table.schema])
            self._parquet = pq.ParquetWriter(self.path, schema)
        self._parquet.write_table(table.cast(self._parquet.schema))


def _typed_field(field: Any) -> Any:
    """Text (or a list of text) where the first chunk held only missing values or empty lists."""
    import pyarrow as pa

    if pa.types.is_null(field.type):
        return field.with_type(pa.string())
    if pa.types.is_list(field.type) and pa.types.is_null(field.type.value_type):
        return field.with_type(pa.list_(pa.string()))
    return field


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple | np.ndarray)
