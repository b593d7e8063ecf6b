"""The deployable model bundle: named models over one feature encoding, the ICP, the tier
policy, the playbook and the reference cut-offs frozen at training.

The models, by name:

- ``conversion``: P(the account books at least one won deal within the horizon H), a LightGBM
  binary booster and its calibrator. Ranks accounts (with ``revenue``).
- ``revenue``: won revenue within H if the account converts, with a P10-P90 range; a LightGBM
  booster on a log scale, or, where no booster beat it on the calibration slice, the segment
  median it fell back to.
- ``deal_win`` (optional): P(win) of a deal opened now; prices each account's open pipeline.
- ``churn`` and ``expansion`` (optional, customers only): P(churn or downgrade within H),
  calibrated, and the expected expansion revenue within H. They read their own feature list
  (the ``cs_`` customer columns and the account columns), kept in ``customers.json`` with the
  customer tier settings and cut-offs; a bundle without them loads and scores prospects as
  before, and the format version did not change for them (older bundles have none).

Expected revenue = P(convert) x revenue if it converts: what tiers rank. A further target (e.g.
churn risk for customers) is one more named model: a kind this module knows (probability or
amount) saved under its own name, with nothing else to change here.

Saved as a folder of text files a person can read (LightGBM's native model text, JSON for
everything else): no pickles, so a bundle can be inspected, diffed and loaded by any version
of this code that knows the format. Training writes bundles; tiering, serving and the MLflow
pyfunc read them.

Layout of a saved bundle::

    bundle.json              format version, feature names, categories, model names and kinds
    models/<name>.txt        LightGBM booster text (absent for a segment-median fallback)
    models/<name>.json       the model's calibrator, or its objective, smearing, range, medians
    icp.json, policy.json, playbook.json
    cutoffs.json             reference expected-revenue distribution + Tier 1/2 cut-offs
                             (tiering.policy.ReferenceCutoffs)
    customers.json           (with churn/expansion) their features, categories, tier settings
    metadata.json            versions, horizon, training window, metrics, feature config
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.config import IcpConfig
from tiering.config import Playbook, TierPolicy
from tiering.policy import ReferenceCutoffs

FORMAT_VERSION = 2
# Probabilities never reach exactly 0 or 1: a log loss or a log-odds of a calibrated value
# must stay finite, and no deal is ever certain.
P_CLIP = 1e-6
SMALL_BATCH_ROWS = 2_000
"""Fewer rows than this are predicted on one thread."""

ValueObjective = Literal["log_l2", "gamma", "tweedie", "segment_median"]
CONVERSION, REVENUE, DEAL_WIN = "conversion", "revenue", "deal_win"
CHURN, EXPANSION = "churn", "expansion"
CUSTOMER_MODELS = (CHURN, EXPANSION)


class BundleError(ValueError):
    """A bundle folder that is missing files or does not match the expected format."""


@dataclass(frozen=True)
class Calibrator:
    """Maps the win model's raw probability to a calibrated one.

    isotonic: piecewise-linear through (x, y) thresholds, clipped at the ends (what sklearn's
        IsotonicRegression predicts). sigmoid (Platt): p = 1 / (1 + exp(-(a * logit(p_raw) + b))).
    identity: no calibration (only for tests and for data too small to calibrate on).
    """

    method: Literal["isotonic", "sigmoid", "identity"]
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    a: float = 1.0
    b: float = 0.0

    def transform(self, p_raw: np.ndarray | pd.Series) -> np.ndarray:
        p = np.clip(np.asarray(p_raw, dtype=float), P_CLIP, 1 - P_CLIP)
        if self.method == "isotonic":
            out = np.interp(p, np.asarray(self.x), np.asarray(self.y))
        elif self.method == "sigmoid":
            logit = np.log(p / (1 - p))
            out = 1.0 / (1.0 + np.exp(-(self.a * logit + self.b)))
        else:
            out = p
        return np.clip(out, P_CLIP, 1 - P_CLIP)

    def to_dict(self) -> dict[str, Any]:
        if self.method == "isotonic":
            return {"method": "isotonic", "x": list(self.x), "y": list(self.y)}
        if self.method == "sigmoid":
            return {"method": "sigmoid", "a": self.a, "b": self.b}
        return {"method": "identity"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        method = data.get("method")
        if method == "isotonic":
            x, y = data.get("x", []), data.get("y", [])
            if len(x) != len(y) or len(x) < 1:
                raise BundleError("calibrator: isotonic needs equally long, non-empty x and y")
            return cls("isotonic", x=tuple(map(float, x)), y=tuple(map(float, y)))
        if method == "sigmoid":
            return cls("sigmoid", a=float(data["a"]), b=float(data["b"]))
        if method == "identity":
            return cls("identity")
        raise BundleError(f"calibrator: unknown method {method!r}")


@dataclass(frozen=True)
class ValueInterval:
    """P10/P90 of the deal value as multiplicative offsets of the point prediction.

    Split-conformal: the offsets are quantiles of log(actual / predicted) over won deals of the
    calibration slice (which the value model was not fitted on), so the range is
    ``[point * exp(low), point * exp(high)]``.
    """

    low: float
    high: float
    level: float = 0.8
    method: str = "split_conformal_log_residual"
    n_calibration: int = 0

    def bounds(self, point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return point * np.exp(self.low), point * np.exp(self.high)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "n_calibration": self.n_calibration,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValueInterval:
        return cls(
            low=float(data["low"]),
            high=float(data["high"]),
            level=float(data.get("level", 0.8)),
            method=str(data.get("method", "split_conformal_log_residual")),
            n_calibration=int(data.get("n_calibration", 0)),
        )


def booster_to_text(booster: lgb.Booster) -> str:
    return booster.model_to_string(num_iteration=-1)


def booster_from_text(text: str) -> lgb.Booster:
    return lgb.Booster(model_str=text)


def encode_features(
    features: pd.DataFrame, feature_names: list[str], categories: dict[str, list[str]]
) -> pd.DataFrame:
    """The model matrix: the training column order, categoricals with the levels frozen at
    training (an unseen level becomes missing), everything else float. One definition for
    training and scoring, so the two cannot drift apart."""
    plan = _plan(tuple(feature_names), _categories_key(categories))
    columns: dict[str, Any] = dict.fromkeys(feature_names)
    numeric = plan.numeric_block(features)
    for k, j in enumerate(plan.numeric_positions):
        columns[feature_names[j]] = numeric[:, k]
    for j, levels, codes in plan.category_codes(features):
        columns[feature_names[j]] = pd.Categorical.from_codes(codes, dtype=levels)
    return pd.DataFrame(columns, index=features.index)


def _categories_key(categories: dict[str, list[str]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((name, tuple(levels)) for name, levels in categories.items())


@dataclass(frozen=True)
class _EncodingPlan:
    """How to turn feature rows into the model matrix, worked out once per feature list and
    category levels (see ``encode_features`` for the rules)."""

    feature_names: tuple[str, ...]
    numeric_positions: tuple[int, ...]
    categorical: tuple[tuple[int, pd.CategoricalDtype, dict[str, int]], ...]

    def require_columns(self, features: pd.DataFrame) -> None:
        missing = [c for c in self.feature_names if c not in features.columns]
        if missing:
            raise BundleError(
                f"features: {len(missing)} model input column(s) missing, e.g. {missing[:5]}"
            )

    def numeric_block(self, features: pd.DataFrame) -> np.ndarray:
        """The numeric inputs as float64 (rows x numeric inputs); text that is not a number
        becomes NaN."""
        self.require_columns(features)
        names = [self.feature_names[j] for j in self.numeric_positions]
        out = np.empty((len(features), len(names)), dtype=np.float64)
        dtypes = dict(zip(features.columns, features.dtypes, strict=True))
        plain = [k for k, name in enumerate(names) if _plain_numeric(dtypes[name])]
        if plain:
            # One conversion for every column numpy can cast as is (the usual case).
            out[:, plain] = features[[names[k] for k in plain]].to_numpy(dtype=np.float64)
        for k, name in enumerate(names):
            if not _plain_numeric(dtypes[name]):
                out[:, k] = pd.to_numeric(features[name], errors="coerce").astype(float)
        return out

    def category_codes(
        self, features: pd.DataFrame
    ) -> list[tuple[int, pd.CategoricalDtype, np.ndarray]]:
        """(position, dtype, codes) per categorical input; code -1 = missing or unseen."""
        self.require_columns(features)
        out = []
        for j, dtype, code_of in self.categorical:
            col = features[self.feature_names[j]]
            if pd.api.types.infer_dtype(col, skipna=True) not in ("string", "empty"):
                # Numbers, booleans, categoricals: compared as their text, like training did.
                col = col.astype("string")
            # Missing values (None, NaN, NA) are no level, so they get -1 like unseen text.
            values = col.to_numpy(dtype=object)
            if len(values) >= _HASHED_LOOKUP_ROWS:
                levels = pd.Index(list(code_of), dtype=object)
                codes = levels.get_indexer(pd.Index(values, dtype=object)).astype(np.int64)
            else:
                codes = np.fromiter(
                    (code_of.get(v, -1) for v in values), dtype=np.int64, count=len(values)
                )
            out.append((j, dtype, codes))
        return out

    def matrix(self, features: pd.DataFrame) -> np.ndarray:
        """The float64 matrix LightGBM builds from the encoded DataFrame: numeric inputs as
        they are, categoricals as their level code (NaN when missing or unseen)."""
        out = np.empty((len(features), len(self.feature_names)), dtype=np.float64)
        out[:, list(self.numeric_positions)] = self.numeric_block(features)
        for j, _, codes in self.category_codes(features):
            out[:, j] = np.where(codes < 0, np.nan, codes)
        return out


# From this many rows on, pandas' hash table beats a dict lookup per value (same matches:
# equal text, nothing else).
_HASHED_LOOKUP_ROWS = 1_000


def _plain_numeric(dtype: Any) -> bool:
    return isinstance(dtype, np.dtype) and dtype.kind in "biuf"


def _model_matrix(
    features: pd.DataFrame,
    names: list[str],
    categories: dict[str, list[str]],
    boosters: list[lgb.Booster],
) -> np.ndarray | pd.DataFrame:
    """The matrix ``boosters`` read (see ``Bundle.model_matrix``): float64 with level codes
    when every booster reads the columns and levels of ``encode_features``, else the encoded
    DataFrame for LightGBM's own re-mapping."""
    plan = _plan(tuple(names), _categories_key(categories))
    levels = [list(dtype.categories) for _, dtype, _ in plan.categorical]
    codes = all(
        booster.num_feature() == len(plan.feature_names)
        and (booster.pandas_categorical is None or booster.pandas_categorical == levels)
        for booster in boosters
    )
    return plan.matrix(features) if codes else encode_features(features, names, categories)


@functools.lru_cache(maxsize=16)
def _plan(
    feature_names: tuple[str, ...], categories: tuple[tuple[str, tuple[str, ...]], ...]
) -> _EncodingPlan:
    levels = dict(categories)
    categorical = []
    for j, name in enumerate(feature_names):
        if name in levels:
            # Refuses duplicate levels, as pd.Categorical does.
            dtype = pd.CategoricalDtype(categories=list(levels[name]))
            code_of = {str(level): code for code, level in enumerate(dtype.categories)}
            categorical.append((j, dtype, code_of))
    return _EncodingPlan(
        feature_names=feature_names,
        numeric_positions=tuple(j for j, n in enumerate(feature_names) if n not in levels),
        categorical=tuple(categorical),
    )


def segment_key(frame: pd.DataFrame) -> pd.Series:
    """industry x employee size band ('unknown' where a column is missing or empty): the
    segments of the naive baselines and of the revenue model's median fallback."""
    from features.icp import size_band

    industry = (
        frame["industry"].astype(object).where(frame["industry"].notna(), "unknown").astype(str)
        if "industry" in frame
        else pd.Series("unknown", index=frame.index)
    )
    band = (
        size_band(frame["employees"])
        if "employees" in frame
        else pd.Series("size unknown", index=frame.index)
    )
    return industry + " | " + band.astype(str)


@dataclass
class ProbabilityModel:
    """A binary booster (raw score = log-odds) and the calibrator of its probability; or, where
    training had only one outcome to learn from (every account converted, say), no booster and
    the observed ``rate`` for everybody."""

    booster: lgb.Booster | None
    calibrator: Calibrator
    rate: float = float("nan")
    kind: Literal["probability"] = "probability"

    def predict(self, raw: np.ndarray) -> np.ndarray:
        return self.calibrator.transform(1.0 / (1.0 + np.exp(-raw)))

    def constant_raw(self, n: int) -> np.ndarray:
        p = min(max(self.rate, P_CLIP), 1 - P_CLIP)
        return np.full(n, math.log(p / (1 - p)))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "calibrator": self.calibrator.to_dict(), "rate": self.rate}


@dataclass
class AmountModel:
    """An amount (revenue) in currency: a booster whose raw score is a log (log_l2 by
    construction, gamma/tweedie through their log link), or the segment medians it fell back
    to (``objective = "segment_median"``, no booster). ``interval`` gives P10/P90."""

    booster: lgb.Booster | None
    objective: ValueObjective
    interval: ValueInterval
    # log_l2 predicts the mean log value; exp() of it is a median, the smearing factor (mean of
    # exp(residual) on held-out rows) turns it into the mean a revenue forecast needs.
    smearing: float = 1.0
    medians: dict[str, float] = field(default_factory=dict)
    overall: float = float("nan")
    kind: Literal["amount"] = "amount"

    def from_raw(self, raw: np.ndarray) -> np.ndarray:
        return np.exp(raw) * (self.smearing if self.objective == "log_l2" else 1.0)

    def fallback(self, features: pd.DataFrame) -> np.ndarray:
        return segment_key(features).map(self.medians).fillna(self.overall).to_numpy(dtype=float)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "objective": self.objective,
            "interval": self.interval.to_dict(),
            "smearing": self.smearing,
            "medians": self.medians,
            "overall": self.overall,
        }


Model = ProbabilityModel | AmountModel


def _model_from_dict(data: dict[str, Any], booster: lgb.Booster | None) -> Model:
    kind = data.get("kind")
    if kind == "probability":
        rate = float(data.get("rate", math.nan))
        if booster is None and math.isnan(rate):
            raise BundleError("a probability model needs its booster file (or a constant rate)")
        return ProbabilityModel(booster, Calibrator.from_dict(data["calibrator"]), rate)
    if kind == "amount":
        objective = data.get("objective")
        if booster is None and objective != "segment_median":
            raise BundleError(f"amount model ({objective}) needs its booster file")
        return AmountModel(
            booster=booster,
            objective=objective,  # type: ignore[arg-type]  # checked just above / by training
            interval=ValueInterval.from_dict(data["interval"]),
            smearing=float(data.get("smearing", 1.0)),
            medians={str(k): float(v) for k, v in data.get("medians", {}).items()},
            overall=float(data.get("overall", math.nan)),
        )
    raise BundleError(f"unknown model kind {kind!r}")


def _empty_cutoffs() -> ReferenceCutoffs:
    # An empty reference stands for "not frozen yet" (see tiering.policy.ReferenceCutoffs).
    return ReferenceCutoffs("1970-01-01", np.array([], dtype=float), None, None, 0)


PREDICTION_COLUMNS = [
    "p_convert",
    "revenue_if_converts",
    "revenue_p10",
    "revenue_p90",
    "expected_revenue",
    "p_win_deal",
    "open_pipeline",
]


@dataclass
class Bundle:
    models: dict[str, Model]
    feature_names: list[str]
    categories: dict[str, list[str]]
    horizon_days: int = 182
    icp: IcpConfig = field(default_factory=IcpConfig)
    policy: TierPolicy = field(default_factory=TierPolicy)
    playbook: Playbook = field(default_factory=Playbook)
    cutoffs: ReferenceCutoffs = field(default_factory=_empty_cutoffs)
    metadata: dict[str, Any] = field(default_factory=dict)
    # The customer models' inputs and the customer tier settings (``tiering.customers``).
    customer: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.models.get(CONVERSION), ProbabilityModel):
            raise BundleError("a bundle needs a 'conversion' probability model")
        if not isinstance(self.models.get(REVENUE), AmountModel):
            raise BundleError("a bundle needs a 'revenue' amount model")
        present = [m for m in CUSTOMER_MODELS if m in self.models]
        if present and (len(present) < 2 or "feature_names" not in self.customer):
            raise BundleError(
                "the customer models come as a pair ('churn' and 'expansion') with their "
                "feature names in customers.json"
            )

    @property
    def has_customer_models(self) -> bool:
        return CHURN in self.models and EXPANSION in self.models

    def predict_customers(self, features: pd.DataFrame) -> pd.DataFrame:
        """P(churn or downgrade within H) and expected expansion revenue within H of each row
        (``p_churn``, ``expected_expansion``), and the models' SHAP values (``churn:<feature>``
        in log-odds, ``expansion:<feature>`` in log revenue, each with its ``bias``)."""
        names = list(self.customer["feature_names"])
        categories = {k: list(v) for k, v in self.customer.get("categories", {}).items()}
        churn = self.models[CHURN]
        expansion = self.models[EXPANSION]
        assert isinstance(churn, ProbabilityModel) and isinstance(expansion, AmountModel)
        boosters = [m.booster for m in (churn, expansion) if m.booster is not None]
        encoded = _model_matrix(features, names, categories, boosters)
        out: dict[str, Any] = {}
        if churn.booster is not None:
            raw = self._run(churn.booster, encoded, raw_score=True)
            contrib = self._explain(churn.booster, encoded)
        else:
            raw = churn.constant_raw(len(features))
            contrib = np.zeros((len(features), len(names) + 1))
            contrib[:, -1] = raw
        out["p_churn"] = churn.predict(raw)
        if expansion.booster is not None:
            raw_e = self._run(expansion.booster, encoded, raw_score=True)
            contrib_e = self._explain(expansion.booster, encoded)
        else:
            raw_e = np.log(np.maximum(expansion.fallback(features), 1e-9))
            contrib_e = np.zeros((len(features), len(names) + 1))
            contrib_e[:, -1] = raw_e
        out["expected_expansion"] = expansion.from_raw(raw_e)
        for j, name in enumerate([*names, "bias"]):
            out[f"churn:{name}"] = contrib[:, j]
            out[f"expansion:{name}"] = contrib_e[:, j]
        return pd.DataFrame(out, index=features.index)

    @property
    def conversion(self) -> ProbabilityModel:
        return self.models[CONVERSION]  # type: ignore[return-value]  # checked in __post_init__

    @property
    def revenue(self) -> AmountModel:
        return self.models[REVENUE]  # type: ignore[return-value]  # checked in __post_init__

    @property
    def deal_win(self) -> ProbabilityModel | None:
        model = self.models.get(DEAL_WIN)
        return model if isinstance(model, ProbabilityModel) else None

    # Names the explanations and the MLflow pyfunc use for the two ranking models.
    @property
    def calibrator(self) -> Calibrator:
        return self.conversion.calibrator

    def boosters(self) -> list[lgb.Booster]:
        """The account models' boosters (those reading ``feature_names``)."""
        return [
            m.booster
            for name, m in self.models.items()
            if m.booster is not None and name not in CUSTOMER_MODELS
        ]

    # ------------------------------------------------------------------ predictions
    def encode(self, features: pd.DataFrame) -> pd.DataFrame:
        """The model matrix: see ``encode_features``."""
        return encode_features(features, self.feature_names, self.categories)

    def model_matrix(self, features: pd.DataFrame) -> np.ndarray | pd.DataFrame:
        """What the boosters read: the float64 matrix LightGBM itself would build from
        ``encode(features)`` (categoricals as level codes, NaN when missing or unseen), built
        directly; the encoded DataFrame when a booster's stored category levels differ from
        the bundle's, so that LightGBM's own re-mapping applies."""
        return _model_matrix(features, self.feature_names, self.categories, self.boosters())

    @staticmethod
    def _threads(booster: lgb.Booster, n_rows: int) -> int:
        # Starting threads costs more than a few rows take to predict; big batches use the
        # threads the model was trained with (0: OpenMP's default).
        if n_rows < SMALL_BATCH_ROWS:
            return 1
        return int(booster.params.get("num_threads", 0) or 0)

    def _run(self, booster: lgb.Booster, encoded: Any, **kind: bool) -> np.ndarray:
        threads = self._threads(booster, len(encoded))
        return np.asarray(booster.predict(encoded, num_threads=threads, **kind), dtype=float)

    def _explain(self, booster: lgb.Booster, encoded: Any) -> np.ndarray:
        """Exact TreeSHAP: the compiled tables of ``tiering.treeshap`` on the float matrix
        (LightGBM's ``pred_contrib`` values, several times faster); LightGBM itself on an
        encoded DataFrame (category levels it re-maps)."""
        if not isinstance(encoded, np.ndarray):
            return self._run(booster, encoded, pred_contrib=True)
        from tiering.treeshap import contributions

        threads = self._threads(booster, len(encoded)) or os.cpu_count() or 1
        return contributions(booster, encoded, threads=threads)

    def _probability_raw(self, model: ProbabilityModel, encoded: Any) -> np.ndarray:
        if model.booster is None:
            return model.constant_raw(len(encoded))
        return self._run(model.booster, encoded, raw_score=True)

    def _amount_raw(self, encoded: Any, features: pd.DataFrame) -> np.ndarray:
        revenue = self.revenue
        if revenue.booster is None:
            return np.log(np.maximum(revenue.fallback(features), 1e-9))
        return self._run(revenue.booster, encoded, raw_score=True)

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        return self._predict_encoded(self.model_matrix(features), features)

    def _predict_encoded(self, encoded: Any, features: pd.DataFrame) -> pd.DataFrame:
        conversion = self.conversion
        p_convert = conversion.predict(self._probability_raw(conversion, encoded))
        revenue = self.revenue
        raw = self._amount_raw(encoded, features)
        value = np.exp(raw) if revenue.booster is None else revenue.from_raw(raw)
        p10, p90 = revenue.interval.bounds(value)
        deal = self.deal_win
        if deal is not None:
            p_deal = deal.predict(self._probability_raw(deal, encoded))
        else:
            p_deal = np.full(len(features), np.nan)
        open_amount = (
            pd.to_numeric(features["open_amount"], errors="coerce").to_numpy(dtype=float)
            if "open_amount" in features
            else np.full(len(features), np.nan)
        )
        return pd.DataFrame(
            {
                "p_convert": p_convert,
                "revenue_if_converts": value,
                "revenue_p10": p10,
                "revenue_p90": p90,
                "expected_revenue": p_convert * value,
                "p_win_deal": p_deal,
                "open_pipeline": open_amount * p_deal,
            },
            index=features.index,
        )

    def contributions(self, features: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """SHAP values (LightGBM's exact TreeSHAP) of the conversion model (log-odds, before
        calibration) and of the revenue model (log revenue); columns feature_names + ``bias``.
        A segment-median revenue fallback has no drivers: all its effect is in ``bias``."""
        return self._contributions_encoded(self.model_matrix(features), features)

    def _contributions_encoded(
        self, encoded: Any, features: pd.DataFrame
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        names = [*self.feature_names, "bias"]
        index = features.index
        conversion = self.conversion
        if conversion.booster is not None:
            conv = self._explain(conversion.booster, encoded)
        else:
            conv = np.zeros((len(features), len(names)))
            conv[:, -1] = conversion.constant_raw(len(features))
        booster = self.revenue.booster
        if booster is not None:
            value = self._explain(booster, encoded)
        else:
            value = np.zeros((len(features), len(names)))
            value[:, -1] = self._amount_raw(encoded, features)
        # The arrays are ours alone: no need for pandas to copy them (a batch chunk's
        # contributions are tens of MB).
        return (
            pd.DataFrame(conv, columns=names, index=index, copy=False),
            pd.DataFrame(value, columns=names, index=index, copy=False),
        )

    def predict_with_contributions(
        self, features: pd.DataFrame
    ) -> tuple[pd.DataFrame, tuple[pd.DataFrame, pd.DataFrame]]:
        """``predict`` and ``contributions`` of the same rows, encoding them once."""
        encoded = self.model_matrix(features)
        return (
            self._predict_encoded(encoded, features),
            self._contributions_encoded(encoded, features),
        )

    def explainer_key(self) -> str:
        """A digest of everything ``contributions`` depends on besides the rows: the account
        models' trees, their inputs and category levels, and the LightGBM that reads the trees
        (it computes the values of an encoded DataFrame itself). Not the version label: bundles
        trained outside the registry all read "unregistered", and their SHAP values differ."""
        digest = hashlib.sha256()
        digest.update(json.dumps([lgb.__version__, self.feature_names, self.categories]).encode())
        for name in (CONVERSION, REVENUE):
            model = self.models[name]
            digest.update(json.dumps([name, model.to_dict()], default=_json_default).encode())
            if model.booster is not None:
                digest.update(booster_to_text(model.booster).encode())
        return digest.hexdigest()[:32]

    def input_fingerprints(self, features: pd.DataFrame) -> np.ndarray:
        """One digest per row of what ``contributions`` reads of it: the model matrix (the
        category codes under the bundle's levels fix what LightGBM's own re-mapping reads)
        and, when the revenue model is the segment-median fallback, the segment. Equal
        digests under an equal ``explainer_key`` mean equal SHAP values."""
        plan = _plan(tuple(self.feature_names), _categories_key(self.categories))
        # One bit pattern per value: every NaN alike, -0.0 as 0.0 (the trees read them alike).
        matrix = np.ascontiguousarray(plan.matrix(features)) + 0.0
        matrix[np.isnan(matrix)] = np.nan
        segment = (
            segment_key(features).to_numpy(dtype=str) if self.revenue.booster is None else None
        )
        out = np.empty(len(matrix), dtype=object)
        for i, row in enumerate(matrix):
            digest = hashlib.blake2b(row.tobytes(), digest_size=16)
            if segment is not None:
                digest.update(str(segment[i]).encode())
            out[i] = digest.hexdigest()
        return out

    @property
    def version(self) -> str:
        return str(self.metadata.get("model_version", "unregistered"))

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        (out / "models").mkdir(parents=True, exist_ok=True)
        files: list[str] = []

        def write_json(name: str, data: Any) -> None:
            _write_json(out / name, data)
            files.append(name)

        for name, model in self.models.items():
            if model.booster is not None:
                (out / "models" / f"{name}.txt").write_text(
                    booster_to_text(model.booster), encoding="utf-8"
                )
                files.append(f"models/{name}.txt")
            write_json(f"models/{name}.json", model.to_dict())
        write_json("icp.json", self.icp.model_dump(mode="json"))
        write_json("policy.json", self.policy.model_dump(mode="json"))
        write_json("playbook.json", self.playbook.model_dump(mode="json"))
        write_json("cutoffs.json", self.cutoffs.to_dict())
        write_json("metadata.json", self.metadata)
        if self.customer:
            write_json("customers.json", self.customer)
        header = {
            "format_version": FORMAT_VERSION,
            "feature_names": self.feature_names,
            "categories": self.categories,
            "horizon_days": self.horizon_days,
            "models": {name: model.kind for name, model in self.models.items()},
            # Checked before anything is parsed: LightGBM aborts the process natively on a
            # truncated model file instead of raising.
            "sha256": {name: _sha256(out / name) for name in files},
        }
        _write_json(out / "bundle.json", header)
        return out

    @classmethod
    def load(cls, directory: str | Path) -> Bundle:
        src = Path(directory)
        if not (src / "bundle.json").is_file():
            raise BundleError(f"{src}: not a model bundle (no bundle.json)")
        try:
            header = _read_json(src / "bundle.json")
            found = header.get("format_version")
        except (ValueError, AttributeError):
            raise BundleError(f"{src}/bundle.json: not a bundle header (damaged JSON)") from None
        if found != FORMAT_VERSION:
            raise BundleError(
                f"{src}: bundle format {found!r}, this code reads {FORMAT_VERSION}; "
                "retrain with `tiering train` to get a bundle this version can serve"
            )
        recorded = _verify_files(src, header.get("sha256"))
        names = header.get("models") if isinstance(header.get("models"), dict) else {}
        unrecorded = [
            f for f in (*REQUIRED_FILES, *(f"models/{n}.json" for n in names)) if f not in recorded
        ]
        if unrecorded:
            raise BundleError(
                f"{src}/bundle.json: no sha256 recorded for {unrecorded}; the bundle is "
                "incomplete or was edited by hand; re-train"
            )
        try:
            models: dict[str, Model] = {}
            for name in header["models"]:
                text = f"models/{name}.txt"
                booster = (
                    booster_from_text((src / text).read_text(encoding="utf-8"))
                    if text in recorded
                    else None
                )
                models[name] = _model_from_dict(
                    _read_json(src / "models" / f"{name}.json"), booster
                )
            return cls(
                models=models,
                feature_names=list(header["feature_names"]),
                categories={k: list(v) for k, v in header["categories"].items()},
                horizon_days=int(header.get("horizon_days", 182)),
                icp=IcpConfig.model_validate(_read_json(src / "icp.json")),
                policy=TierPolicy.model_validate(_read_json(src / "policy.json")),
                playbook=Playbook.model_validate(_read_json(src / "playbook.json")),
                cutoffs=ReferenceCutoffs.from_dict(_read_json(src / "cutoffs.json")),
                metadata=_read_json(src / "metadata.json"),
                customer=_read_json(src / "customers.json") if "customers.json" in recorded else {},
            )
        except FileNotFoundError as exc:
            raise BundleError(f"{src}: bundle file missing: {Path(exc.filename).name}") from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verify_files(src: Path, recorded: Any) -> dict[str, str]:
    """Every file bundle.json records is there and is byte for byte what training wrote;
    returns the record (file -> sha256)."""
    if not isinstance(recorded, dict) or not recorded:
        raise BundleError(
            f"{src}/bundle.json records no sha256 of the bundle's files: the bundle cannot be "
            "verified; save it again with this version (re-train or re-register)"
        )
    for name in recorded:
        path = src / name
        if not path.is_file():
            raise BundleError(f"{src}: bundle file missing: {name}")
        if _sha256(path) != recorded.get(name):
            raise BundleError(
                f"{src}/{name}: sha256 differs from the one recorded in bundle.json (the file "
                "is damaged or was changed after training); restore it or re-train"
            )
    return {str(k): str(v) for k, v in recorded.items()}


REQUIRED_FILES = ("icp.json", "policy.json", "playbook.json", "cutoffs.json", "metadata.json")
"""Files every bundle has besides its models (``models/<name>.json``, ``.txt``)."""


def _write_json(path: Path, data: Any) -> None:
    path.write_text(
        json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n", encoding="utf-8"
    )


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
