"""Risk: the vectorised ICP fit, evidence score, id lookups, reused column encodings and
sub-chunked reason phrasing drift from what the plain per-row rules say (a different fit, a
different "known", a row joined to the wrong account, a duplicate missed, different texts)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from features.build import evidence_score
from features.config import IcpConfig, IcpCriterion
from features.distinct import TEXT, Distinct, positions, shared_encodings
from features.icp import icp_fit
from serving.batch import read_snapshot, score_accounts, score_population, write_scores
from tiering.bundle import Bundle
from tiering.config import Config

from support import TrainedBundle

TRUE = {"true", "yes", "y", "1", "t", "on"}
FALSE = {"false", "no", "n", "0", "f", "off"}


# ------------------------------------------------------------------------ slow references


@pytest.mark.parametrize(
    "ids",
    [
        pd.Series(["A-2", None, "A-9", "A-1", "A-2", "A-7"], dtype=pd.StringDtype(na_value=np.nan)),
        pd.Series(["A-2", None, "A-9", "A-1", "A-2"], dtype=object),
        pd.Series([2.0, np.nan, 9.0, 1.0], dtype=float),
        pd.Series([], dtype=pd.StringDtype(na_value=np.nan)),
    ],
    ids=["arrow text", "object text", "numbers", "empty"],
)
def test_id_positions_are_the_row_by_row_lookup(ids: pd.Series) -> None:
    index = pd.Index(["A-1", "A-2", "A-7", "1.0", "2.0"])
    expected = [index.get_loc(str(v)) if pd.notna(v) and str(v) in index else -1 for v in ids]
    found = positions(index, ids)
    assert found.dtype == np.int64
    assert found.tolist() == expected


_LABELS = st.sampled_from(["a", " a", "A", "b", "b ", "", "  ", "c"])


@given(
    rows=st.lists(st.one_of(st.none(), _LABELS), max_size=40),
    steps=st.lists(st.dictionaries(_LABELS, st.one_of(st.none(), _LABELS)), min_size=1, max_size=3),
)
def test_a_mapped_columns_reused_encoding_is_its_own(
    rows: list[str | None], steps: list[dict[str, str | None]]
) -> None:
    """Cleaning steps map a column's distinct values, one after the other (merging some,
    blanking others); within a load, the encoding each new column inherits equals the one its
    rows give, and outside one nothing is kept."""
    column = pd.Series(pd.array(rows, dtype=TEXT))
    with shared_encodings():
        for mapping in steps:
            distinct = Distinct.of(column)
            assert Distinct.of(column) is distinct  # kept, not encoded again
            fresh = Distinct.encode(column)
            assert distinct.codes.tolist() == fresh.codes.tolist()
            assert distinct.values.tolist() == fresh.values.tolist()
            assert distinct.counts.tolist() == fresh.counts.tolist()
            mapped = np.array(
                [
                    np.nan if mapping.get(v, v) is None else mapping.get(v, v)
                    for v in distinct.values
                ],
                dtype=object,
            )
            column = distinct.column(mapped)
            rows = [None if r is None else mapping.get(r, r) for r in rows]
            assert [None if pd.isna(v) else v for v in column] == rows
        last = Distinct.of(column)
        assert last.codes.tolist() == Distinct.encode(column).codes.tolist()
        assert last.values.tolist() == Distinct.encode(column).values.tolist()
    assert Distinct.of(column) is not Distinct.of(column)


@given(
    rows=st.lists(st.one_of(st.none(), _LABELS), max_size=40),
    allowed=st.sets(_LABELS, max_size=5),
    shared=st.booleans(),
)
def test_the_id_check_looks_up_each_distinct_value_as_rows_would(
    rows: list[str | None], allowed: set[str], shared: bool
) -> None:
    """Ids that point nowhere are found per distinct value: the same rows as a per-row lookup,
    missing never found, whether the column's encoding is shared or made on the spot."""
    from features.contract import _isin

    column = pd.Series(pd.array(rows, dtype=TEXT))
    expected = [r is not None and r in allowed for r in rows]
    with shared_encodings() if shared else contextlib.nullcontext():
        assert _isin(column, allowed).tolist() == expected
    assert _isin(column.astype(object), allowed).tolist() == expected


def _missing(value: object) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _fold(value: object) -> str | None:
    if _missing(value):
        return None
    text = str(value).strip().casefold()
    return text or None


def _number(value: object) -> float:
    if _missing(value) or isinstance(value, bool):
        return float(value) if isinstance(value, bool) else math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _truth(value: object) -> float:
    """Yes/no as features.values documents it: booleans, the numbers 1 and 0, the words."""
    if _missing(value):
        return math.nan
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.number)):
        return 1.0 if value == 1 else 0.0 if value == 0 else math.nan
    text = _fold(value)
    if text in TRUE:
        return 1.0
    if text in FALSE:
        return 0.0
    return math.nan


def reference_fit(frame: pd.DataFrame, icp: IcpConfig) -> list[tuple[float, list, list]]:
    """Row by row, criterion by criterion, as the ICP's docstring says."""
    rows = []
    for i in range(len(frame)):
        met_w, total_w, must_missed, met, missed = 0.0, 0.0, False, [], []
        for c in icp.criteria:
            column = frame[c.column]
            value = column.iloc[i]
            if c.op in ("in", "not_in"):
                text = _fold(value)
                known = text is not None
                wanted = {str(v).strip().casefold() for v in c.values or []}
                inside = text in wanted
                ok = known and (inside if c.op == "in" else not inside)
            elif c.op == "is_true":
                flag = _truth(value)
                known = not math.isnan(flag)
                ok = flag == 1.0
            else:
                number = _number(value)
                known = not math.isnan(number)
                low = c.min if c.min is not None else -math.inf
                high = c.max if c.max is not None else math.inf
                ok = known and (
                    number >= low
                    if c.op == ">="
                    else number <= high
                    if c.op == "<="
                    else low <= number <= high
                )
            total_w += c.weight
            if ok:
                met_w += c.weight
                met.append(c.label)
            else:
                missed.append(c.label if known else f"{c.label} (unknown)")
                must_missed |= c.must_have
        score = 100.0 * met_w / total_w
        if must_missed:
            score = min(score, icp.cap_if_must_have_missed)
        rows.append((score, met, missed))
    return rows


def reference_evidence_known(value: object) -> bool:
    return not _missing(value) and str(value).strip() != ""


# ----------------------------------------------------------------------------- ICP fit

TEXTS = ["Software", " software ", "SOFTWARE", "retail", "Retail ", "", "  ", "fintech", "ß"]
FLAGS = ["yes", "No", " TRUE ", "f", "1", "0", "maybe", "", "Y", " on", "OFF", "2"]


def random_accounts(rng: np.random.Generator, n: int) -> pd.DataFrame:
    def pick(pool: list[object], missing: float = 0.15) -> list[object]:
        values = [pool[i] for i in rng.integers(0, len(pool), n)]
        return [None if rng.random() < missing else v for v in values]

    employees = rng.lognormal(5, 1.5, n)
    employees[rng.random(n) < 0.2] = np.nan
    return pd.DataFrame(
        {
            "industry": pick(TEXTS),
            # 1, 1.0 and True are equal to Python yet print differently.
            "mixed": pick([1, 1.0, True, "1", "1.0", "True", 0, -0.0, 0.0, False, "x"]),
            "region": pd.Series(pick(["emea", "NA", "apac", " "]), dtype="string"),
            "employees": employees,
            "employees_text": [None if np.isnan(e) else f"{e:.0f}" for e in employees],
            "tech_bool": pd.array(pick([True, False]), dtype="boolean"),
            "tech_object": pick([True, False, np.True_, 1, 0]),
            "tech_text": pick(FLAGS),
            "tech_number": rng.choice([0.0, 1.0, 2.0, np.nan], n),
        },
        index=rng.permutation(n) + 1000,
    )


def c(label: str, column: str, op: str, **kw: object) -> IcpCriterion:
    return IcpCriterion(label=label, column=column, op=op, **kw)  # type: ignore[arg-type]


ICPS = [
    IcpConfig(
        criteria=[
            c("Software or fintech", "industry", "in", values=[" Software", "FINTECH"]),
            c("Not retail", "industry", "not_in", values=["retail"], weight=2.0),
            c("Mixed one", "mixed", "in", values=["1", "true"]),
            c("Mixed zero", "mixed", "not_in", values=["0.0", "-0.0"]),
            c("Region", "region", "in", values=["emea", "na"], must_have=True),
            c("200+", "employees", ">=", min=200),
            c("Small", "employees_text", "<=", max=100, weight=0.5),
            c("Mid", "employees", "between", min=50, max=1000, must_have=True),
        ],
        cap_if_must_have_missed=35.0,
    ),
    IcpConfig(
        criteria=[
            c("Bool", "tech_bool", "is_true", weight=3.0),
            c("Object", "tech_object", "is_true"),
            c("Text", "tech_text", "is_true", must_have=True),
            c("Number", "tech_number", "is_true"),
            c("Mixed", "mixed", "is_true"),
        ]
    ),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("icp", ICPS, ids=["in-and-ranges", "flags"])
def test_icp_fit_matches_the_row_by_row_rules(seed: int, icp: IcpConfig) -> None:
    frame = random_accounts(np.random.default_rng(seed), 400)
    fit = icp_fit(frame, icp)
    expected = reference_fit(frame, icp)
    assert list(fit.index) == list(frame.index)
    np.testing.assert_allclose(fit["icp_fit"].to_numpy(), [e[0] for e in expected])
    assert fit["icp_met"].tolist() == [e[1] for e in expected]
    assert fit["icp_missed"].tolist() == [e[2] for e in expected]


def test_icp_fit_of_one_row_and_of_no_rows() -> None:
    frame = random_accounts(np.random.default_rng(3), 50)
    for rows in (frame.iloc[:1], frame.iloc[:0]):
        fit = icp_fit(rows, ICPS[0])
        expected = reference_fit(rows, ICPS[0])
        assert fit["icp_fit"].tolist() == [e[0] for e in expected]
        assert fit["icp_missed"].tolist() == [e[2] for e in expected]


def test_many_criteria_beyond_one_packed_integer() -> None:
    frame = random_accounts(np.random.default_rng(4), 200)
    icp = IcpConfig(
        criteria=[c(f"Flag {i}", "tech_text", "is_true") for i in range(20)]
        + [c(f"Big {i}", "employees", ">=", min=10.0 * i) for i in range(20)]
    )
    fit = icp_fit(frame, icp)
    expected = reference_fit(frame, icp)
    np.testing.assert_allclose(fit["icp_fit"].to_numpy(), [e[0] for e in expected])
    assert fit["icp_met"].tolist() == [e[1] for e in expected]
    assert fit["icp_missed"].tolist() == [e[2] for e in expected]


# ----------------------------------------------------------------------------- evidence


@pytest.mark.parametrize("seed", [0, 1])
def test_evidence_score_matches_the_row_by_row_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    frame = random_accounts(rng, n)[["industry", "region", "employees"]].assign(
        annual_revenue=lambda f: pd.Series(
            [None if rng.random() < 0.3 else v for v in ["1e6", 2.5, " ", 0]] * (n // 4),
            index=f.index,
        ),
        prior_won=rng.choice([0.0, 1.0, np.nan], n),
        prior_lost=rng.choice([0.0, 2.0, np.nan], n),
        open_deals=rng.choice([0.0, 1.0], n),
    )
    key = ["industry", "employees", "annual_revenue", "region"]
    firmographics = np.array(
        [[reference_evidence_known(frame[k].iloc[i]) for k in key] for i in range(n)]
    ).mean(axis=1)
    deals = (frame["prior_won"].fillna(0) + frame["prior_lost"].fillna(0)).to_numpy() > 0
    touch = frame["open_deals"].to_numpy() > 0
    expected = 0.4 * firmographics + 0.3 * deals + 0.3 * touch
    np.testing.assert_allclose(evidence_score(frame).to_numpy(), expected)


# ---------------------------------------------------------------------- reason sub-chunks


@pytest.fixture(scope="module")
def scored(
    trained_bundle: TrainedBundle, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Bundle, pd.DataFrame]:
    root = tmp_path_factory.mktemp("fast-paths")
    config: Config = trained_bundle.config_writing_to(root)
    bundle = Bundle.load(trained_bundle.bundle_dir)
    score_accounts(config, bundle, out=root / "tiers.parquet")
    features = read_snapshot(config.scoring.snapshot).features
    return bundle, features


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_reasons_phrased_in_sub_chunks_write_the_same_files(
    scored: tuple[Bundle, pd.DataFrame], tmp_path: Path, suffix: str
) -> None:
    bundle, features = scored
    written = []
    for sub in (17, 10_000):
        folder = tmp_path / str(sub)
        folder.mkdir()
        out, crm = folder / f"tiers{suffix}", folder / "crm.csv"
        write_scores(bundle, features, out, crm, like=out, chunk_size=120, reason_chunk_size=sub)
        written.append((out.read_bytes(), crm.read_bytes()))
    assert written[0] == written[1]


def test_in_memory_scores_do_not_depend_on_the_sub_chunks(
    scored: tuple[Bundle, pd.DataFrame],
) -> None:
    bundle, features = scored
    small, _ = score_population(bundle, features, chunk_size=120, reason_chunk_size=17)
    large, _ = score_population(bundle, features, chunk_size=120, reason_chunk_size=10_000)
    pd.testing.assert_frame_equal(small, large)
    # Rows keep label lists of their own, as icp_fit gives them.
    small["icp_missed"].iloc[0].append("edited")
    assert all("edited" not in labels for labels in small["icp_missed"].iloc[1:])


@pytest.mark.parametrize("fractional", [False, True], ids=["counted", "weighted"])
def test_engagement_of_a_list_at_one_moment_is_the_per_request_timeline(
    trained_bundle: TrainedBundle, fractional: bool
) -> None:
    """Scoring asks for every account at one moment (one pass per window); training asks at
    each deal's own moment (a sorted timeline): the same figures for the same requests."""
    from features.build import build_features, scoring_requests
    from features.contract import load_tables

    config = trained_bundle.config
    tables = load_tables(config.data).tables
    assert tables.activities is not None
    if fractional:  # activity rows carrying a weight ("count" column), some of them missing
        rng = np.random.default_rng(3)
        weights = rng.uniform(0.1, 3.0, len(tables.activities)).round(3)
        weights[rng.random(len(weights)) < 0.1] = np.nan
        tables = dataclasses.replace(tables, activities=tables.activities.assign(count=weights))
    end = tables.end_of_data()
    # Mid-history as well as at the end: events after the moment must not count.
    for moment in (end - pd.Timedelta(days=200), end):
        requests = scoring_requests(tables.accounts, moment)
        requests.loc[len(requests)] = ["no-such-account", moment]
        one = build_features(tables, requests, config.features)
        # One request at another moment sends the list down the per-request path.
        odd = pd.DataFrame({"account_id": [requests["account_id"].iloc[0]], "as_of": [end]})
        each = build_features(
            tables, pd.concat([requests, odd], ignore_index=True), config.features
        ).iloc[:-1]
        engagement = [c for c in one.columns if c.startswith(("email_", "meeting_", "days_since_"))]
        assert len(engagement) >= 6
        assert one[engagement].notna().any().all() and one[engagement].isna().any().any()
        assert (one[engagement].fillna(0) > 0).any().all()
        pd.testing.assert_frame_equal(
            one.reset_index(drop=True),
            each.reset_index(drop=True),
            check_exact=not fractional,
            rtol=1e-12,
        )
