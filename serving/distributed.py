"""Batch scoring on a Dask cluster: the same run as ``serving.batch.score_accounts``, with the
heavy parts spread over the workers by account partition.

1. The account list is cut into partitions of ``partition_size`` accounts, in list order; each
   partition travels with its own accounts' deals and activities.
2. Per partition, on a worker: point-in-time features, both models' predictions, ICP fit,
   evidence and priority (``serving.batch.tier_population``, i.e. ``tiering.scoring.rank``).
   The features stay on the worker.
3. Once, on the client: tiers over the whole list from the priorities of every account
   (``serving.batch.POPULATION_COLUMNS``, a few numbers per account: the client holds about
   a hundred bytes per account), as the single-process run assigns them
   (``serving.batch.decide_population``; within owners or territories too, with
   ``[capacity]``), then the stability policy of the tier history. Elevations need every
   account's intent activities at once and are refused.
4. Per partition, on a worker: the partition's ranks with the tiers decided for them
   (``serving.batch.with_decisions``), and the reasons against the whole list's tiers and
   cut-offs (``serving.batch.scored_chunks``), written as one Parquet part per partition.

Outputs, all or nothing: ``out`` becomes a directory of Parquet parts (``part-00000.parquet``,
... in list order; any Parquet reader reads the directory as one table), with the CRM
write-back CSV and the account snapshot beside it as in a single-process run. Everything is
written to temporaries first and swapped in at the end, so a run killed half-way leaves the
previous outputs as they were. With the tier history on, the client annotates each partition
(previous tier, tier since, change reason) and the run is recorded in one transaction at the
end. On a remote cluster (``tcp://...``) the workers write the parts: ``out`` must be on a
file system the workers and the client share.

A partitioned export (every table a folder of ``part-NNNNN.parquet`` files, part k of each
holding the same accounts; ``tiering demo-data --part-accounts``) is read out of core: its parts
are the partitions, and each worker reads, checks against the data contract and featurises
only its own parts, so the client never loads a table and a worker's memory grows with a part,
not the export. Each part is read and featurised once; the two figures the features need from
the whole list (its end of data, when no date is given, and the global win rate's deal counts)
are applied afterwards, and only a part whose own data ends earlier than the list's is read
again.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from serving.batch import (
    COLD_START_ID,
    POPULATION_COLUMNS,
    BatchResult,
    Progress,
    TieredPopulation,
    _alive,
    _books,
    _capacity_plan,
    _ChunkWriter,
    _no_progress,
    _run_history,
    _scoring_date,
    _typed_field,
    _write_group_cutoffs,
    atomic_outputs,
    crm_path,
    crm_rows,
    decide_population,
    previous_customer_tiers,
    rank_population,
    scored_chunks,
    with_decisions,
)
from tiering.bundle import Bundle
from tiering.cluster import ClusterSpec, connect
from tiering.config import Config
from tiering.customers import with_change_reasons

if TYPE_CHECKING:
    from distributed import Client

    from features.config import DataConfig, FeatureConfig
    from features.tables import Tables
    from tiering.reuse import ReasonCache

_DAY = pd.Timedelta(days=1)
DEFAULT_PARTITIONS_PER_WORKER = 2
REASONS_IN_FLIGHT_PER_WORKER = 2
"""Partitions whose reasons are submitted ahead per worker: enough to keep every worker busy."""
"""Partitions per worker when no size is given: enough for the workers to share the load
evenly, few enough that each partition's fixed costs stay small."""


# ------------------------------------------------------------------------------ partitions


def partition_bounds(n: int, size: int) -> list[tuple[int, int]]:
    """Contiguous (start, stop) rows of at most ``size`` accounts each, in list order."""
    if size <= 0:
        raise ValueError(f"partition size must be positive, got {size}")
    return [(a, min(a + size, n)) for a in range(0, n, size)] or [(0, 0)]


def split_tables(
    tables: Tables, requests: pd.DataFrame, bounds: list[tuple[int, int]]
) -> list[Any]:
    """Per partition: its requests and the tables cut down to its accounts."""
    from features.tables import Tables

    ids = pd.Index(requests["account_id"].astype(str))
    part_of_request = np.zeros(len(ids), dtype=np.int64)
    for number, (start, stop) in enumerate(bounds):
        part_of_request[start:stop] = number

    def part_codes(frame: pd.DataFrame) -> np.ndarray:
        position = ids.get_indexer(pd.Index(frame["account_id"].astype(str)))
        return np.where(position >= 0, part_of_request[np.maximum(position, 0)], -1)

    def grouped(frame: pd.DataFrame | None) -> dict[int, pd.DataFrame]:
        if frame is None:
            return {}
        codes = part_codes(frame)
        order = np.argsort(codes, kind="stable")
        sorted_codes = codes[order]
        out = {}
        for number in range(len(bounds)):
            a, b = np.searchsorted(sorted_codes, [number, number + 1])
            out[number] = frame.iloc[np.sort(order[a:b])]
        return out

    # Every table keyed by account is cut the same way; optional ones stay None.
    names = ("accounts", "opportunities", "activities", "subscriptions", "usage", "tickets")
    parts = {name: grouped(getattr(tables, name)) for name in names}

    def cut(name: str, number: int) -> pd.DataFrame | None:
        return None if getattr(tables, name) is None else parts[name][number]

    return [
        (
            Tables(**{name: cut(name, number) for name in names}),  # type: ignore[arg-type]
            requests.iloc[start:stop],
        )
        for number, (start, stop) in enumerate(bounds)
    ]


# ------------------------------------------------------------------------ reading


@dataclass
class _Source:
    """What the run needs of the data before ranking: the scoring date, the partitions'
    account rows (in list order), a future of each partition's features on the workers, the
    cold-start row, and the accounts for the tier history and the capacity groups (None when
    neither is on: :func:`_needs_accounts`)."""

    when: pd.Timestamp
    bounds: list[tuple[int, int]]
    features_f: list[Any]
    cold: pd.DataFrame
    accounts: pd.DataFrame | None


def _cut_in_memory(
    config: Config, client: Client, as_of: pd.Timestamp | str | None, partition_size: int | None
) -> _Source:
    """One export file per table: the client loads the tables and cuts them into partitions."""
    from features.build import build_features, global_deal_counts, scoring_requests
    from features.contract import load_tables

    tables = load_tables(config.data).tables
    when = _scoring_date(as_of, config, tables.end_of_data())
    requests = scoring_requests(tables.accounts, when).reset_index(drop=True)
    n = len(requests)
    workers = max(len(client.scheduler_info().get("workers", {})), 1)
    size = partition_size or config.scoring.partition_size
    if size is None:
        size = max(1, -(-n // (workers * DEFAULT_PARTITIONS_PER_WORKER)))
    bounds = partition_bounds(n, size)
    parts = split_tables(tables, requests, bounds)
    cold = build_features(
        tables,
        pd.DataFrame({"account_id": [COLD_START_ID], "as_of": [when]}),
        config.features,
    )
    # The one figure features need from the whole list: the global win rate's deal counts.
    deals = global_deal_counts(tables, when)
    accounts = tables.accounts if _needs_accounts(config) else None
    del tables
    part_f = client.scatter(parts)
    del parts
    features_f = [client.submit(_features, p, config.features, deals) for p in part_f]
    return _Source(when, bounds, features_f, cold, accounts)


@dataclass(frozen=True)
class _Survey:
    """One part of a partitioned export as the client needs it to finish the features: its
    account count, its end of data, and its decided deals (decided, won) as of the scoring
    date, or, with no date given, as of its own end and as of any later day."""

    accounts: int
    end: pd.Timestamp
    deals_at: tuple[int, int]
    deals_after: tuple[int, int] | None
    account_rows: pd.DataFrame | None


def _read_part(
    data: DataConfig,
    part: str,
    given: pd.Timestamp | None,
    config: FeatureConfig,
    with_accounts: bool,
    cold: bool,
) -> tuple[pd.DataFrame, _Survey, pd.DataFrame | None]:
    """One part read, checked against the data contract and featurised as of ``given`` (else
    its own end of data) on its worker, once: its features before the whole list's deal
    counts (``with_global_deals`` applies them), its survey, and with ``cold`` the cold-start
    row (it needs some part's tables, none of its rows)."""
    from features.build import build_features, global_deal_counts, scoring_requests
    from features.contract import load_part

    tables = load_part(data, part).tables
    end = tables.end_of_data()
    when = end if given is None else given
    # A part's deals are all decided by its own end: counted as of its end and as of the next
    # day, the client has the counts as of the whole list's end, whichever part it is in.
    survey = _Survey(
        accounts=len(tables.accounts),
        end=end,
        deals_at=global_deal_counts(tables, when),
        deals_after=None if given is not None else global_deal_counts(tables, end + _DAY),
        account_rows=tables.accounts if with_accounts else None,
    )
    # Placeholder counts: the rate they smooth towards is replaced once all parts are in.
    features = build_features(
        tables, scoring_requests(tables.accounts, when), config, global_deals=(0, 0)
    )
    cold_row = (
        build_features(
            tables,
            pd.DataFrame({"account_id": [COLD_START_ID], "as_of": [when]}),
            config,
            global_deals=(0, 0),
        )
        if cold
        else None
    )
    return features, survey, cold_row


def _survey_of(read: tuple[pd.DataFrame, _Survey, pd.DataFrame | None]) -> _Survey:
    return read[1]


def _finished(
    read: tuple[pd.DataFrame, _Survey, pd.DataFrame | None],
    global_deals: tuple[int, int],
    config: FeatureConfig,
    cold: bool = False,
) -> pd.DataFrame:
    """A part's features (or, with ``cold``, its cold-start row) with the whole list's deal
    counts applied."""
    from features.build import with_global_deals

    frame = read[2] if cold else read[0]
    assert frame is not None
    return with_global_deals(frame, global_deals, config)


def _read_by_part(
    config: Config, client: Client, as_of: pd.Timestamp | str | None, parts: list[str]
) -> _Source:
    """A partitioned export: each worker reads, checks and featurises its own parts once, so
    that the client never holds a table and a worker holds one part's tables at a time; the
    partitions are the export's parts. The whole list's deal counts (for the smoothed win
    rate) and, with no date given, its end of data are known only when every part is in:
    the counts are applied to the features afterwards, and a part whose own end of data is
    earlier than the list's is featurised again as of the list's."""
    given = (
        _scoring_date(as_of, config, pd.Timestamp(0))
        if as_of is not None or config.data.as_of is not None
        else None
    )
    with_accounts = _needs_accounts(config)
    features = config.features
    read_f = [
        client.submit(_read_part, config.data, part, given, features, with_accounts, number == 0)
        for number, part in enumerate(parts)
    ]
    surveys = client.gather([client.submit(_survey_of, f) for f in read_f])
    when = given if given is not None else max(s.end for s in surveys)
    decided = [s.deals_at if given is not None or s.end == when else s.deals_after for s in surveys]
    deals = (sum(d[0] for d in decided if d), sum(d[1] for d in decided if d))
    starts = np.cumsum([0] + [s.accounts for s in surveys])
    bounds = [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:], strict=True)]
    accounts = (
        pd.concat([s.account_rows for s in surveys], ignore_index=True) if with_accounts else None
    )
    # Featurised as of the list's date already, or again as of it.
    read_f = [
        f
        if s.end == when or given is not None
        else client.submit(_read_part, config.data, part, when, features, False, number == 0)
        for number, (f, s, part) in enumerate(zip(read_f, surveys, parts, strict=True))
    ]
    del surveys
    features_f = [client.submit(_finished, f, deals, features) for f in read_f]
    cold = client.submit(_finished, read_f[0], deals, features, cold=True).result()
    del read_f  # the parts' unfinished features go once the finished ones are computed
    return _Source(when, bounds, features_f, cold, accounts)


def _needs_accounts(config: Config) -> bool:
    """Whether the client needs the account rows: for the tier history, or for the owners and
    territories that capacity groups tier within."""
    return config.history.enabled or config.capacity.within != "global"


# ------------------------------------------------------------------------ worker tasks


def _features(part: Any, config: FeatureConfig, global_deals: tuple[int, int]) -> pd.DataFrame:
    from features.build import build_features

    tables, requests = part
    return build_features(tables, requests, config, global_deals=global_deals)


def _rank(bundle: Bundle, features: pd.DataFrame, chunk_size: int) -> tuple[Any, Any]:
    return rank_population(bundle, features, chunk_size)


def _ranks(ranked: tuple[pd.DataFrame, Any]) -> pd.DataFrame:
    # Only what the global pass reads travels to the client; the rest stays on the worker.
    return ranked[0][POPULATION_COLUMNS]


def _reasons(
    bundle: Bundle,
    features: pd.DataFrame,
    local: tuple[pd.DataFrame, Any],
    decided: pd.DataFrame,
    assignment: Any,
    previous: pd.DataFrame | None,
    grouped: Any = None,
    *,
    chunk_size: int,
    reasons: bool,
    top_reasons: int,
    part: Path | None,
    cache: ReasonCache | None = None,
) -> pd.DataFrame:
    """The partition's scores (its ranks with what the global pass ``decided`` of them, and
    the customers' change reasons against ``previous``) with every text field against the
    whole list's tiers; written to ``part`` (then only the CRM rows come back) or returned
    whole."""
    scores = with_change_reasons(with_decisions(bundle, local[0], decided), previous)
    population = TieredPopulation(scores, local[1], assignment, grouped)
    chunks = scored_chunks(
        bundle,
        features,
        population,
        chunk_size=chunk_size,
        reasons=reasons,
        top_reasons=top_reasons,
        cache=cache,
    )
    if part is None:
        return pd.concat(list(chunks))
    crm = []
    with _ChunkWriter(part, csv=False) as writer:
        for chunk in chunks:
            writer.write(chunk)
            crm.append(crm_rows(chunk))
    return pd.concat(crm)


def _grouped_slice(grouped: Any, start: int, stop: int) -> Any:
    """A partition's share of capacity groups (``tiering.capacity.GroupedTiers``): its rows'
    groups and tiers, every group's cut-offs; None stays None."""
    if grouped is None:
        return None
    return dataclasses.replace(
        grouped,
        assignment=_slice(grouped.assignment, start, stop),
        plan=dataclasses.replace(grouped.plan, group=grouped.plan.group[start:stop]),
    )


def _by_partition(
    rows: pd.DataFrame | None, ids: pd.Series, bounds: list[tuple[int, int]]
) -> list[pd.DataFrame | None]:
    """``rows`` (keyed by ``account_id``) cut by the partition of the list (``ids``) each
    account is in; accounts not in the list are left out."""
    if rows is None:
        return [None] * len(bounds)
    from features.distinct import positions

    where = positions(pd.Index(ids.astype(str)), rows["account_id"])
    order = np.argsort(where, kind="stable")
    ordered = where[order]
    out: list[pd.DataFrame | None] = []
    for start, stop in bounds:
        a, b = np.searchsorted(ordered, [start, stop])
        out.append(rows.iloc[np.sort(order[a:b])])
    return out


def _slice(assignment: Any, start: int, stop: int) -> Any:
    rows = slice(start, stop)
    return dataclasses.replace(
        assignment,
        tier=assignment.tier[rows],
        rule=assignment.rule[rows],
        ceiling=assignment.ceiling[rows],
        by_priority=assignment.by_priority[rows],
        rank=None if assignment.rank is None else assignment.rank[rows],
    )


# ----------------------------------------------------------------------------- the run


def score_accounts_distributed(
    config: Config,
    bundle: Bundle,
    client: Client,
    as_of: pd.Timestamp | str | None = None,
    out: Path = Path("outputs/tiers"),
    progress: Progress | None = None,
    *,
    snapshot: Path | None = None,
    reasons: bool = True,
    partition_size: int | None = None,
) -> BatchResult:
    """``serving.batch.score_accounts`` on the client's cluster; ``out`` is a directory of
    Parquet parts (see the module docstring). The result's scores are what the global pass
    read and decided of each account (``serving.batch.POPULATION_COLUMNS`` and
    ``DECIDED_COLUMNS``); every field is in ``out``."""
    _refuse_unsupported(config, out)
    from features.contract import export_parts

    report = progress or _no_progress
    chunk_size = config.scoring.chunk_size
    parts = export_parts(config.data)
    if parts is None:
        source = _cut_in_memory(config, client, as_of, partition_size)
    else:
        source = _read_by_part(config, client, as_of, parts)
    when, bounds, features_f = source.when, source.bounds, source.features_f
    n, cold = bounds[-1][1], source.cold
    # The accounts came along only with the tier history or capacity groups on.
    accounts = source.accounts
    history = None if accounts is None else _run_history(config, bundle, when, accounts)
    del source

    cache = history.reason_cache(bundle) if history is not None and reasons else None
    [bundle_f] = client.scatter([bundle], broadcast=True)
    local_f = [client.submit(_rank, bundle_f, f, chunk_size) for f in features_f]
    ranks_f = [client.submit(_ranks, p) for p in local_f]
    ranked_parts = []
    for number, future in enumerate(ranks_f):
        ranked_parts.append(future.result())
        future.release()
        report("features", bounds[number][1], n)

    # The one global pass: tiers of the whole list, as tier_population assigns them, from a
    # few numbers per account; the rest of each partition's ranks stays on its worker (the
    # history needs the tiers only).
    ranked = pd.concat(ranked_parts, ignore_index=True)
    del ranked_parts
    plan = None if accounts is None else _capacity_plan(config, bundle, ranked, accounts)
    population = decide_population(bundle, ranked, plan)
    del ranked
    if history is not None:
        population = history.prepare(population)
    previous = _by_partition(
        previous_customer_tiers(Path(out)), population.scores["account_id"], bounds
    )

    out = Path(out)
    snapshot_path = Path(snapshot) if snapshot is not None else config.scoring.snapshot
    with (
        _atomic_directory(out) as out_tmp,
        atomic_outputs([crm_path(out), snapshot_path]) as (crm_tmp, snap_tmp),
        _snapshot_parts(
            client, features_f, snap_tmp, when=when, version=bundle.version, cold=cold
        ) as snapshot_part,
    ):

        def reasons_of(number: int) -> Any:
            start, stop = bounds[number]
            part = out_tmp / f"part-{number:05d}.parquet"
            return client.submit(
                _reasons,
                bundle_f,
                features_f[number],
                local_f[number],
                population.scores.iloc[start:stop],
                _slice(population.assignment, start, stop),
                previous[number],
                _grouped_slice(population.grouped, start, stop),
                chunk_size=chunk_size,
                reasons=reasons,
                top_reasons=config.scoring.top_reasons,
                part=None if history is not None else part,
                # Only the partition's own stored SHAP values travel with it.
                cache=None
                if cache is None
                else cache.only(population.scores["account_id"].iloc[start:stop]),
                pure=False,
            )

        # A bounded window of partitions in flight: each task carries its partition's scores,
        # and a LocalCluster's scheduler lives in this process, so submitting every partition
        # at once would hold every partition's scores twice.
        window = REASONS_IN_FLIGHT_PER_WORKER * max(1, len(client.scheduler_info()["workers"]))
        in_flight = collections.deque(reasons_of(i) for i in range(min(window, len(bounds))))
        for number in range(len(bounds)):
            future = in_flight.popleft()
            if number + window < len(bounds):
                in_flight.append(reasons_of(number + window))
            frame = future.result()
            future.release()
            local_f[number].release()  # the partition's ICP labels are no longer needed
            if history is not None:
                frame = history.annotate(frame)
                with _ChunkWriter(out_tmp / f"part-{number:05d}.parquet", csv=False) as writer:
                    writer.write(frame)
                frame = crm_rows(frame)
            frame.to_csv(crm_tmp, mode="a" if number else "w", header=number == 0, index=False)
            # While the workers phrase the next partitions, the client writes this one's
            # features into the snapshot.
            snapshot_part(number)
            report("reasons", bounds[number][1], n)
        report("write", 1, 2)
        if history is not None:
            history.commit()
        report("write", 2, 2)
    grouped = _write_group_cutoffs(plan, bundle, population.scores, snapshot_path, when)
    return BatchResult(
        scores=population.scores,
        output=out,
        crm=crm_path(out),
        snapshot=snapshot_path,
        as_of=when,
        model_version=bundle.version,
        cutoffs_used=population.cutoffs_used,
        capacity_warnings=(
            None
            if grouped is None or grouped.plan.within == "global"
            else tuple(grouped.assignment.warnings)
        ),
        books=None if accounts is None else _books(accounts, population.scores["account_id"]),
    )


def _refuse_unsupported(config: Config, out: Path) -> None:
    """What a cluster run cannot do, refused before any work: elevations, and an ``out`` that
    is a file (a single-process run's output) where the run writes a directory."""
    _refuse_file(Path(out))
    if config.elevation.enabled:
        raise ValueError(
            "--cluster: elevations ([elevation] enabled) read every account's intent "
            "activities, which the single-process run only has: score without --cluster, or "
            "set [elevation] enabled = false"
        )


def score_on_cluster(
    config: Config,
    bundle: Bundle,
    cluster: str,
    as_of: pd.Timestamp | str | None = None,
    out: Path = Path("outputs/tiers"),
    progress: Progress | None = None,
    *,
    snapshot: Path | None = None,
    reasons: bool = True,
) -> BatchResult:
    """:func:`score_accounts_distributed` on ``cluster`` (see :class:`ClusterSpec`): a
    LocalCluster for the run, or the scheduler of a running cluster."""
    spec = ClusterSpec.parse(cluster)
    _refuse_unsupported(config, out)  # before a cluster is started for nothing
    with connect(spec) as client:
        return score_accounts_distributed(
            config,
            bundle,
            client,
            as_of=as_of,
            out=out,
            progress=progress,
            snapshot=snapshot,
            reasons=reasons,
        )


@contextlib.contextmanager
def _snapshot_parts(
    client: Client,
    features_f: list[Any],
    path: Path,
    *,
    when: pd.Timestamp,
    version: str,
    cold: pd.DataFrame,
) -> Iterator[Callable[[int], None]]:
    """The account snapshot as one Parquet file (the service reads one file), written one
    partition's features at a time by the function this yields (``write(number)``, in
    partition order; the partition's features are released once written); metadata as
    ``serving.snapshot.write_snapshot`` writes it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from serving.snapshot import write_snapshot

    schemas = client.gather([client.submit(_schema, f) for f in features_f])
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    schema = pa.schema([_typed_field(f) for f in schema])
    # The metadata (date, model version, cold-start row) as the single-process writer puts it.
    head = path.with_name(path.name + ".head")
    try:
        first = features_f[0].result().iloc[:0]
        write_snapshot(first, head, as_of=when, model_version=version, cold_start=cold)
        metadata = pq.read_schema(head).metadata
    finally:
        head.unlink(missing_ok=True)
    schema = schema.with_metadata(metadata)
    with pq.ParquetWriter(path, schema) as writer:

        def write(number: int) -> None:
            future = features_f[number]
            table = pa.Table.from_pandas(
                future.result().reset_index(drop=True), preserve_index=False
            )
            writer.write_table(table.cast(schema))
            future.release()

        yield write


def _schema(features: pd.DataFrame) -> Any:
    import pyarrow as pa

    return pa.Table.from_pandas(features.reset_index(drop=True), preserve_index=False).schema


@contextlib.contextmanager
def _atomic_directory(target: Path) -> Iterator[Path]:
    """A temporary directory beside ``target``; on success it replaces ``target`` (two
    renames: the old directory moves aside, the new one into place, the old one is removed),
    on any error or interruption it is removed and ``target`` stays as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\.tmp$")
    for candidate in target.parent.glob(f".{target.name}.*.tmp"):
        match = pattern.match(candidate.name)
        if match and not _alive(int(match[1])):
            shutil.rmtree(candidate, ignore_errors=True)
    _restore_stale_old(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    old = target.with_name(f".{target.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _refuse_file(target)  # in case one appeared during the run
        if target.is_dir():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _refuse_file(target: Path) -> None:
    if target.exists() and not target.is_dir():
        other = target.with_suffix("")
        if other == target:
            other = target.with_name(f"{target.name}-parts")
        raise ValueError(
            f"--out {target} is a file (a single-process run's scores?); a cluster run writes "
            f"a directory of Parquet parts: remove the file or choose another --out, e.g. "
            f"--out {other}"
        )


def _restore_stale_old(target: Path) -> None:
    """A run killed between its two renames left the previous output aside: put it back."""
    if target.exists():
        for stale in target.parent.glob(f".{target.name}.*.old"):
            shutil.rmtree(stale, ignore_errors=True)
        return
    for stale in sorted(target.parent.glob(f".{target.name}.*.old")):
        os.replace(stale, target)
        return
