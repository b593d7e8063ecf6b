"""The deployable model bundle: win model, calibrator, value model and its range, the ICP, the
tier policy, the playbook and the reference cut-offs frozen at training.

Saved as a folder of text files a person can read (LightGBM's native model text, JSON for
everything else): no pickles, so a bundle can be inspected, diffed and loaded by any version
of this code that knows the format. Training writes bundles; tiering, serving and the MLflow
pyfunc read them.

Layout of a saved bundle::

    bundle.json          format version, feature names, categories, value objective
    win_model.txt        LightGBM binary booster (raw margin = log-odds before calibration)
    value_model.txt      LightGBM regression booster (log deal value, or a log-link objective)
    calibrator.json      isotonic thresholds or Platt sigmoid (a, b)
    value_interval.json  P10/P90 as multiplicative offsets (split-conformal on log residuals)
    icp.json, policy.json, playbook.json
    cutoffs.json         reference expected-value distribution + Tier 1/2 priority cut-offs
                         (tiering.policy.ReferenceCutoffs)
    metadata.json        versions, training window, metrics, feature config
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.config import IcpConfig
from tiering.config import Playbook, TierPolicy
from tiering.policy import ReferenceCutoffs

FORMAT_VERSION = 1
# Probabilities never reach exactly 0 or 1: a log loss or a log-odds of a calibrated value
# must stay finite, and no deal is ever certain.
P_CLIP = 1e-6
SMALL_BATCH_ROWS = 2_000
"""Fewer rows than this are predicted on one thread."""

ValueObjective = Literal["log_l2", "gamma", "tweedie"]


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


def _empty_cutoffs() -> ReferenceCutoffs:
    # An empty reference stands for "not frozen yet" (see tiering.policy.ReferenceCutoffs).
    return ReferenceCutoffs("1970-01-01", np.array([], dtype=float), None, None, 0)


@dataclass
class Bundle:
    win_model: lgb.Booster
    calibrator: Calibrator
    value_model: lgb.Booster
    value_objective: ValueObjective
    value_interval: ValueInterval
    feature_names: list[str]
    categories: dict[str, list[str]]
    icp: IcpConfig = field(default_factory=IcpConfig)
    policy: TierPolicy = field(default_factory=TierPolicy)
    playbook: Playbook = field(default_factory=Playbook)
    cutoffs: ReferenceCutoffs = field(default_factory=_empty_cutoffs)
    metadata: dict[str, Any] = field(default_factory=dict)
    # log_l2 predicts the mean log value; exp() of it is a median, the smearing factor
    # (mean of exp(residual) on held-out deals) turns it into the mean a revenue forecast needs.
    value_smearing: float = 1.0

    # ------------------------------------------------------------------ predictions
    def encode(self, features: pd.DataFrame) -> pd.DataFrame:
        """The model matrix: see ``encode_features``."""
        return encode_features(features, self.feature_names, self.categories)

    def model_matrix(self, features: pd.DataFrame) -> np.ndarray | pd.DataFrame:
        """What the boosters read: the float64 matrix LightGBM itself would build from
        ``encode(features)`` (categoricals as level codes, NaN when missing or unseen), built
        directly; the encoded DataFrame when a booster's stored category levels differ from
        the bundle's, so that LightGBM's own re-mapping applies."""
        plan = _plan(tuple(self.feature_names), _categories_key(self.categories))
        if not self._boosters_read_codes(plan):
            return self.encode(features)
        return plan.matrix(features)

    def _boosters_read_codes(self, plan: _EncodingPlan) -> bool:
        levels = [list(dtype.categories) for _, dtype, _ in plan.categorical]
        return all(
            booster.num_feature() == len(plan.feature_names)
            and (booster.pandas_categorical is None or booster.pandas_categorical == levels)
            for booster in (self.win_model, self.value_model)
        )

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

    def win_margin(self, encoded: np.ndarray | pd.DataFrame) -> np.ndarray:
        return self._run(self.win_model, encoded, raw_score=True)

    def predict_value(self, encoded: np.ndarray | pd.DataFrame) -> np.ndarray:
        """Point prediction of the deal value if won (a mean, in currency)."""
        raw = self._run(self.value_model, encoded, raw_score=True)
        # Every supported objective has a log-scale raw score (log_l2 by construction,
        # gamma/tweedie through their log link).
        return np.exp(raw) * (self.value_smearing if self.value_objective == "log_l2" else 1.0)

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        return self._predict_encoded(self.model_matrix(features), features.index)

    def _predict_encoded(self, encoded: np.ndarray | pd.DataFrame, index: pd.Index) -> pd.DataFrame:
        p_raw = 1.0 / (1.0 + np.exp(-self.win_margin(encoded)))
        p_win = self.calibrator.transform(p_raw)
        value = self.predict_value(encoded)
        p10, p90 = self.value_interval.bounds(value)
        return pd.DataFrame(
            {
                "p_win": p_win,
                "deal_value": value,
                "value_p10": p10,
                "value_p90": p90,
                "expected_value": p_win * value,
            },
            index=index,
        )

    def contributions(self, features: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """SHAP values (LightGBM's exact TreeSHAP) of the win model (log-odds, before
        calibration) and of the value model (log value); columns feature_names + ``bias``."""
        return self._contributions_encoded(self.model_matrix(features), features.index)

    def _contributions_encoded(
        self, encoded: np.ndarray | pd.DataFrame, index: pd.Index
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        names = [*self.feature_names, "bias"]
        win = self._run(self.win_model, encoded, pred_contrib=True)
        value = self._run(self.value_model, encoded, pred_contrib=True)
        # The arrays are ours alone: no need for pandas to copy them (a batch chunk's
        # contributions are tens of MB).
        return (
            pd.DataFrame(win, columns=names, index=index, copy=False),
            pd.DataFrame(value, columns=names, index=index, copy=False),
        )

    def predict_with_contributions(
        self, features: pd.DataFrame
    ) -> tuple[pd.DataFrame, tuple[pd.DataFrame, pd.DataFrame]]:
        """``predict`` and ``contributions`` of the same rows, encoding them once."""
        encoded = self.model_matrix(features)
        return (
            self._predict_encoded(encoded, features.index),
            self._contributions_encoded(encoded, features.index),
        )

    @property
    def version(self) -> str:
        return str(self.metadata.get("model_version", "unregistered"))

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "win_model.txt").write_text(booster_to_text(self.win_model), encoding="utf-8")
        (out / "value_model.txt").write_text(booster_to_text(self.value_model), encoding="utf-8")
        _write_json(out / "calibrator.json", self.calibrator.to_dict())
        _write_json(out / "value_interval.json", self.value_interval.to_dict())
        _write_json(out / "icp.json", self.icp.model_dump(mode="json"))
        _write_json(out / "policy.json", self.policy.model_dump(mode="json"))
        _write_json(out / "playbook.json", self.playbook.model_dump(mode="json"))
        _write_json(out / "cutoffs.json", self.cutoffs.to_dict())
        _write_json(out / "metadata.json", self.metadata)
        header = {
            "format_version": FORMAT_VERSION,
            "feature_names": self.feature_names,
            "categories": self.categories,
            "value_objective": self.value_objective,
            "value_smearing": self.value_smearing,
            # Checked before anything is parsed: LightGBM aborts the process natively on a
            # truncated model file instead of raising.
            "sha256": {name: _sha256(out / name) for name in BUNDLE_FILES},
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
            raise BundleError(f"{src}: bundle format {found!r}, this code reads {FORMAT_VERSION}")
        _verify_files(src, header.get("sha256"))
        try:
            return cls(
                win_model=booster_from_text((src / "win_model.txt").read_text(encoding="utf-8")),
                calibrator=Calibrator.from_dict(_read_json(src / "calibrator.json")),
                value_model=booster_from_text(
                    (src / "value_model.txt").read_text(encoding="utf-8")
                ),
                value_objective=header["value_objective"],
                value_interval=ValueInterval.from_dict(_read_json(src / "value_interval.json")),
                feature_names=list(header["feature_names"]),
                categories={k: list(v) for k, v in header["categories"].items()},
                icp=IcpConfig.model_validate(_read_json(src / "icp.json")),
                policy=TierPolicy.model_validate(_read_json(src / "policy.json")),
                playbook=Playbook.model_validate(_read_json(src / "playbook.json")),
                cutoffs=ReferenceCutoffs.from_dict(_read_json(src / "cutoffs.json")),
                metadata=_read_json(src / "metadata.json"),
                value_smearing=float(header.get("value_smearing", 1.0)),
            )
        except FileNotFoundError as exc:
            raise BundleError(f"{src}: bundle file missing: {Path(exc.filename).name}") from None


BUNDLE_FILES = (
    "win_model.txt",
    "value_model.txt",
    "calibrator.json",
    "value_interval.json",
    "icp.json",
    "policy.json",
    "playbook.json",
    "cutoffs.json",
    "metadata.json",
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verify_files(src: Path, recorded: Any) -> None:
    """Every file of the bundle is there and is byte for byte what training wrote."""
    if not isinstance(recorded, dict):
        raise BundleError(
            f"{src}/bundle.json records no sha256 of the bundle's files: the bundle cannot be "
            "verified; save it again with this version (re-train or re-register)"
        )
    for name in BUNDLE_FILES:
        path = src / name
        if not path.is_file():
            raise BundleError(f"{src}: bundle file missing: {name}")
        if _sha256(path) != recorded.get(name):
            raise BundleError(
                f"{src}/{name}: sha256 differs from the one recorded in bundle.json (the file "
                "is damaged or was changed after training); restore it or re-train"
            )


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
