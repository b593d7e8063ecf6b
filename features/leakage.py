"""The leakage audit: refuse to train on anything that knows the outcome.

Run on the training features before fitting. Three checks per offered column:

1. **Known post-outcome fields** are refused outright: the canonical ``closed_at``, ``amount``
   and ``outcome``, the export columns the config lists under ``data.post_outcome`` (and
   columns named after them, e.g. ``close_value_log``), and raw date columns (a date is not a
   point-in-time quantity; stage dates after creation are the classic leak). These refusals
   cannot be overridden: a field known to be filled after the outcome has no honest use as an
   input. Names that say "close", "stage", "won", "outcome" and the like fail the check too,
   but ``allow`` can lift that, since a name is only a hint (our own relationship-history
   features are exempt: they count only deals decided before ``as_of``).
2. **Single-feature AUC**: a feature that on its own separates won from lost deals better than
   ``max_single_feature_auc`` (default 0.9) is too good to be true in B2B sales. Numbers are
   ranked on their non-missing rows; categories (missing as a level of its own) are scored by
   their out-of-fold win rate, so an identifier-like column cannot memorise its way past 0.5.
3. **Missing-value gap**: when the rows where a feature is not populated win far less
   (``max_missing_win_rate_gap``) than the rest, the field is probably filled in as a deal
   progresses (e.g. an amount typed in only on won deals).

``LeakageConfig.allow`` lets a named feature pass a failed check with a written reason, which
the report shows. ``require_clean`` raises ``LeakageError`` when the audit failed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.build import HISTORY_FEATURES, feature_columns
from features.config import LeakageConfig
from features.tables import POST_OUTCOME_FIELDS

# Name tokens that mark a field filled in as a deal progresses or closes.
SUSPECT_TOKENS = frozenset(
    {
        "close",
        "closed",
        "closing",
        "outcome",
        "stage",
        "won",
        "lost",
        "loss",
        "win",
        "booked",
        "forecast",
        "probability",
    }
)
STATUS_ORDER = ("refused", "FAIL", "allowed", "pass", "skipped")
MIN_ROWS_FOR_AUC = 20
_FOLDS = 5


class LeakageError(RuntimeError):
    """The leakage audit failed: training must not start."""


@dataclass
class AuditReport:
    """Outcome of the audit. ``table`` has one row per (feature, check): ``feature``,
    ``check``, ``value``, ``threshold``, ``status`` (refused / FAIL / allowed / pass / skipped)
    and ``reason``, problems first."""

    passed: bool
    table: pd.DataFrame
    problems: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """The table as a Markdown pipe table (no extra dependency), problems first."""
        header = ["feature", "check", "value", "threshold", "status", "reason"]
        rows = [[_cell(v) for v in row] for row in self.table[header].itertuples(index=False)]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        verdict = "PASSED" if self.passed else f"FAILED ({len(self.problems)} problem(s))"
        out = [f"Leakage audit: {verdict}", "", line(header)]
        out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        out.extend(line(r) for r in rows)
        if self.problems:
            out += ["", *[f"- {p}" for p in self.problems]]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.to_markdown()


def audit(
    features: pd.DataFrame,
    target: pd.Series | np.ndarray,
    offered_columns: Sequence[str] | None,
    config: LeakageConfig,
    post_outcome: Sequence[str] = (),
) -> AuditReport:
    """Audit the columns offered as model inputs (default: ``feature_columns(features)``)
    against the training target (1 = won, 0 = lost), row-aligned with ``features``."""
    offered = list(feature_columns(features) if offered_columns is None else offered_columns)
    absent = [c for c in offered if c not in features]
    if absent:
        raise ValueError(
            f"leakage audit: offered column(s) {absent} are not in the feature frame "
            f"(it has {len(features.columns)} columns, e.g. {list(features.columns[:8])})"
        )
    y = np.asarray(target, dtype=float)
    if len(y) != len(features):
        raise ValueError(
            f"leakage audit: target has {len(y)} rows but the features have {len(features)}"
        )
    if np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("leakage audit: the target must be 0 (lost) or 1 (won) on every row")

    known_post = {*POST_OUTCOME_FIELDS, *post_outcome}
    rows: list[dict[str, object]] = []
    for name in offered:
        column = features[name]
        refusal = _refusal(name, column, known_post)
        if refusal is not None:
            status, reason = refusal
            rows.append(_row(name, "post-outcome field", np.nan, np.nan, status, reason))
            if pd.api.types.is_datetime64_any_dtype(column):
                continue
        rows.append(_auc_row(name, column, y, config))
        missing_row = _missing_row(name, column, y, config)
        if missing_row is not None:
            rows.append(missing_row)

    for row in rows:
        allowed = config.allow.get(str(row["feature"]))
        if row["status"] == "FAIL" and allowed is not None:
            row["status"] = "allowed"
            row["reason"] = f"{row['reason']}; allowed: {allowed}"
    table = pd.DataFrame(
        rows, columns=["feature", "check", "value", "threshold", "status", "reason"]
    )
    rank = table["status"].map({s: i for i, s in enumerate(STATUS_ORDER)})
    table = (
        table.assign(_rank=rank, _value=-table["value"].fillna(-np.inf))
        .sort_values(["_rank", "_value"], kind="stable")
        .drop(columns=["_rank", "_value"])
        .reset_index(drop=True)
    )
    bad = table[table["status"].isin(["refused", "FAIL"])]
    problems = [f"{r.feature}: {r.reason}" for r in bad.itertuples()]
    return AuditReport(passed=bad.empty, table=table, problems=problems)


def require_clean(report: AuditReport) -> None:
    """Raise ``LeakageError`` naming every problem when the audit failed."""
    if not report.passed:
        listed = "\n".join(f"  - {p}" for p in report.problems)
        raise LeakageError(
            f"leakage audit failed, training refused ({len(report.problems)} problem(s)):\n"
            f"{listed}\nRemove the feature(s), or allow one under [leakage.allow] with the "
            "reason it is known before a deal is created."
        )


# ---------------------------------------------------------------------------------- checks


def _refusal(name: str, column: pd.Series, known_post: set[str]) -> tuple[str, str] | None:
    """(status, reason) when the field is post-outcome by what it is or what it is called.

    Known fields and raw dates are refused for good; a suspicious name is a failure that
    ``allow`` can lift, since a name is only a hint."""
    if name in known_post:
        return "refused", "known post-outcome field: only filled once a deal has closed"
    if pd.api.types.is_datetime64_any_dtype(column):
        return (
            "refused",
            "raw date column: dates of a deal's progress (stage, close) leak the outcome",
        )
    derived = sorted(f for f in known_post if f in name)
    if derived:
        return "refused", f"derived from post-outcome field {derived[0]!r}"
    if name in HISTORY_FEATURES:
        return None
    suspects = sorted(set(re.split(r"[^0-9a-z]+", name.lower())) & SUSPECT_TOKENS)
    if suspects:
        return (
            "FAIL",
            f"name suggests a field filled as a deal progresses or closes ({suspects[0]!r})",
        )
    return None


def _row(
    name: str, check: str, value: float, threshold: float, status: str, reason: str
) -> dict[str, object]:
    return {
        "feature": name,
        "check": check,
        "value": value,
        "threshold": threshold,
        "status": status,
        "reason": reason,
    }


def _is_categorical(column: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column))


def _missing(column: pd.Series) -> np.ndarray:
    missing = column.isna().to_numpy().copy()
    if _is_categorical(column):
        missing |= column.astype(str).str.strip().eq("").to_numpy()
    return missing


def _auc_row(
    name: str, column: pd.Series, y: np.ndarray, config: LeakageConfig
) -> dict[str, object]:
    threshold = config.max_single_feature_auc
    check = "single-feature AUC"
    if _is_categorical(column):
        score = _out_of_fold_rate(column, y)
        keep = np.ones(len(y), dtype=bool)
    else:
        score = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        keep = ~np.isnan(score)
    labels = y[keep]
    if keep.sum() < MIN_ROWS_FOR_AUC or labels.min() == labels.max():
        return _row(name, check, np.nan, threshold, "skipped", "too few rows or one class only")
    auc = _auc(score[keep], labels)
    strength = max(auc, 1.0 - auc)
    if strength > threshold:
        direction = "higher" if auc >= 0.5 else "lower"
        return _row(
            name,
            check,
            strength,
            threshold,
            "FAIL",
            f"alone separates won from lost too well (AUC {strength:.3f}; {direction} values win)",
        )
    return _row(name, check, strength, threshold, "pass", "")


def _missing_row(
    name: str, column: pd.Series, y: np.ndarray, config: LeakageConfig
) -> dict[str, object] | None:
    missing = _missing(column)
    n_missing, n_present = int(missing.sum()), int((~missing).sum())
    if n_missing == 0:
        return None
    check = "missing-value win-rate gap"
    threshold = config.max_missing_win_rate_gap
    floor = config.min_rows_for_missing_check
    if n_missing < floor or n_present < floor:
        return _row(
            name,
            check,
            np.nan,
            threshold,
            "skipped",
            f"{n_missing} missing / {n_present} populated rows; needs {floor} of each",
        )
    rate_missing, rate_present = y[missing].mean(), y[~missing].mean()
    gap = rate_present - rate_missing
    reason = (
        f"not-populated rows win {rate_missing:.0%}, populated rows {rate_present:.0%} "
        f"({n_missing} not populated)"
    )
    if gap > threshold:
        return _row(name, check, gap, threshold, "FAIL", reason + ": filled in as deals progress?")
    return _row(name, check, gap, threshold, "pass", reason)


def _auc(score: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties at half."""
    ranks = pd.Series(score).rank(method="average").to_numpy()
    n_pos = y.sum()
    n_neg = len(y) - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _out_of_fold_rate(column: pd.Series, y: np.ndarray) -> np.ndarray:
    """Each row's category win rate learned on the other folds (missing is a category),
    smoothed towards the fold's overall rate by one pseudo-deal."""
    levels = column.astype(object).where(~_missing(column), "\0missing")
    codes, _ = pd.factorize(levels)
    n_levels = int(codes.max()) + 1 if len(codes) else 0
    # Deterministic folds that do not follow the row order (rows are usually sorted by date).
    fold = np.random.default_rng(0).permutation(len(y)) % _FOLDS
    out = np.empty(len(y))
    for k in range(_FOLDS):
        train, test = fold != k, fold == k
        prior = y[train].mean() if train.any() else 0.5
        wins = np.bincount(codes[train], weights=y[train], minlength=n_levels)
        count = np.bincount(codes[train], minlength=n_levels)
        out[test] = ((wins + prior) / (count + 1.0))[codes[test]]
    return out


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.3f}"
    return str(value)
