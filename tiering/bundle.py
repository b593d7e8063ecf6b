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
    missing = [c for c in feature_names if c not in features.columns]
    if missing:
        raise BundleError(
            f"features: {len(missing)} model input column(s) missing, e.g. {missing[:5]}"
        )
    columns: dict[str, Any] = {}
    for name in feature_names:
        col = features[name]
        if name in categories:
            levels = categories[name]
            text = col.astype("string")
            known = text.where(text.isin(levels)).astype(object)
            columns[name] = pd.Categorical(known, categories=levels)
        else:
            columns[name] = pd.to_numeric(col, errors="coerce").astype(float).to_numpy()
    return pd.DataFrame(columns, index=features.index)


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

    def win_margin(self, encoded: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.win_model.predict(encoded, raw_score=True), dtype=float)

    def predict_value(self, encoded: pd.DataFrame) -> np.ndarray:
        """Point prediction of the deal value if won (a mean, in currency)."""
        raw = np.asarray(self.value_model.predict(encoded, raw_score=True), dtype=float)
        # Every supported objective has a log-scale raw score (log_l2 by construction,
        # gamma/tweedie through their log link).
        return np.exp(raw) * (self.value_smearing if self.value_objective == "log_l2" else 1.0)

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        encoded = self.encode(features)
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
            index=features.index,
        )

    def contributions(self, features: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """SHAP values (LightGBM's exact TreeSHAP) of the win model (log-odds, before
        calibration) and of the value model (log value); columns feature_names + ``bias``."""
        encoded = self.encode(features)
        names = [*self.feature_names, "bias"]
        win = np.asarray(self.win_model.predict(encoded, pred_contrib=True), dtype=float)
        value = np.asarray(self.value_model.predict(encoded, pred_contrib=True), dtype=float)
        return (
            pd.DataFrame(win, columns=names, index=features.index),
            pd.DataFrame(value, columns=names, index=features.index),
        )

    @property
    def version(self) -> str:
        return str(self.metadata.get("model_version", "unregistered"))

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        header = {
            "format_version": FORMAT_VERSION,
            "feature_names": self.feature_names,
            "categories": self.categories,
            "value_objective": self.value_objective,
            "value_smearing": self.value_smearing,
        }
        _write_json(out / "bundle.json", header)
        (out / "win_model.txt").write_text(booster_to_text(self.win_model), encoding="utf-8")
        (out / "value_model.txt").write_text(booster_to_text(self.value_model), encoding="utf-8")
        _write_json(out / "calibrator.json", self.calibrator.to_dict())
        _write_json(out / "value_interval.json", self.value_interval.to_dict())
        _write_json(out / "icp.json", self.icp.model_dump(mode="json"))
        _write_json(out / "policy.json", self.policy.model_dump(mode="json"))
        _write_json(out / "playbook.json", self.playbook.model_dump(mode="json"))
        _write_json(out / "cutoffs.json", self.cutoffs.to_dict())
        _write_json(out / "metadata.json", self.metadata)
        return out

    @classmethod
    def load(cls, directory: str | Path) -> Bundle:
        src = Path(directory)
        if not (src / "bundle.json").is_file():
            raise BundleError(f"{src}: not a model bundle (no bundle.json)")
        header = _read_json(src / "bundle.json")
        found = header.get("format_version")
        if found != FORMAT_VERSION:
            raise BundleError(f"{src}: bundle format {found!r}, this code reads {FORMAT_VERSION}")
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
