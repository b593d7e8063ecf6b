"""Customer tiers for customer success: revenue at risk, expected expansion, priority, tier,
playbook and reasons in a customer-success manager's words.

Called from the one scoring core (``tiering.scoring``): every scored row gets a ``segment``
(``customer`` when it pays recurring revenue as of the date, else ``prospect``); customers also
get their own tier from their own policy:

    priority (currency) = w_at_risk x recurring revenue x P(churn or downgrade within H)
                          + w_expansion x expected expansion revenue within H

Tier 1 holds ``csms x tier1_per_csm`` customers, Tier 2 ``csms x tier2_per_csm``, the rest Tier
3 (ties share a tier: a seat is never given by row order). A single online request is tiered
against the priority cut-offs frozen at training (the priority of the last Tier 1 and Tier 2
seat of the reference list). Without the customer models (no subscriptions in the export),
customers are still marked, their value is their won revenue of the last 12 months, and
``customer_note`` says which figures could not be computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.customers import FIGURES_FROM_SUBSCRIPTIONS
from features.icp import as_objects
from tiering.explain import fmt_money

CUSTOMER_COLUMNS = [
    "segment",
    "recurring_revenue",
    "p_churn",
    "revenue_at_risk",
    "expected_expansion",
    "customer_priority",
    "customer_tier",
    "customer_reasons",
    "advocacy",
    "customer_playbook",
    "customer_note",
]
DEFAULT_PLAYBOOK = {
    1: ["Dedicated customer-success manager", "Executive business reviews"],
    2: ["Scheduled check-ins", "Adoption review each quarter"],
    3: ["Digital success programme", "Automated health alerts"],
}
# Customer columns a reason may speak of, in a CSM's words.
_FIELD_WORDS = {
    "cs_usage_change_active_users": "usage trend",
    "cs_usage_mean_active_users": "active users",
    "cs_usage_mean_seat_utilisation": "seat utilisation",
    "cs_usage_change_seat_utilisation": "seat utilisation trend",
    "cs_tickets_recent_tickets": "support tickets",
    "cs_tickets_change_tickets": "support tickets trend",
    "cs_tenure_days": "tenure",
    "cs_days_to_renewal": "renewal date",
    "cs_renewals": "renewals",
    "cs_downgrades": "past downgrades",
    "cs_expansions": "past expansions",
    "cs_expansion_revenue_365": "expansion in the last year",
    "cs_products": "products held",
    "cs_recurring_revenue": "recurring revenue",
    "cs_nps": "NPS",
}


def _num(features: pd.DataFrame, column: str) -> np.ndarray:
    if column not in features:
        return np.full(len(features), np.nan)
    return pd.to_numeric(features[column], errors="coerce").to_numpy(dtype=float)


def customer_priority(
    recurring: np.ndarray, p_churn: np.ndarray, expansion: np.ndarray, settings: dict[str, Any]
) -> np.ndarray:
    cfg = settings.get("config", {})
    w_risk = float(cfg.get("weight_at_risk", 1.0))
    w_exp = float(cfg.get("weight_expansion", 1.0))
    return w_risk * recurring * p_churn + w_exp * expansion


def capacity_tiers(
    priority: np.ndarray, settings: dict[str, Any]
) -> tuple[np.ndarray, float, float]:
    """Tiers 1-3 of the given customers by priority (NaN: no tier), Tier 1 and Tier 2 sized by
    the CSMs' capacity; customers tied with the last seat share its tier. Returns the tiers
    and the Tier 1 / Tier 2 cut-offs (the priority of the last seat; inf when empty)."""
    cfg = settings.get("config", {})
    csms = int(cfg.get("csms", 4))
    n1 = csms * int(cfg.get("tier1_per_csm", 25))
    n2 = csms * int(cfg.get("tier2_per_csm", 100))
    ok = np.isfinite(priority)
    ranked = np.sort(priority[ok])[::-1]
    cut1 = float(ranked[min(n1, len(ranked)) - 1]) if len(ranked) and n1 else np.inf
    cut2 = float(ranked[min(n1 + n2, len(ranked)) - 1]) if len(ranked) else np.inf
    return tiers_with_cutoffs(priority, cut1, cut2), cut1, cut2


def tiers_with_cutoffs(priority: np.ndarray, cut1: float, cut2: float) -> np.ndarray:
    tier = np.where(priority >= cut1, 1.0, np.where(priority >= cut2, 2.0, 3.0))
    return np.where(np.isfinite(priority), tier, np.nan)


def reference_cutoffs(bundle: Any, features: pd.DataFrame) -> dict[str, float]:
    """The Tier 1 / Tier 2 priority cut-offs of the customers in ``features`` (the list as of
    the end of training), frozen into the bundle for single requests."""
    scored = score_customers(bundle, features, population=True, reasons=False)
    prio = scored["customer_priority"].to_numpy(dtype=float)
    _, cut1, cut2 = capacity_tiers(prio[np.isfinite(prio)], bundle.customer)
    return {"tier1": cut1, "tier2": cut2, "customers": int(np.isfinite(prio).sum())}


def score_customers(
    bundle: Any, features: pd.DataFrame, *, population: bool, reasons: bool = True
) -> pd.DataFrame:
    """``CUSTOMER_COLUMNS`` of each row (same index)."""
    n = len(features)
    customer = _num(features, "cs_customer") > 0
    recurring = np.where(customer, np.nan_to_num(_num(features, "cs_recurring_revenue")), np.nan)
    settings: dict[str, Any] = getattr(bundle, "customer", {}) or {}
    p_churn = np.full(n, np.nan)
    expansion = np.full(n, np.nan)
    contributions: pd.DataFrame | None = None
    note = ""
    subscriptions_known = np.isfinite(_num(features, "cs_products"))
    has_models = bool(getattr(bundle, "has_customer_models", False)) and bool(
        subscriptions_known.any()
    )
    if has_models and customer.any():
        rows = np.flatnonzero(customer)
        predicted = bundle.predict_customers(features.iloc[rows])
        p_churn[rows] = predicted["p_churn"].to_numpy()
        expansion[rows] = predicted["expected_expansion"].to_numpy()
        contributions = predicted
    if not has_models:
        lacking = (
            list(FIGURES_FROM_SUBSCRIPTIONS[:3])
            if not subscriptions_known.any()
            else ["churn risk", "revenue at risk", "expected expansion"]
        )
        why = (
            "no subscriptions data"
            if not subscriptions_known.any()
            else "the model bundle has no customer models"
        )
        note = (
            f"not computed ({why}): {', '.join(lacking)}; customer status and value come from "
            "won-deal history"
        )
    at_risk = recurring * p_churn
    if has_models:
        prio = customer_priority(recurring, p_churn, expansion, settings)
    else:
        # What can be ranked without the models: the customer's value.
        prio = recurring.copy()
    prio = np.where(customer, prio, np.nan)
    if population or not has_models:
        tier, _, _ = capacity_tiers(prio, settings or {"config": {}})
    else:
        cut = settings.get("cutoffs", {})
        tier = tiers_with_cutoffs(
            prio, float(cut.get("tier1", np.inf)), float(cut.get("tier2", np.inf))
        )
    playbook = _playbook(settings)
    figures = {
        "segment": np.where(customer, "customer", "prospect"),
        "recurring_revenue": recurring,
        "p_churn": p_churn,
        "revenue_at_risk": at_risk,
        "expected_expansion": expansion,
        "customer_priority": prio,
        "customer_tier": pd.array(
            np.where(np.isfinite(tier), tier, np.nan), dtype="Float64"
        ).astype("Int64"),
    }
    texts = (
        customer_reasons(
            features, pd.DataFrame(figures, index=features.index), contributions, settings
        )
        if reasons
        else [[] for _ in range(n)]
    )
    # One frame of every column (adding columns one by one costs more than one account).
    return pd.DataFrame(
        {
            **figures,
            "customer_reasons": as_objects(texts),
            "advocacy": advocacy(features, customer).to_numpy(),
            "customer_playbook": as_objects(
                [playbook[int(t)] if np.isfinite(t) else [] for t in tier]
            ),
            "customer_note": np.where(customer, note, ""),
        },
        index=features.index,
    )


def population_customer_tiers(priority: pd.Series, bundle: Any) -> pd.Series:
    """Customer-success tiers of a whole list from its customers' priorities (NaN for
    prospects), scored in parts (one per partition) and tiered again as one list: the CSMs'
    capacity holds for the whole list, as ``score_customers(population=True)`` does."""
    settings: dict[str, Any] = getattr(bundle, "customer", {}) or {"config": {}}
    prio = pd.to_numeric(priority, errors="coerce").to_numpy(dtype=float)
    tier, _, _ = capacity_tiers(prio, settings)
    return pd.Series(
        pd.array(np.where(np.isfinite(tier), tier, np.nan), dtype="Float64").astype("Int64"),
        index=priority.index,
    )


def with_customer_tiers(scored: pd.DataFrame, tiers: pd.Series, bundle: Any) -> pd.DataFrame:
    """``CUSTOMER_COLUMNS`` of ``scored`` with the customer tiers of
    :func:`population_customer_tiers` (same rows, in order) and their playbooks."""
    settings: dict[str, Any] = getattr(bundle, "customer", {}) or {"config": {}}
    playbook = _playbook(settings)
    values = tiers.to_numpy(dtype=float, na_value=np.nan)
    return scored.assign(
        customer_tier=tiers.array,
        customer_playbook=pd.Series(
            [playbook[int(t)] if np.isfinite(t) else [] for t in values],
            index=scored.index,
            dtype=object,
        ),
    )


def _playbook(settings: dict[str, Any]) -> dict[int, list[str]]:
    book = settings.get("config", {}).get("playbook", {})
    return {t: list(book.get(f"tier{t}", DEFAULT_PLAYBOOK[t])) for t in (1, 2, 3)}


def advocacy(features: pd.DataFrame, customer: np.ndarray) -> pd.Series:
    """ "2 renewals, 3.1 years a customer, NPS 9": the advocacy signals the data has."""
    renewals = _num(features, "cs_renewals")
    tenure = _num(features, "cs_tenure_days")
    nps = _num(features, "cs_nps")
    out = []
    for i in range(len(features)):
        if not customer[i]:
            out.append("")
            continue
        parts = []
        if np.isfinite(renewals[i]):
            k = int(renewals[i])
            parts.append(f"{k} renewal{'s' if k != 1 else ''}" if k else "no renewal yet")
        if np.isfinite(tenure[i]):
            parts.append(f"{tenure[i] / 365.25:.1f} years a customer")
        if np.isfinite(nps[i]):
            parts.append(f"NPS {nps[i]:.0f}" + (" (promoter)" if nps[i] >= 9 else ""))
        out.append(", ".join(parts))
    return pd.Series(out, index=features.index, dtype=object)


def _points(contrib: pd.DataFrame, p: np.ndarray, names: list[str]) -> pd.DataFrame:
    """Churn SHAP values (log-odds) in percentage points of P(churn), scaled by the secant so
    they add up to the customer's distance from the base rate."""
    raw = contrib[[f"churn:{n}" for n in names]].to_numpy(dtype=float)
    bias = contrib["churn:bias"].to_numpy(dtype=float)
    total = raw.sum(axis=1)
    p_base = 1.0 / (1.0 + np.exp(-bias))
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(np.abs(total) > 1e-9, (p - p_base) / total, p_base * (1 - p_base))
    return pd.DataFrame(raw * scale[:, None] * 100, columns=names, index=contrib.index)


def customer_reasons(
    features: pd.DataFrame,
    scored: pd.DataFrame,
    contributions: pd.DataFrame | None,
    settings: dict[str, Any],
    top: int = 2,
) -> list[list[str]]:
    """Per row: the customer's headline figures and its strongest drivers, in a CSM's words
    ("usage down 40 % over 90 days: churn risk +12 pts"; "3 products of 5: room to expand
    +$80k")."""
    n = len(features)
    out: list[list[str]] = [[] for _ in range(n)]
    if contributions is None:
        for i, (seg, value) in enumerate(
            zip(scored["segment"], scored["recurring_revenue"], strict=True)
        ):
            if seg == "customer":
                out[i].append(f"customer: won revenue of the last 12 months {fmt_money(value)}")
        return out
    names = [c for c in settings["feature_names"] if c in _FIELD_WORDS]
    rows = contributions.index
    p = scored.loc[rows, "p_churn"].to_numpy(dtype=float)
    points = _points(contributions, p, list(settings["feature_names"]))[names]
    # one driver per business field: a metric's level and its trend speak together
    groups = _groups(names)
    # Each group's sum as one matrix product (rows x columns @ columns x groups): no frame per
    # group, which cost more than the rest of a single account's reasons.
    member = np.zeros((len(names), len(groups)))
    position_of = {c: k for k, c in enumerate(names)}
    for g, cols in enumerate(groups.values()):
        member[[position_of[c] for c in cols], g] = 1.0
    # (missing values count as 0, as pandas' sum skips them)
    group_points = np.nan_to_num(points.to_numpy(dtype=float), nan=0.0) @ member
    exp_raw = contributions[[f"expansion:{c}" for c in names]].to_numpy(dtype=float)
    exp_group = np.nan_to_num(exp_raw, nan=0.0) @ member
    expected = scored.loc[rows, "expected_expansion"].to_numpy(dtype=float)
    at_risk = scored.loc[rows, "revenue_at_risk"].to_numpy(dtype=float)
    recurring = scored.loc[rows, "recurring_revenue"].to_numpy(dtype=float)
    products_offered = int(settings.get("products_offered") or 0)
    position = {idx: k for k, idx in enumerate(features.index)}
    labels = list(groups)
    # The described fields as numbers, once per column (not per row and field).
    described = features.loc[rows]
    numbers = {
        c: _num(described, c) for c in dict.fromkeys(c for cols in groups.values() for c in cols)
    }
    for j, idx in enumerate(rows):
        i = position[idx]
        row = {c: float(v[j]) for c, v in numbers.items()}
        lines = [
            f"churn or downgrade risk {p[j]:.0%} within the horizon: "
            f"{fmt_money(at_risk[j])} of "
            f"{fmt_money(recurring[j])} recurring revenue at risk",
            f"expected expansion {fmt_money(expected[j])}",
        ]
        values = group_points[j]
        for k in np.argsort(-np.abs(values))[:top]:
            if abs(values[k]) < 0.5:
                continue
            text = _describe_group(labels[k], groups[labels[k]], row, products_offered)
            lines.append(f"{text}: churn risk {values[k]:+.0f} pts")
        # the expansion driver that adds most, in money
        if labels:
            k = int(np.argmax(exp_group[j]))
            gain = expected[j] - expected[j] / np.exp(exp_group[j, k])
            if exp_group[j, k] > 0 and gain >= 1_000:
                text = _describe_group(labels[k], groups[labels[k]], row, products_offered)
                if labels[k] == "cs_products":
                    text += ": room to expand"
                lines.append(f"{text}: +{fmt_money(gain)} expected expansion")
        out[i] = lines
    return out


def _groups(names: list[str]) -> dict[str, list[str]]:
    """Customer columns by the business field they describe (a usage or ticket metric's
    level and change together; every other column on its own)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        key = name
        for prefix in ("cs_usage_mean_", "cs_usage_change_"):
            if name.startswith(prefix):
                key = "usage:" + name.removeprefix(prefix)
        for prefix in ("cs_tickets_recent_", "cs_tickets_change_"):
            if name.startswith(prefix):
                key = "tickets:" + name.removeprefix(prefix)
        groups.setdefault(key, []).append(name)
    return groups


def _describe_group(
    key: str, columns: list[str], row: dict[str, float], products_offered: int
) -> str:
    """A field in a CSM's words: a metric by its change over 90 days where known. ``row``:
    the customer's fields as numbers (NaN where missing or not a number)."""
    change = [c for c in columns if "_change_" in c]
    if change and np.isfinite(row.get(change[0], np.nan)):
        return _describe(change[0], row, products_offered)
    return _describe(columns[0], row, products_offered)


def _describe(name: str, row: dict[str, float], products_offered: int) -> str:
    value = row.get(name, np.nan)
    word = _FIELD_WORDS.get(name, name)
    if not np.isfinite(value):
        if name.startswith("cs_usage_"):
            return "no usage recorded yet"
        return f"no {word} recorded"
    if name == "cs_usage_change_active_users":
        way = "down" if value < 0 else "up"
        return f"usage {way} {abs(value) * 100:.0f} % over 90 days"
    if name == "cs_nps":
        return f"NPS {value:.0f}"
    if name == "cs_tickets_change_tickets":
        way = "down" if value < 0 else "up"
        return f"support tickets {way} {abs(value) * 100:.0f} % over 90 days"
    if name == "cs_tickets_recent_tickets":
        return f"{value:.0f} support tickets in 90 days"
    if name == "cs_products":
        of = f" of {products_offered}" if products_offered else ""
        return f"{value:.0f} product{'s' if value != 1 else ''}{of}"
    if name == "cs_tenure_days":
        return f"customer for {value / 365.25:.1f} years"
    if name == "cs_days_to_renewal":
        return f"renewal in {value:.0f} days"
    if name in ("cs_recurring_revenue", "cs_expansion_revenue_365"):
        return f"{word} {fmt_money(value)}"
    if name == "cs_usage_mean_active_users":
        return f"{value:.0f} active users"
    if name == "cs_usage_mean_seat_utilisation":
        return f"{value:.0%} of seats in use"
    if name == "cs_usage_change_seat_utilisation":
        way = "down" if value < 0 else "up"
        return f"seat utilisation {way} {abs(value) * 100:.0f} % over 90 days"
    if name in ("cs_renewals", "cs_downgrades", "cs_expansions"):
        noun = {
            "cs_renewals": "renewal",
            "cs_downgrades": "downgrade",
            "cs_expansions": "expansion",
        }
        k = int(value)
        return f"{k if k else 'no'} past {noun[name]}{'s' if k != 1 else ''}"
    return f"{value:.0f} {word}"


def change_reasons(previous: pd.DataFrame, current: pd.DataFrame) -> pd.Series:
    """Why a customer's customer-success tier moved since the previous run ("" where it did
    not): the move and the current run's strongest reasons that raise its priority, indexed by
    ``account_id``."""
    before = previous.set_index("account_id")["customer_tier"]
    cur = current.set_index("account_id")
    out = pd.Series("", index=cur.index, dtype=object)
    was_tier = pd.to_numeric(before, errors="coerce").reindex(cur.index).to_numpy(dtype=float)
    now_tier = pd.to_numeric(cur["customer_tier"], errors="coerce").to_numpy(dtype=float)
    known = cur.index.isin(before.index)
    for k in range(len(cur.index)):
        was, now = was_tier[k], now_tier[k]
        if not known[k] or np.isnan(now) or was == now:
            continue
        origin = "no customer tier" if np.isnan(was) else f"Tier {int(was)}"
        way = "up" if np.isnan(was) or now < was else "down"
        reasons = [str(r) for r in (cur["customer_reasons"].iloc[k] or [])]
        sign = "+" if way == "up" else "-"
        why = [r for r in reasons if r.endswith(" pts") and f"risk {sign}" in r][:2] or reasons[:1]
        lead = f"moved {way} from {origin} to Tier {int(now)}"
        out.iloc[k] = lead + (": " + "; ".join(why) if why else "")
    return out


def with_change_reasons(scores: pd.DataFrame, previous: pd.DataFrame | None) -> pd.DataFrame:
    """``scores`` with ``customer_change_reason`` against the previous run's customer tiers
    (``account_id``, ``customer_tier``); empty without a previous run."""
    if previous is None or "customer_tier" not in scores:
        return scores.assign(customer_change_reason="")
    reasons = change_reasons(previous, scores)
    return scores.assign(customer_change_reason=reasons.to_numpy())
