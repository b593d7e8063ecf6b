"""Risk: reasons that mislead a rep: contributions that do not add up to the model's score,
grouping that loses or double-counts effect, a driver quoted with the wrong sign or without the
account's own value, a tier rule or next-tier hint that contradicts the tier, and scoring that
tiers one online request differently from the batch run it should agree with."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from features.build import feature_field
from features.config import IcpConfig, IcpCriterion
from tiering.config import Playbook, TierPolicy
from tiering.explain import (
    MINUS,
    chance_headlines,
    drivers,
    field_effects,
    field_map,
    fmt_chance,
    fmt_money,
    group_by_field,
    label_with,
    reason_columns,
    reasons,
    round_one_decimal,
    summaries,
    value_headlines,
)
from tiering.policy import ReferenceCutoffs, assign_tiers, priority, reference_cutoffs

INDUSTRIES = ["software", "fintech", "retail", "manufacturing"]
NUMERIC = [
    "employees",
    "annual_revenue",
    "meeting_30d",
    "meeting_90d",
    "web_visit_90d",
    "days_since_meeting",
    "prior_won",
    "prior_lost",
    "days_since_last_won",
    "tech_crm",
]
FEATURES = ["industry", *NUMERIC]


def make_features(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    employees = np.round(rng.lognormal(6, 1.5, n))
    employees[rng.random(n) < 0.05] = np.nan
    prior_won = rng.poisson(0.5, n).astype(float)
    frame = pd.DataFrame(
        {
            "account_id": [f"A-{i:05d}" for i in range(n)],
            "as_of": pd.Timestamp("2025-06-30"),
            "industry": pd.Series(rng.choice(INDUSTRIES, n), dtype=object),
            "employees": employees,
            "annual_revenue": employees * rng.lognormal(11, 0.5, n),
            "meeting_30d": rng.poisson(0.5, n).astype(float),
            "meeting_90d": rng.poisson(1.5, n).astype(float),
            "web_visit_90d": rng.poisson(4, n).astype(float),
            "days_since_meeting": np.where(rng.random(n) < 0.3, np.nan, rng.uniform(1, 300, n)),
            "prior_won": prior_won,
            "prior_lost": rng.poisson(0.7, n).astype(float),
            "days_since_last_won": np.where(prior_won > 0, rng.uniform(10, 700, n), np.nan),
            "tech_crm": (rng.random(n) < 0.5).astype(float),
        }
    )
    return frame


def encode(features: pd.DataFrame) -> pd.DataFrame:
    out = features[FEATURES].copy()
    out["industry"] = pd.Categorical(features["industry"], categories=INDUSTRIES)
    return out


@dataclass(frozen=True)
class SigmoidCalibrator:
    a: float = 0.9
    b: float = -0.1

    def transform(self, p_raw: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(p_raw, dtype=float), 1e-6, 1 - 1e-6)
        return 1 / (1 + np.exp(-(self.a * np.log(p / (1 - p)) + self.b)))


@dataclass
class TinyBundle:
    """The bundle's scoring surface over two real LightGBM boosters."""

    win_model: lgb.Booster
    value_model: lgb.Booster
    icp: IcpConfig
    policy: TierPolicy
    cutoffs: ReferenceCutoffs
    playbook: Playbook = field(default_factory=Playbook)
    calibrator: SigmoidCalibrator = field(default_factory=SigmoidCalibrator)
    metadata: dict[str, Any] = field(default_factory=lambda: {"model_version": "tiny-1"})
    horizon_days: int = 182

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        x = encode(features)
        margin = self.win_model.predict(x, raw_score=True)
        p = self.calibrator.transform(1 / (1 + np.exp(-margin)))
        value = np.exp(self.value_model.predict(x, raw_score=True))
        return pd.DataFrame(
            {
                "p_convert": p,
                "revenue_if_converts": value,
                "revenue_p10": value * 0.5,
                "revenue_p90": value * 2.0,
                "expected_revenue": p * value,
                "p_win_deal": np.nan,
                "open_pipeline": np.nan,
            },
            index=features.index,
        )

    def contributions(self, features: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        x = encode(features)
        names = [*FEATURES, "bias"]
        win = self.win_model.predict(x, pred_contrib=True)
        value = self.value_model.predict(x, pred_contrib=True)
        return (
            pd.DataFrame(win, columns=names, index=x.index),
            pd.DataFrame(value, columns=names, index=x.index),
        )


PARAMS = {"num_threads": 1, "verbose": -1, "num_leaves": 15, "min_data_in_leaf": 20, "seed": 1}
ICP = IcpConfig(
    criteria=[
        IcpCriterion(
            label="Industry is software or fintech",
            column="industry",
            op="in",
            values=["software", "fintech"],
        ),
        IcpCriterion(label="At least 200 employees", column="employees", op=">=", min=200),
        IcpCriterion(label="Uses a CRM", column="tech_crm", op="is_true"),
    ]
)


@pytest.fixture(scope="module")
def models() -> tuple[lgb.Booster, lgb.Booster]:
    train = make_features(3000, seed=1)
    x = encode(train)
    rng = np.random.default_rng(2)
    logit = (
        0.8 * train["meeting_90d"].fillna(0)
        + 0.5 * np.log1p(train["employees"].fillna(50)) / 3
        + 0.7 * train["prior_won"]
        + np.where(train["industry"] == "software", 0.6, -0.2)
        - 2.5
    )
    won = (rng.random(len(train)) < 1 / (1 + np.exp(-logit))).astype(int)
    log_value = (
        9
        + 0.3 * np.log1p(train["employees"].fillna(50))
        + np.where(train["industry"] == "fintech", 0.5, 0.0)
        + rng.normal(0, 0.3, len(train))
    )
    win = lgb.train({**PARAMS, "objective": "binary"}, lgb.Dataset(x, won), num_boost_round=40)
    value = lgb.train(
        {**PARAMS, "objective": "regression"}, lgb.Dataset(x, log_value), num_boost_round=40
    )
    return win, value


@pytest.fixture(scope="module")
def bundle(models: tuple[lgb.Booster, lgb.Booster]) -> TinyBundle:
    from features.build import evidence_score
    from features.icp import icp_fit

    reference = make_features(1500, seed=3)
    policy = TierPolicy(min_icp_fit_tier1=60, min_evidence_tier1=0.5)
    tiny = TinyBundle(models[0], models[1], ICP, policy, cutoffs=None)  # type: ignore[arg-type]
    ev = tiny.predict(reference)["expected_revenue"].to_numpy()
    fit = icp_fit(reference, ICP)["icp_fit"].to_numpy()
    evidence = evidence_score(reference).to_numpy()
    tiny.cutoffs = reference_cutoffs(ev, fit, evidence, policy, as_of="2025-06-30")
    return tiny


def test_contributions_plus_bias_equal_the_raw_score(
    models: tuple[lgb.Booster, lgb.Booster],
) -> None:
    x = encode(make_features(400, seed=4))
    for booster in models:
        contrib = booster.predict(x, pred_contrib=True)
        raw = booster.predict(x, raw_score=True)
        assert contrib.shape == (400, len(FEATURES) + 1)
        np.testing.assert_allclose(contrib.sum(axis=1), raw, rtol=1e-9, atol=1e-9)


def test_grouping_by_field_preserves_each_rows_sum(bundle: TinyBundle) -> None:
    features = make_features(300, seed=5)
    win, value = bundle.contributions(features)
    for contrib in (win, value):
        grouped = group_by_field(contrib, field_of=feature_field)
        # Meetings (two windows and the recency) and past deals collapse into one field each.
        assert {"meeting", "history"} <= set(grouped.columns)
        assert len(grouped.columns) < len(FEATURES)
        np.testing.assert_allclose(
            grouped.sum(axis=1), contrib[FEATURES].sum(axis=1), rtol=1e-12, atol=1e-12
        )
        members = [f for f in FEATURES if feature_field(f)[0] == "meeting"]
        np.testing.assert_allclose(grouped["meeting"], contrib[members].sum(axis=1))


def test_win_points_add_up_to_the_calibrated_probability_gap(bundle: TinyBundle) -> None:
    features = make_features(300, seed=6)
    win, value = bundle.contributions(features)
    p = bundle.predict(features)["p_convert"].to_numpy()
    bias = win["bias"].to_numpy()
    p_base = bundle.calibrator.transform(1 / (1 + np.exp(-bias)))
    effects = field_effects(win, value, p, p_base, field_map(FEATURES, feature_field))
    far = np.abs(win[FEATURES].sum(axis=1).to_numpy()) >= 0.05
    assert far.sum() > 250
    np.testing.assert_allclose(
        effects.win_points.sum(axis=1)[far], (p - p_base)[far] * 100, atol=1e-9
    )
    # Signs follow the SHAP values of the win model, field by field.
    grouped = group_by_field(win, field_of=feature_field).to_numpy()
    big = np.abs(grouped) > 1e-6
    assert (np.sign(effects.win_points[big]) == np.sign(grouped[big])).all()
    # Deal size: exp of the grouped log-value contribution.
    np.testing.assert_allclose(
        effects.deal_size_pct, np.expm1(group_by_field(value, field_of=feature_field)) * 100
    )


def hand_made_case() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    features = pd.DataFrame(
        {
            "account_id": ["A-1"],
            "industry": pd.Series(["software"], dtype=object),
            "employees": [5200.0],
            "meeting_90d": [4.0],
            "prior_won": [0.0],
            "web_visit_90d": [0.0],
        }
    )
    names = ["industry", "employees", "meeting_90d", "prior_won", "web_visit_90d"]
    win = pd.DataFrame([[0.05, 0.4, 0.7, -0.3, -0.01, -1.0]], columns=[*names, "bias"])
    value = pd.DataFrame([[0.1655, 0.0, 0.0, 0.0, 0.0, 10.0]], columns=[*names, "bias"])
    return features, win, value


def test_reason_texts_quote_the_accounts_values_with_correct_signs() -> None:
    features, win, value = hand_made_case()
    dz = win.drop(columns="bias").sum(axis=1).to_numpy()
    p_base = 1 / (1 + np.exp(1.0))
    p = 1 / (1 + np.exp(-(-1.0 + dz)))
    [items] = drivers(features, win, value, p, p_base, top=3, field_of=feature_field)
    by_field = {d["field"]: d for d in items}
    assert {"employees", "meeting", "history", "industry"} <= set(by_field)
    assert "web_visit" not in by_field  # 0.2 points: immaterial, not a reason

    meetings = by_field["meeting"]
    assert meetings["direction"] == "positive" and meetings["effect_points"] > 0
    assert meetings["text"].startswith("Meetings in the last 90 days: 4 \u2014 ")
    assert re.search(r"win more often: \+\d+ pts", meetings["text"])

    size = by_field["employees"]
    assert "5,200" in size["text"] and size["value"] == 5200.0
    assert re.search(r"\+\d+ pts", size["text"])

    history = by_field["history"]
    assert history["direction"] == "negative" and history["effect_points"] < 0
    assert history["text"].startswith("No deals won with us yet \u2014 ")
    assert re.search(rf"win less often: {MINUS}\d+ pts", history["text"])

    industry = by_field["industry"]
    assert industry["text"].startswith("Industry software \u2014 ")
    assert "deals here are larger: +18 % deal size" in industry["text"]  # exp(0.1655) = 1.18

    # Positives first, each side sorted by effect; the points add up to the probability gap.
    directions = [d["direction"] for d in items]
    assert directions == sorted(directions, key=lambda d: d != "positive")
    total = sum(d["effect_points"] for d in items)
    assert total == pytest.approx(
        (p[0] - p_base) * 100 - by_field.get("web_visit", {}).get("effect_points", 0.0), abs=0.5
    )


def one_account_drivers(
    values: dict[str, Any], win: dict[str, float], value: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Drivers of one account from hand-made contributions (win bias -1 logit, value bias 10)."""
    names = list(win)
    features = pd.DataFrame({"account_id": ["A-1"], **{k: [v] for k, v in values.items()}})
    value = value or {}
    win_frame = pd.DataFrame([[win[n] for n in names] + [-1.0]], columns=[*names, "bias"])
    value_frame = pd.DataFrame(
        [[value.get(n, 0.0) for n in names] + [10.0]], columns=[*names, "bias"]
    )
    p_base = 1 / (1 + np.exp(1.0))
    p = 1 / (1 + np.exp(-(-1.0 + sum(win.values()))))
    [items] = drivers(features, win_frame, value_frame, [p], p_base, field_of=feature_field)
    return items


def test_an_up_driver_never_shows_a_lowering_effect_nor_a_down_driver_a_raising_one() -> None:
    items = one_account_drivers(
        {"employees": 5200.0, "industry": "retail"},
        # Size raises the win chance a lot and shrinks the deal a little (up overall); the
        # industry does the opposite (down overall).
        win={"employees": 0.8, "industry": -0.6},
        value={"employees": -0.05, "industry": 0.03},
    )
    by_field = {d["field"]: d for d in items}
    size, industry = by_field["employees"], by_field["industry"]
    assert size["direction"] == "positive" and industry["direction"] == "negative"
    # The structured numbers keep both parts as the models say them ...
    assert size["deal_size_pct"] < -1 and industry["deal_size_pct"] > 1
    # ... the text shows only the parts that go the driver's way.
    assert re.search(r"win more often: \+\d+ pts", size["text"])
    assert MINUS not in size["text"] and "smaller" not in size["text"]
    assert re.search(rf"win less often: {MINUS}\d+ pts", industry["text"])
    assert "+" not in industry["text"] and "larger" not in industry["text"]
    [line] = summaries([2], [0.3], [1e5], [items], ["priority"])
    up, down = line.split(". Up: ")[1].split(". Down: ")
    assert MINUS not in up and "+" not in down


def test_a_recent_activity_driver_quotes_the_window_that_drives_it() -> None:
    activity = {"web_visit_30d": 2.0, "web_visit_90d": 12.0, "days_since_web_visit": 3.0}
    # Up overall, carried by the 90-day window and the recency; the 30-day count pulled down.
    [up] = one_account_drivers(
        activity, win={"web_visit_30d": -0.5, "web_visit_90d": 0.4, "days_since_web_visit": 0.3}
    )
    assert up["direction"] == "positive"
    assert up["feature"] == "web_visit_90d"
    assert up["text"].startswith("Web visits in the last 90 days: 12 \u2014 ")
    assert "30 days" not in up["text"]
    # Down overall: none in the last 30 days is what lowers it, not the 12 older visits.
    quiet = {**activity, "web_visit_30d": 0.0, "days_since_web_visit": 45.0}
    [down] = one_account_drivers(
        quiet, win={"web_visit_30d": -0.6, "web_visit_90d": 0.5, "days_since_web_visit": -0.4}
    )
    assert down["direction"] == "negative"
    assert down["text"].startswith("No web visits in the last 30 days \u2014 ")
    assert "12" not in down["text"]


@pytest.mark.parametrize(
    ("label", "value", "said"),
    [
        ("Sector", "Sector 2", "Sector 2"),
        ("Sector", "sector 2", "Sector 2"),
        ("Region", "EMEA region", "EMEA region"),
        ("Account owner", "Owner: Jane", "Account Owner: Jane"),
        ("Industry", "software", "Industry software"),
        ("Territory", "West", "Territory West"),
    ],
)
def test_a_label_and_a_value_that_repeat_words_say_them_once(
    label: str, value: str, said: str
) -> None:
    assert label_with(label, value) == said


def test_no_doubled_labels_in_the_drivers() -> None:
    assert feature_field("tech_uses_sap") == ("tech_uses_sap", "Uses sap")
    assert feature_field("tech_erp") == ("tech_erp", "Uses erp")
    [item] = one_account_drivers({"sector": "Sector 2"}, win={"sector": 0.7})
    assert item["label"] == "Sector"
    assert item["text"].startswith("Sector 2 \u2014 ")


@pytest.mark.parametrize(
    ("won", "lost", "note"),
    [
        (1.0, 0.0, "(won 1 of 1 past deals: a single deal, weak evidence)"),
        (0.0, 1.0, "(won 0 of 1 past deals: a single deal, weak evidence)"),
        (1.0, 1.0, "(won 1 of 2 past deals: only 2 deals, weak evidence)"),
        (2.0, 1.0, None),
        (0.0, 0.0, None),
    ],
)
def test_a_figure_that_rests_on_one_or_two_past_deals_says_so(
    won: float, lost: float, note: str | None
) -> None:
    history = {"prior_won": won, "prior_lost": lost, "prior_win_rate": 0.6}
    [item] = one_account_drivers(
        history, win={"prior_won": 0.1, "prior_lost": 0.0, "prior_win_rate": 0.9}
    )
    assert item["feature"] == "prior_win_rate"
    assert item["text"].startswith("Win rate with us (smoothed): 60 % ")
    if note is None:
        assert "weak evidence" not in item["text"]
    else:
        assert note in item["value_text"] and note in item["text"]
        [line] = summaries([2], [0.3], [1e5], [[item]], ["priority"])
        assert note in line
    # Drivers that do not quote past deals never carry the note.
    [other] = one_account_drivers({**history, "employees": 900.0}, win={"employees": 0.9})
    assert "weak evidence" not in other["text"]


def test_headlines_say_the_chance_to_buy_and_the_revenue_if_it_buys() -> None:
    assert chance_headlines([0.34, 0.002], 0.09, "6 months") == [
        "likely to buy in the next 6 months: 34 % (a typical account: 9 %)",
        "likely to buy in the next 6 months: <1 % (a typical account: 9 %)",
    ]
    assert value_headlines([120_000, 5_000, np.nan], [410_000, 5_010, np.nan]) == [
        "if it buys: $120k-$410k",
        "if it buys: about $5.0k",
        "if it buys: unknown",
    ]
    with pytest.raises(ValueError, match="horizon"):
        chance_headlines([0.3], 0.1, " ")


def test_reasons_open_with_the_headlines_when_a_horizon_is_given(bundle: TinyBundle) -> None:
    features = make_features(60, seed=11)
    inputs = reason_inputs(bundle, features)
    today = reason_columns(features, **inputs)
    assert "headline" not in today
    assert all(
        line.startswith("Tier ") and " win chance " in line for line in today["reason_summary"]
    )

    low, high = inputs["expected_value"] * 2, inputs["expected_value"] * 7
    with pytest.raises(ValueError, match="value_low and value_high"):
        reason_columns(features, **inputs, horizon="6 months")
    text = reason_columns(features, **inputs, horizon="6 months", value_low=low, value_high=high)
    assert list(text)[0] == "headline"
    for i, (chance, value) in enumerate(text["headline"]):
        p, p0 = inputs["p_win"][i], inputs["p_base"][i]
        assert chance == (
            f"likely to buy in the next 6 months: {fmt_chance(p)} "
            f"(a typical account: {fmt_chance(p0)})"
        )
        assert value == f"if it buys: {fmt_money(low[i])}-{fmt_money(high[i])}"
        tier = int(inputs["assignment"].tier[i])
        assert text["reason_summary"][i].startswith(f"Tier {tier} \u2014 {chance}; {value}; ")
        assert text["tier_rule_text"][i].startswith("Expected revenue ")
        # The drivers speak of buying, and their points still add up from the typical account.
        for d in text["reasons"][i]:
            assert "win more often" not in d["text"] and "deal size" not in d["text"]
    drivers_text = " ".join(d["text"] for items in text["reasons"] for d in items)
    assert "buy more often" in drivers_text
    # The same drivers as without the horizon, phrased for the account.
    assert [[d["feature"] for d in items] for items in text["reasons"]] == [
        [d["feature"] for d in items] for items in today["reasons"]
    ]


def test_reasons_from_a_real_model_match_their_numbers(bundle: TinyBundle) -> None:
    features = make_features(200, seed=7)
    win, value = bundle.contributions(features)
    p = bundle.predict(features)["p_convert"].to_numpy()
    p_base = bundle.calibrator.transform(1 / (1 + np.exp(-win["bias"].to_numpy())))
    lists = drivers(features, win, value, p, p_base, top=2, field_of=feature_field)
    assert sum(len(items) for items in lists) > 200
    for row, items in zip(features.itertuples(index=False), lists, strict=True):
        assert sum(d["direction"] == "positive" for d in items) <= 2
        assert sum(d["direction"] == "negative" for d in items) <= 2
        for d in items:
            up = d["direction"] == "positive"
            # Every effect a driver's text shows goes the driver's way, and it shows one.
            signs = re.findall(rf"([+{MINUS}])[\d.]+ (?:pts|%)", d["text"])
            assert signs and set(signs) == {"+" if up else MINUS}, d["text"]
            points = re.search(rf"([+{MINUS}])[\d.]+ pts", d["text"])
            its_way = d["effect_points"] > 0 if up else d["effect_points"] < 0
            # The text and the numbers come from the same rounded values; texts quote from 0.5.
            assert (points is not None) == (its_way and abs(d["effect_points"]) >= 0.5)
            own = getattr(row, d["feature"])
            if isinstance(own, str):
                assert own in d["text"]
            elif d["feature"] == "employees" and not np.isnan(own):
                assert f"{own:,.0f}" in d["text"]


def test_a_batchs_drivers_are_each_accounts_own(bundle: TinyBundle) -> None:
    """A batch describes each distinct value once and phrases each rounded effect once: every
    account still reads what it would read scored alone, missing values and weak-evidence
    notes included."""
    features = make_features(300, seed=11)
    features.loc[features.index[::7], "industry"] = None
    win, value = bundle.contributions(features)
    p = bundle.predict(features)["p_convert"].to_numpy()
    p_base = bundle.calibrator.transform(1 / (1 + np.exp(-win["bias"].to_numpy())))
    together = drivers(features, win, value, p, p_base, field_of=feature_field)
    alone = [
        drivers(
            features.iloc[i : i + 1],
            win.iloc[i : i + 1],
            value.iloc[i : i + 1],
            p[i : i + 1],
            p_base[i : i + 1],
            field_of=feature_field,
        )[0]
        for i in range(len(features))
    ]
    assert together == alone
    texts = [d["text"] for items in together for d in items]
    assert any("weak evidence" in t for t in texts) and any("unknown" in t for t in texts)
    assert drivers(features.iloc[:0], win.iloc[:0], value.iloc[:0], p[:0], p_base[:0]) == []


@given(
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False, width=64),
        # Values at or next to a half-tenth, where scaled rounding could go the other way.
        st.builds(
            lambda k, ulps: (
                float(np.nextafter(k / 20, np.inf if ulps > 0 else -np.inf)) if ulps else k / 20
            ),
            st.integers(-(10**7), 10**7),
            st.integers(-1, 1),
        ),
    )
)
def test_rounding_to_a_tenth_is_pythons(value: float) -> None:
    assert round_one_decimal(np.array([value]))[0] == round(value, 1)


def reason_inputs(bundle: TinyBundle, features: pd.DataFrame) -> dict[str, Any]:
    """Everything :func:`reasons` needs for these rows, as scoring computes it."""
    from features.build import evidence_score
    from features.icp import icp_fit

    predicted = bundle.predict(features)
    ev = predicted["expected_revenue"].to_numpy()
    fit = icp_fit(features, ICP)
    evidence = evidence_score(features).to_numpy()
    prio = priority(ev, fit["icp_fit"], bundle.cutoffs.reference_ev, bundle.policy.weights)
    win, value = bundle.contributions(features)
    return {
        "win_contrib": win,
        "value_contrib": value,
        "p_win": predicted["p_convert"].to_numpy(),
        "p_base": bundle.calibrator.transform(1 / (1 + np.exp(-win["bias"].to_numpy()))),
        "expected_value": ev,
        "icp_fit": fit["icp_fit"],
        "icp_missed": fit["icp_missed"].tolist(),
        "evidence": evidence,
        "priority": prio,
        "assignment": assign_tiers(prio, fit["icp_fit"], evidence, bundle.policy),
        "reference_ev": bundle.cutoffs.reference_ev,
        "policy": bundle.policy,
        "playbook": bundle.playbook,
        "field_of": feature_field,
    }


def test_tier_rule_and_next_tier_hint_follow_the_assignment(bundle: TinyBundle) -> None:
    features = make_features(400, seed=8)
    inputs = reason_inputs(bundle, features)
    ev, fit, assignment = inputs["expected_value"], inputs["icp_fit"], inputs["assignment"]
    text = reasons(features, **inputs)
    for i in range(len(features)):
        tier, rule_text = int(assignment.tier[i]), text["tier_rule_text"].iloc[i]
        assert rule_text.startswith(f"Expected value {fmt_money(ev[i])}, rank ")
        assert f"rank {int(assignment.rank[i]):,} of 400" in rule_text  # type: ignore[index]
        assert text["reason_summary"].iloc[i].startswith(f"Tier {tier} \u2014 win chance ")
        assert text["playbook"].iloc[i] == bundle.playbook.for_tier(tier)
        hint = text["next_tier_hint"].iloc[i]
        if tier == 1:
            assert f"ICP fit {fit.iloc[i]:.0f} >= 60" in rule_text
            assert hint == "Already in the top tier"
        else:
            assert hint.startswith(f"For Tier {tier - 1}: ")
        if assignment.rule[i] == "icp_gate":
            assert "needed for Tier 1" in rule_text
            assert "ICP fit 60 (now" in hint
        if tier == 2:
            # Whatever ICP fit the hint asks for, Tier 1 needs at least its minimum.
            asked = [int(n) for n in re.findall(r"ICP fit (\d+)", hint)]
            assert all(n >= 60 for n in asked)
    assert (assignment.rule == "icp_gate").any()


def test_score_batch_and_online_agree_on_the_reference_population(bundle: TinyBundle) -> None:
    from tiering.customers import CUSTOMER_COLUMNS
    from tiering.scoring import OUTPUT_COLUMNS, REASON_COLUMNS, score

    reference = make_features(1500, seed=3)  # the population the cut-offs were frozen on
    batch = score(bundle, reference, reasons=False, population=True)
    assert list(batch.columns) == OUTPUT_COLUMNS + CUSTOMER_COLUMNS
    assert batch["tier"].value_counts().to_dict() == dict(
        zip((1, 2, 3), bundle.cutoffs.tier_sizes, strict=True)
    )
    online = pd.concat(
        [score(bundle, reference.iloc[i : i + 1], population=False) for i in range(0, 1500, 97)]
    )
    assert list(online.columns) == OUTPUT_COLUMNS + CUSTOMER_COLUMNS + REASON_COLUMNS
    np.testing.assert_array_equal(online["tier"], batch["tier"].iloc[::97])
    np.testing.assert_allclose(online["priority"], batch["priority"].iloc[::97])
    assert online["cutoffs_used"].str.contains("as of 2025-06-30").all()
    assert batch["cutoffs_used"].str.contains("1,500 accounts").all()
    assert (online["model_version"] == "tiny-1").all()
    first = online.iloc[0]
    assert isinstance(first["reasons"], list) and first["reasons"]
    assert "of the reference list (2025-06-30)" in first["tier_rule_text"]
    np.testing.assert_allclose(
        batch["expected_revenue"], batch["p_convert"] * batch["revenue_if_converts"]
    )
    # Online answers open with the headlines: the chance to buy within 6 months, the range.
    assert first["headline"][0].startswith("likely to buy in the next 6 months: ")
    assert first["headline"][1].startswith("if it buys: $")


def test_score_with_reasons_keeps_the_rows_and_their_order(bundle: TinyBundle) -> None:
    from tiering.scoring import score

    features = make_features(120, seed=9).sample(frac=1.0, random_state=0)
    scored = score(bundle, features, top_reasons=2)
    assert scored.index.equals(features.index)
    assert (scored["account_id"].to_numpy() == features["account_id"].to_numpy()).all()
    assert scored["reason_summary"].str.len().gt(20).all()
    for items in scored["reasons"]:
        assert sum(d["direction"] == "positive" for d in items) <= 2
