"""The demo generator's ground truth: one reader for the files it writes beside the data, and the
truth of the ranking target (expected won revenue within a horizon) computed from the
generator's own process.

The truth folder (``truth/`` beside the data, CSV or Parquet as the data was written):

- ``opportunities_truth``: opportunity_id, true_p_win, true_expected_amount (mean amount if won);
- ``accounts_truth``: account_id, as_of (each month's first day and the data's last day),
  true_p_win, true_deal_value, true_expected_value: a deal created that day;
- ``process_truth``: one row per account, the parameters of its deal and activity processes
  (``demo.generator.PROCESS_COLUMNS``), from which ``horizon_truth`` computes the expected won
  revenue in any horizon at any date;
- ``customers_truth`` (optional): account_id, as_of (month starts), true_p_churn,
  true_p_churn_or_downgrade, true_expected_expansion within ``horizon_days`` (see
  ``demo.customers``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import ndtr

from demo.customers import TRUTH_COLUMNS as CUSTOMER_TRUTH_COLUMNS
from demo.generator import (
    BASE_EVENTS,
    CYCLE_LOST,
    CYCLE_MAX,
    CYCLE_MIN,
    CYCLE_SIGMA,
    CYCLE_WON,
    ENGAGEMENT_WEIGHT,
    INTENSITY_ENGAGEMENT_POWER,
    INTENSITY_MU,
    INTENSITY_SIGMA,
    INTENT,
    MEETING,
    PRE_DEAL_DAYS,
    PRE_DEAL_EVENTS,
    PROCESS_COLUMNS,
    WEB_VISIT_P,
    true_logit,
)

HORIZON_DAYS = 182  # two quarters, the product's default horizon
# Draws per account of the engagement a deal not yet created will see (see horizon_truth).
MC_DRAWS = 256
MC_SEED = 20_251_231
MC_CHUNK_ACCOUNTS = 4096  # bounds memory at a million accounts: chunk x draws floats

OPPORTUNITY_COLUMNS = ("opportunity_id", "true_p_win", "true_expected_amount")
ACCOUNT_COLUMNS = ("account_id", "as_of", "true_p_win", "true_deal_value", "true_expected_value")
FILES = {
    "opportunities": ("opportunities_truth", OPPORTUNITY_COLUMNS),
    "accounts": ("accounts_truth", ACCOUNT_COLUMNS),
    "process": ("process_truth", PROCESS_COLUMNS),
    "customers": ("customers_truth", CUSTOMER_TRUTH_COLUMNS),
}
OPTIONAL = ("process", "customers")
# Windows of the true win probability's engagement terms, as days before the deal's creation:
# (0, 30], (30, 90], (90, 180].
ENGAGEMENT_BINS = ((0, 30), (30, 90), (90, 180))


class TruthError(ValueError):
    """The demo ground truth is missing or does not line up with the data."""


@dataclass(frozen=True)
class Truth:
    """The generator's truth tables (columns in the module docstring); ``account_id`` and
    ``opportunity_id`` as strings, ``as_of`` as datetimes, whatever the file format."""

    opportunities: pd.DataFrame
    accounts: pd.DataFrame
    # None in a truth folder written before the generator wrote it: only horizon_truth needs it
    process: pd.DataFrame | None
    # None in a truth folder written before the generator had customers
    customers: pd.DataFrame | None = None

    @property
    def end(self) -> pd.Timestamp:
        """The data's last day (the last account snapshot)."""
        return pd.Timestamp(self.accounts["as_of"].max())


def read_truth(truth_dir: str | Path) -> Truth:
    """Read the truth the generator wrote into ``truth_dir``, as CSV or Parquet.

    When the folder holds both formats (the demo was written again in the other one), the
    format whose files were written last is read, so the truth matches the newest data.
    """
    folder = Path(truth_dir)
    how = "write it with `tiering demo-data --out <folder of the data>`"
    if not folder.is_dir():
        raise TruthError(f"demo truth: no folder {folder}; {how}")
    required = [stem for name, (stem, _) in FILES.items() if name not in OPTIONAL]
    complete = {
        fmt: [folder / f"{stem}.{fmt}" for stem in required]
        for fmt in ("csv", "parquet")
        if all((folder / f"{stem}.{fmt}").is_file() for stem in required)
    }
    if not complete:
        missing = sorted(
            f"{stem}.csv/.parquet"
            for stem in required
            if not any((folder / f"{stem}.{fmt}").is_file() for fmt in ("csv", "parquet"))
        )
        found = sorted(p.name for p in folder.iterdir() if p.is_file())
        detail = f"missing {', '.join(missing)}" if missing else "CSV and Parquet files mixed"
        raise TruthError(
            f"demo truth in {folder}: {detail} (found: {', '.join(found) or 'nothing'}); {how}"
        )
    fmt = max(complete, key=lambda f: max(p.stat().st_mtime for p in complete[f]))
    frames = {
        name: _read(folder, stem, fmt, columns)
        for name, (stem, columns) in FILES.items()
        if (folder / f"{stem}.{fmt}").is_file()
    }
    return Truth(
        frames["opportunities"],
        frames["accounts"],
        frames.get("process"),
        frames.get("customers"),
    )


def _read(folder: Path, stem: str, fmt: str, columns: Sequence[str]) -> pd.DataFrame:
    path = folder / f"{stem}.{fmt}"
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype={"opportunity_id": "str", "account_id": "str"})
    except (OSError, ValueError) as error:
        raise TruthError(f"demo truth: cannot read {path}: {error}") from error
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TruthError(
            f"demo truth: {path} lacks column(s) {missing}; it was written by another version "
            "of the generator: write the demo again with `tiering demo-data`"
        )
    frame = frame[list(columns)]
    for key in ("opportunity_id", "account_id"):
        if key in frame:
            frame[key] = frame[key].astype("str")
    if "as_of" in frame:
        frame["as_of"] = pd.to_datetime(frame["as_of"]).astype("datetime64[ns]")
    if "true_icp_industry" in frame:
        frame["true_icp_industry"] = frame["true_icp_industry"].astype(bool)
    return frame


# ---------------------------------------------------------------------------------------------
# Horizon truth
# ---------------------------------------------------------------------------------------------
def horizon_truth(
    truth: Truth,
    opportunities: pd.DataFrame,
    as_of: Sequence[pd.Timestamp] | pd.Timestamp,
    horizon_days: int = HORIZON_DAYS,
) -> pd.DataFrame:
    """The generator's own expected won revenue booked in ``[t, t + horizon_days)``, and the
    chance of booking at least one won deal there, for every account at every date ``t``.

    Returns ``account_id, as_of, true_p_convert, true_expected_revenue``: one row per account
    of ``truth.process`` and date of ``as_of`` (normalised to midnight), sorted by date then
    account. ``opportunities`` is the canonical table (opportunity_id, account_id, created_at,
    closed_at, outcome, amount) as the project's loader cleans it; only what is known at
    ``t`` is used: which deals were created before ``t``, which of them had closed before ``t``
    and how. Dates may be any day up to the day after the data's end.

    Revenue = (a) + (b), each a won deal's expected amount times its chance to be won and
    booked (closed) inside the window:

    (a) Deals open at ``t`` (created ``a`` days before ``t``, not closed before ``t``):
        P(won and closed in the window | still open) under the generator's close-cycle law,
        p (F_won(a + H - 1) - F_won(a - 1)) / (p (1 - F_won(a - 1)) + (1 - p) (1 - F_lost(a - 1)))
        with p its true_p_win; wins take longer, so a deal still open is likelier a win. The
        deal's recorded close day is not used: it tells the outcome.
    (b) Deals not yet created: the account creates deals as a Poisson process of rate
        ``true_deal_rate`` per day, so won deals booked in the window are Poisson with mean
        rate x p_new x sum over the window's days u of F_won(H - 1 - u), where F_won is the
        close-cycle CDF of a won deal (log-normal, rounded to days, clipped to 20..180: closed
        form), times the expected deal value at ``t`` (customer or not).

    P(convert) = 1 - exp(-mean of (b)'s won deals) x product over (a)'s deals of (1 - q):
    Poisson thinning for the new deals, independent Bernoullis for the open ones.

    p_new, the true win probability of a deal created in the window, is a Monte Carlo mean
    (``MC_DRAWS`` draws per account, fixed seed ``MC_SEED``: the same truth gives the same
    result) over the generator's own randomness of the engagement that deal will see in the
    180 days before its creation: the account's base activity, the activity rise the
    generator plants before that deal and before the account's other deals around it. There is
    no closed form because the win log-odds take logs and thresholds of those counts; and the
    engagement at ``t`` is the wrong input: the rise before each deal lifts the win
    probability at creation by about a quarter over that at a random day.

    Approximations (all of the generator's process, none fitted):
    - a future deal's history terms (earlier wins and losses) and the deal value are those at
      ``t``: wins inside the window do not lift later deals of the same window;
    - engagement is drawn at its steady state: it ignores the activity already seen before
      ``t`` (the rise before deals created just after ``t`` shows there first, so a model
      reading recent activity can rank the next weeks' deals better than this truth) and the
      missing history in the span's first 180 days;
    - P(convert) treats the win chances of the window's new deals as independent, though they
      share the account's base activity: it reads about half a point high on the demo (13.2 %
      against 12.8 % of accounts converting), while revenue, linear in them, is unbiased;
    - deals keep coming after the data's end at the same rate, so windows that reach past the
      end have a truth the data cannot realise.
    """
    if horizon_days < 1:
        raise ValueError(f"horizon_days must be at least 1, not {horizon_days}")
    dates = _as_of_dates(as_of, truth)
    if truth.process is None:
        raise TruthError(
            "demo truth: no process_truth (the demo was written by an older generator); "
            "write it again with `tiering demo-data`"
        )
    process = truth.process.reset_index(drop=True)
    account_ids = process["account_id"].astype("str").to_numpy()
    index = pd.Index(account_ids)
    if not index.is_unique:
        raise TruthError("demo truth: process_truth repeats accounts")
    deals = _deals_with_truth(truth, opportunities, index)
    median = process["true_cycle_days"].to_numpy(dtype=float)

    n, n_dates = len(process), len(dates)
    prior_won = np.zeros((n_dates, n), dtype=np.int64)
    prior_lost = np.zeros((n_dates, n), dtype=np.int64)
    open_revenue = np.zeros((n_dates, n))
    open_log_none = np.zeros((n_dates, n))
    for i, date in enumerate(dates):
        closed_before = deals["closed_at"].notna() & (deals["closed_at"] < date)
        won = closed_before & (deals["outcome"] == "won")
        lost = closed_before & (deals["outcome"] == "lost")
        prior_won[i] = np.bincount(deals["account"][won], minlength=n)
        prior_lost[i] = np.bincount(deals["account"][lost], minlength=n)
        still = deals[(deals["created_at"] < date) & ~closed_before]
        age = (date - still["created_at"]).dt.days.to_numpy()
        q = _open_deal_won_in_window(
            still["true_p_win"].to_numpy(dtype=float),
            age,
            median[still["account"].to_numpy()],
            horizon_days,
        )
        account = still["account"].to_numpy()
        open_revenue[i] = np.bincount(
            account, weights=q * still["true_expected_amount"].to_numpy(dtype=float), minlength=n
        )
        # a deal certain to be won in the window makes P(convert) 1, without log(0)
        none = np.log1p(-np.minimum(q, 1 - 1e-12))
        open_log_none[i] = np.bincount(account, weights=none, minlength=n)

    p_new = _new_deal_win_probability(process, prior_won, prior_lost)
    booked_share = _won_booked_days(median, horizon_days)  # expected days' worth of deals
    rate = process["true_deal_rate"].to_numpy(dtype=float)
    new_won = rate[None, :] * p_new * booked_share[None, :]
    value = np.where(
        prior_won > 0,
        process["true_deal_value_customer"].to_numpy(dtype=float)[None, :],
        process["true_deal_value_prospect"].to_numpy(dtype=float)[None, :],
    )
    revenue = open_revenue + new_won * value
    p_convert = 1.0 - np.exp(-new_won + open_log_none)
    return pd.DataFrame(
        {
            "account_id": pd.array(np.tile(account_ids, n_dates), dtype="str"),
            "as_of": np.repeat(dates.to_numpy(dtype="datetime64[ns]"), n),
            "true_p_convert": p_convert.ravel(),
            "true_expected_revenue": revenue.ravel(),
        }
    ).sort_values(["as_of", "account_id"], ignore_index=True)


def _as_of_dates(as_of: Sequence[pd.Timestamp] | pd.Timestamp, truth: Truth) -> pd.DatetimeIndex:
    stamps = [as_of] if isinstance(as_of, pd.Timestamp | str) else list(as_of)
    if not stamps:
        raise ValueError("as_of: give at least one date")
    dates = pd.DatetimeIndex(pd.to_datetime(stamps)).normalize().unique().sort_values()
    if dates.hasnans:
        raise ValueError("as_of: empty date")
    dates = dates.as_unit("ns")
    last = truth.end + pd.Timedelta(days=1)
    late = dates[dates > last]
    if len(late):
        raise TruthError(
            f"demo truth: as_of {late[0].date()} is after the data's end {truth.end.date()}; "
            f"the data cannot tell which deals were open then (latest usable date: {last.date()})"
        )
    return dates


def _deals_with_truth(
    truth: Truth, opportunities: pd.DataFrame, accounts: pd.Index
) -> pd.DataFrame:
    required = ("opportunity_id", "account_id", "created_at", "closed_at", "outcome")
    missing = [c for c in required if c not in opportunities.columns]
    if missing:
        raise ValueError(f"opportunities: missing column(s) {missing}")
    deals = pd.DataFrame(
        {
            "opportunity_id": opportunities["opportunity_id"].astype("str").to_numpy(),
            "created_at": pd.to_datetime(opportunities["created_at"]).to_numpy("datetime64[ns]"),
            "closed_at": pd.to_datetime(opportunities["closed_at"]).to_numpy("datetime64[ns]"),
            "outcome": opportunities["outcome"].astype("str").to_numpy(),
            "account": accounts.get_indexer(pd.Index(opportunities["account_id"].astype("str"))),
        }
    )
    if (deals["account"] < 0).any():
        bad = opportunities.loc[(deals["account"] < 0).to_numpy(), "account_id"].head(3).tolist()
        raise TruthError(
            f"demo truth: {int((deals['account'] < 0).sum())} opportunities belong to accounts "
            f"without process truth, e.g. {bad}: truth and data come from different runs"
        )
    by_id = truth.opportunities.set_index(truth.opportunities["opportunity_id"].astype("str"))
    for column in ("true_p_win", "true_expected_amount"):
        deals[column] = deals["opportunity_id"].map(by_id[column])
    if deals["true_p_win"].isna().any():
        bad = deals.loc[deals["true_p_win"].isna(), "opportunity_id"].head(3).tolist()
        raise TruthError(
            f"demo truth: {int(deals['true_p_win'].isna().sum())} opportunities lack "
            f"true_p_win, e.g. {bad}: truth and data come from different runs"
        )
    return deals


# --------------------------------------------------------------------------- close cycles
def _cycle_cdf(days: np.ndarray, median: np.ndarray, factor: float) -> np.ndarray:
    """P(close cycle <= days) for cycle = clip(round(median x factor x exp(N(0, sigma))))."""
    days = np.asarray(days, dtype=float)
    inside = ndtr((np.log(np.maximum(days, 0) + 0.5) - np.log(median * factor)) / CYCLE_SIGMA)
    return np.where(days < CYCLE_MIN, 0.0, np.where(days >= CYCLE_MAX, 1.0, inside))


def _open_deal_won_in_window(
    p_win: np.ndarray, age: np.ndarray, median: np.ndarray, horizon: int
) -> np.ndarray:
    """P(won and closed in [t, t + horizon) | created ``age`` days before t, not closed yet)."""
    won_left = 1.0 - _cycle_cdf(age - 1, median, CYCLE_WON)
    lost_left = 1.0 - _cycle_cdf(age - 1, median, CYCLE_LOST)
    won_in = _cycle_cdf(age + horizon - 1, median, CYCLE_WON) - _cycle_cdf(
        age - 1, median, CYCLE_WON
    )
    still_open = p_win * won_left + (1 - p_win) * lost_left
    # an open deal older than the longest cycle cannot happen in the generator's process
    return np.divide(p_win * won_in, still_open, out=np.zeros_like(p_win), where=still_open > 0)


def _won_booked_days(median: np.ndarray, horizon: int) -> np.ndarray:
    """Sum over u in [0, horizon) of F_won(u): days' worth of deal creation whose wins are
    booked by the window's end (a deal created d days in closes in time with F_won(H-1-d))."""
    out = np.full(len(median), float(max(0, horizon - CYCLE_MAX)))
    days = np.arange(CYCLE_MIN, min(horizon, CYCLE_MAX))
    for start in range(0, len(median), MC_CHUNK_ACCOUNTS):
        part = median[start : start + MC_CHUNK_ACCOUNTS]
        out[start : start + len(part)] += _cycle_cdf(days[None, :], part[:, None], CYCLE_WON).sum(
            axis=1
        )
    return out


# --------------------------------------------------------------------------- new deals
def _new_deal_win_probability(
    process: pd.DataFrame, prior_won: np.ndarray, prior_lost: np.ndarray
) -> np.ndarray:
    """(dates, accounts): mean true win probability of a deal created in the window, over
    ``MC_DRAWS`` draws of the engagement it sees (see ``horizon_truth``)."""
    n = len(process)
    out = np.zeros(prior_won.shape)
    base = process["true_base_logit"].to_numpy(dtype=float)
    icp = process["true_icp_industry"].to_numpy(dtype=bool)
    for chunk, start in enumerate(range(0, n, MC_CHUNK_ACCOUNTS)):
        rows = slice(start, min(start + MC_CHUNK_ACCOUNTS, n))
        rng = np.random.default_rng([MC_SEED, chunk])
        eng = _draw_engagement(rng, process.iloc[rows], MC_DRAWS)
        for i in range(prior_won.shape[0]):
            logit = true_logit(
                base[rows, None],
                icp[rows, None],
                eng,
                prior_won[i, rows, None],
                prior_lost[i, rows, None],
            )
            out[i, rows] = (1.0 / (1.0 + np.exp(-logit))).mean(axis=1)
    return out


def _lag_share(days: np.ndarray) -> np.ndarray:
    """P(a pre-deal event lies at most ``days`` before its deal): lag = 1 + floor(90 U^2)."""
    return np.sqrt(np.clip(days, 0, PRE_DEAL_DAYS) / PRE_DEAL_DAYS)


def _draw_engagement(
    rng: np.random.Generator, process: pd.DataFrame, draws: int
) -> dict[str, np.ndarray]:
    """Draws (accounts x draws) of the engagement windows ``true_logit`` reads for a deal
    created on a day u: event counts per type in the bins of ENGAGEMENT_BINS before u, from
    the account's base activity, the deal's own pre-deal rise and the rises of the account's
    other deals created in the 180 days before u to 90 days after it."""
    n = len(process)
    shape = (n, draws)
    activity = process["true_activity_rate"].to_numpy(dtype=float)[:, None]
    rate = process["true_deal_rate"].to_numpy(dtype=float)[:, None]
    scale = process["true_engagement"].to_numpy(dtype=float)[:, None] ** INTENSITY_ENGAGEMENT_POWER
    n_types, n_bins = len(BASE_EVENTS), len(ENGAGEMENT_BINS)
    counts = np.zeros((n_types, n_bins, *shape))

    own = np.exp(rng.normal(INTENSITY_MU, INTENSITY_SIGMA, shape)) * scale
    # other deals: created at offset j in [-180 + 1, PRE_DEAL_DAYS - 1] from u, each with its
    # own intensity; flattened to one row per deal
    first, last = -ENGAGEMENT_BINS[-1][1] + 1, PRE_DEAL_DAYS - 1
    n_other = rng.poisson(np.broadcast_to(rate * (last - first + 1), shape)).ravel()
    owner = np.repeat(np.arange(n * draws), n_other)
    offset = rng.integers(first, last + 1, len(owner))
    other = np.exp(rng.normal(INTENSITY_MU, INTENSITY_SIGMA, len(owner))) * np.repeat(
        np.broadcast_to(scale, shape).ravel(), n_other
    )
    for b, (lo, hi) in enumerate(ENGAGEMENT_BINS):
        own_share = _lag_share(np.array(hi)) - _lag_share(np.array(lo))
        # an event lag days before a deal at offset j lies lag - j days before u
        other_share = _lag_share(hi + offset) - _lag_share(lo + offset)
        for k in range(n_types):
            counts[k, b] = rng.poisson(BASE_EVENTS[k] * activity * (hi - lo), shape)
            if own_share > 0:
                counts[k, b] += rng.poisson(PRE_DEAL_EVENTS[k] * own * own_share)
            if len(owner):
                extra = rng.poisson(PRE_DEAL_EVENTS[k] * other * other_share)
                counts[k, b] += np.bincount(owner, weights=extra, minlength=n * draws).reshape(
                    shape
                )
    # a web visit is a session of geometric page views: the score counts the page views
    visits = counts[0].astype(np.int64)
    failures = rng.negative_binomial(np.maximum(visits, 1), WEB_VISIT_P)
    counts[0] = visits + np.where(visits > 0, failures, 0)
    score = np.einsum("k,kb...->b...", ENGAGEMENT_WEIGHT, counts)
    s30 = score[0]
    s90 = s30 + score[1]
    return {
        "s30": s30,
        "s90": s90,
        "s180": s90 + score[2],
        "meetings_90": counts[MEETING, 0] + counts[MEETING, 1],
        "intent_30": counts[INTENT, 0],
    }
