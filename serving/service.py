"""The HTTP service: ``POST /score``, ``POST /explain``, ``GET /model``, plus BentoML's own
``/healthz``, ``/livez``, ``/readyz`` and ``/metrics``.

Run it with ``tiering serve`` (or ``bentoml serve serving.service:TieringService``); it is
configured by environment variables (``serving.settings.ServingSettings``). The champion
bundle is loaded once per worker, in ``__init__``.

A single request cannot see the population, so it is tiered against the reference cut-offs
frozen in the bundle (the account list as of the end of training), and every answer says so.
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bentoml
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI

from serving.account_history import AccountTimeline, history_response, service_store
from serving.schemas import (
    AccountRequest,
    AccountScore,
    Cutoffs,
    Driver,
    ExplainRequest,
    ExplainResponse,
    ModelInfo,
    Reasons,
    ScoreRequest,
    ScoreResponse,
)
from serving.settings import ServingSettings
from tiering.config import TIER_NAMES

with bentoml.importing():
    import numpy as np
    import pandas as pd

if TYPE_CHECKING:
    from features.config import FeatureConfig
    from serving.batch import Snapshot
    from serving.model_loader import LoadedModel

# Endpoints that answer with tiers (internal data): they need the API key. Health, readiness
# and metrics stay open for the orchestrator.
PROTECTED_PATHS = frozenset({"/score", "/explain", "/model"})
PROTECTED_PREFIXES = ("/accounts/",)

# GET /model is a plain route; BentoML's own API routes are POST only.
model_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


def _no_opportunities() -> pd.DataFrame:
    """A new account's deal history: none (the canonical columns, no rows)."""
    return pd.DataFrame(
        {
            "opportunity_id": pd.Series(dtype=object),
            "account_id": pd.Series(dtype=object),
            "created_at": pd.Series(dtype="datetime64[ns]"),
            "closed_at": pd.Series(dtype="datetime64[ns]"),
            "outcome": pd.Series(dtype=object),
            "amount": pd.Series(dtype=float),
        }
    )


class RequestRejected(BentoMLException):
    """A well-formed request that cannot be answered (e.g. an unknown account id): a 4xx whose
    message names the field path and the rule."""

    def __init__(self, path: str, rule: str, status: HTTPStatus = HTTPStatus.UNPROCESSABLE_ENTITY):
        super().__init__(f"{path}: {rule}", error_code=status)


class ApiKeyMiddleware:
    """Refuses calls to the tier endpoints without the right key in the API key header."""

    def __init__(self, app: Any) -> None:
        self.app = app
        settings = ServingSettings()
        self.header = settings.api_key_header.lower().encode("latin-1")
        self.key = (
            None
            if settings.auth_disabled or settings.api_key is None
            else (settings.api_key.get_secret_value().encode("utf-8"))
        )
        self.header_name = settings.api_key_header

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        protected = scope.get("path", "") in PROTECTED_PATHS or str(
            scope.get("path", "")
        ).startswith(PROTECTED_PREFIXES)
        if self.key is None or scope["type"] != "http" or not protected:
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(self.header, b"")
        if given and hmac.compare_digest(given, self.key):
            await self.app(scope, receive, send)
            return
        problem = "missing" if not given else "wrong"
        body = json.dumps(
            {"error": f"{problem} API key: send it in the {self.header_name} header"}
        ).encode("utf-8")
        await send(
            {
                "type": "http.response.start",
                "status": HTTPStatus.UNAUTHORIZED,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"ApiKey"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class OnlineScorer:
    """Turns request accounts into feature rows and scores them against the reference
    cut-offs. Plain Python (no BentoML), so it can be used and tested on its own."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        snapshot_path: Path | None,
        feature_config: FeatureConfig,
        max_accounts: int,
        top_reasons: int = 3,
    ) -> None:
        self.bundle = loaded.bundle
        self.source = loaded.source
        self.version = loaded.version
        self.snapshot_path = snapshot_path
        self.feature_config = feature_config
        self.max_accounts = max_accounts
        self.top_reasons = top_reasons
        self._snapshot: Snapshot | None = None
        self._snapshot_mtime: float | None = None
        self._lock = threading.Lock()
        names = set(self.bundle.feature_names)
        declared = [
            *feature_config.categorical,
            *feature_config.numeric,
            *feature_config.technographics,
            *feature_config.extra,
        ]
        # The model inputs an account's own fields determine (the rest is history/engagement).
        self.account_features = [c for c in dict.fromkeys(declared) if c in names]
        self._levels = {
            name: {str(level).casefold(): level for level in levels}
            for name, levels in self.bundle.categories.items()
        }
        self.current_snapshot()

    @classmethod
    def from_settings(cls, settings: ServingSettings) -> OnlineScorer:
        from features.config import FeatureConfig
        from serving.model_loader import champion_uri, load_model, tracking_uri_for
        from tiering.config import load_config

        config = load_config(settings.config) if settings.config is not None else None
        model_uri = settings.model_uri
        if model_uri is None and config is not None:
            model_uri = champion_uri(config.mlflow.registered_model)
        tracking_uri = settings.tracking_uri or (
            tracking_uri_for(config.mlflow.tracking_uri) if config is not None else None
        )
        loaded = load_model(
            bundle_dir=settings.bundle_dir, model_uri=model_uri, tracking_uri=tracking_uri
        )
        snapshot = settings.snapshot or (config.scoring.snapshot if config is not None else None)
        if config is not None:
            features = config.features
        else:
            stored = loaded.bundle.metadata.get("feature_config")
            features = (
                FeatureConfig.model_validate(stored)
                if isinstance(stored, dict)
                else FeatureConfig.model_validate({})
            )
        return cls(
            loaded,
            snapshot_path=snapshot,
            feature_config=features,
            max_accounts=settings.max_accounts_per_request,
            top_reasons=config.scoring.top_reasons if config is not None else 3,
        )

    # ------------------------------------------------------------------ snapshot
    def current_snapshot(self) -> Snapshot | None:
        """The account snapshot, re-read when batch scoring has replaced the file."""
        from serving.batch import read_snapshot

        if self.snapshot_path is None:
            return None
        try:
            mtime = self.snapshot_path.stat().st_mtime
        except FileNotFoundError:
            return self._snapshot
        with self._lock:
            if mtime != self._snapshot_mtime:
                self._snapshot = read_snapshot(self.snapshot_path)
                self._snapshot_mtime = mtime
            return self._snapshot

    # ------------------------------------------------------------------ features
    def feature_rows(
        self, accounts: list[AccountRequest], path: str = "accounts"
    ) -> tuple[pd.DataFrame, list[str]]:
        """One feature row per request account (same order) and where each came from."""
        snapshot = self.current_snapshot()
        as_of = snapshot.as_of if snapshot is not None else pd.Timestamp.today().normalize()
        given = [
            self._given(account, f"{path}[{i}]" if path == "accounts" else path)
            for i, account in enumerate(accounts)
        ]
        if snapshot is not None:
            ids = pd.Index([a.account_id if a.account_id is not None else "" for a in accounts])
            position = snapshot.features.index.get_indexer(ids)
        else:
            position = np.full(len(accounts), -1)
        for i, account in enumerate(accounts):
            if position[i] < 0 and not given[i]:
                where = f"{path}[{i}].account_id" if path == "accounts" else f"{path}.account_id"
                lookup = (
                    f"the account snapshot as of {snapshot.as_of.date()}"
                    if snapshot is not None
                    else "any account snapshot (none written yet: run `tiering score`)"
                )
                raise RequestRejected(
                    where,
                    f"{account.account_id!r} is not in {lookup}, and no account fields were given; "
                    "send the account's own fields (industry, employees, ...) to score it as new",
                    HTTPStatus.NOT_FOUND,
                )
        columns = ["account_id", "as_of", *self.bundle.feature_names]
        known = position >= 0
        if snapshot is not None and known.all() and not any(given):
            # The common case (CRM sync by id): the snapshot rows are already typed.
            frame = snapshot.features.iloc[position].reindex(columns=columns)
            return frame.reset_index(drop=True), ["snapshot"] * len(accounts)
        cold = snapshot.cold_start if snapshot is not None else {}
        base = pd.DataFrame(
            [{name: cold.get(name, np.nan) for name in columns}] * len(accounts), columns=columns
        ).astype(object)
        if known.any() and snapshot is not None:
            rows = snapshot.features.iloc[position[known]]
            base.loc[known, columns] = rows.reindex(columns=columns).to_numpy(dtype=object)
        base["account_id"] = [a.account_id for a in accounts]
        base["as_of"] = as_of
        if any(given):
            self._lay_over_fields(base, given, as_of)
        frame = self._typed(base)
        sources = [
            ("snapshot+fields" if given[i] else "snapshot") if known[i] else "fields"
            for i in range(len(accounts))
        ]
        return frame, sources

    def _given(self, account: AccountRequest, where: str) -> dict[str, Any]:
        """The account's own fields that are model inputs; unknown technographics or
        attributes are refused (a typo would silently change nothing)."""
        for group, values in (
            ("technographics", account.technographics),
            ("attributes", account.attributes),
        ):
            unknown = [k for k in values if k not in self.account_features]
            if unknown:
                raise RequestRejected(
                    f"{where}.{group}.{unknown[0]}",
                    f"not an input of the model; it knows {sorted(self.account_features)}",
                )
        return {k: v for k, v in account.given().items() if k in self.account_features}

    def _lay_over_fields(
        self, base: pd.DataFrame, given: list[dict[str, Any]], as_of: pd.Timestamp
    ) -> None:
        """Put the given fields through the feature builder (the one code path from account
        columns to model inputs) and write them over the base rows, cell by cell."""
        from features.build import build_features, scoring_requests
        from features.tables import Tables

        rows = [i for i, g in enumerate(given) if g]
        accounts = pd.DataFrame([{"account_id": f"request-{i}", **given[i]} for i in rows])
        for name in self.account_features:
            if name not in accounts:
                accounts[name] = np.nan
        built = build_features(
            Tables(accounts=accounts, opportunities=_no_opportunities()),
            scoring_requests(accounts, as_of),
            self.feature_config,
        )
        for j, i in enumerate(rows):
            for name in given[i]:
                value = built[name].iloc[j]
                if name in self._levels and isinstance(value, str):
                    value = self._levels[name].get(value.casefold(), value)
                base.at[i, name] = value

    def _typed(self, base: pd.DataFrame) -> pd.DataFrame:
        """Categoricals as plain strings (NaN when unknown), everything else float, as
        ``build_features`` returns them."""
        numeric = [n for n in self.bundle.feature_names if n not in self.bundle.categories]
        text = [n for n in self.bundle.feature_names if n in self.bundle.categories]
        # One conversion for the whole numeric block: the cells are floats or None already.
        values = np.asarray(base[numeric].to_numpy(), dtype=float)
        out = pd.concat(
            [
                base[["account_id", "as_of"]],
                base[text].where(base[text].notna(), np.nan),
                pd.DataFrame(values, columns=numeric, index=base.index),
            ],
            axis=1,
        )
        return out[["account_id", "as_of", *self.bundle.feature_names]]

    # ------------------------------------------------------------------ answers
    def score(self, accounts: list[AccountRequest], *, reasons: bool = True) -> ScoreResponse:
        from tiering.scoring import score

        features, sources = self.feature_rows(accounts)
        scored = score(
            self.bundle, features, reasons=reasons, population=False, top_reasons=self.top_reasons
        )
        return ScoreResponse(
            model_version=self.version,
            cutoffs=self.cutoffs(str(scored["cutoffs_used"].iloc[0])),
            accounts=[
                _account_score(row, source, reasons)
                for row, source in zip(scored.to_dict("records"), sources, strict=True)
            ],
        )

    def explain(self, account: AccountRequest) -> ExplainResponse:
        from tiering.explain import drivers
        from tiering.scoring import base_win_probability, score

        features, sources = self.feature_rows([account], path="account")
        win_contrib, value_contrib = self.bundle.contributions(features)
        scored = score(
            self.bundle,
            features,
            reasons=True,
            population=False,
            top_reasons=self.top_reasons,
            contributions=(win_contrib, value_contrib),
        )
        every = drivers(
            features,
            win_contrib,
            value_contrib,
            scored["p_convert"].to_numpy(),
            base_win_probability(self.bundle, win_contrib["bias"].to_numpy(dtype=np.float64)),
            top=len(self.bundle.feature_names),
        )[0]
        return ExplainResponse(
            model_version=self.version,
            cutoffs=self.cutoffs(str(scored["cutoffs_used"].iloc[0])),
            account=_account_score(scored.to_dict("records")[0], sources[0], True),
            drivers=[Driver.model_validate(d) for d in every],
        )

    def cutoffs(self, description: str) -> Cutoffs:
        ref = self.bundle.cutoffs
        return Cutoffs(
            kind="reference",
            method=ref.method,
            frozen_at=ref.as_of,
            n_accounts=ref.n_accounts,
            tier1_min_priority=ref.tier1_priority,
            tier2_min_priority=ref.tier2_priority,
            description=description,
            warnings=list(ref.warnings),
        )

    def model_info(self) -> ModelInfo:
        meta = self.bundle.metadata
        ref = self.bundle.cutoffs
        snapshot = self.current_snapshot()
        description = (
            f"reference {ref.method} cut-offs as of {ref.as_of} ({ref.n_accounts:,} accounts)"
        )
        return ModelInfo(
            model_version=self.version,
            source=self.source,
            trained={k: v for k, v in meta.items() if k != "metrics"},
            metrics=meta.get("metrics", {}),
            policy=self.bundle.policy.model_dump(mode="json"),
            cutoffs=self.cutoffs(description),
            snapshot_as_of=None if snapshot is None else snapshot.as_of.date().isoformat(),
            max_accounts_per_request=self.max_accounts,
        )


def _finite_or_none(value: Any) -> float | None:
    number = float(value)
    return number if np.isfinite(number) else None


def _account_score(row: Mapping[Any, Any], source: str, with_reasons: bool) -> AccountScore:
    tier = int(row["tier"])
    reasons = None
    if with_reasons:
        items = [Driver.model_validate(d) for d in row["reasons"]]
        reasons = Reasons(
            headline=list(row["headline"]),
            summary=row["reason_summary"],
            positives=[d for d in items if d.direction == "positive"],
            negatives=[d for d in items if d.direction == "negative"],
            icp_met=list(row["icp_met"]),
            icp_missed=list(row["icp_missed"]),
            tier_rule=row["tier_rule_text"],
            next_tier=row["next_tier_hint"] or None,
            playbook=list(row["playbook"]),
        )
    account_id = row["account_id"]
    return AccountScore(
        account_id=None if account_id is None or pd.isna(account_id) else str(account_id),
        source=source,
        p_convert=row["p_convert"],
        revenue_if_converts=row["revenue_if_converts"],
        revenue_p10=row["revenue_p10"],
        revenue_p90=row["revenue_p90"],
        expected_revenue=row["expected_revenue"],
        p_win_deal=_finite_or_none(row["p_win_deal"]),
        open_pipeline=_finite_or_none(row["open_pipeline"]),
        icp_fit=row["icp_fit"],
        evidence=row["evidence"],
        priority=row["priority"],
        tier=tier,
        tier_name=TIER_NAMES[tier],
        tier_rule=str(row["tier_rule"]),
        reasons=reasons,
    )


@bentoml.service(name="account_tiering", traffic={"timeout": 60})
@bentoml.asgi_app(model_app, path="/")
class TieringService:
    def __init__(self) -> None:
        self.settings = ServingSettings()
        self.scorer = OnlineScorer.from_settings(self.settings)
        self.history = service_store(self.settings.config)

    @bentoml.api(route="/score", input_spec=ScoreRequest)
    def score(self, accounts: list[AccountRequest], reasons: bool = True) -> ScoreResponse:
        """Score 1 to 1,000 accounts: by account_id (features from the account snapshot),
        by their own fields (a new account), or both (fields override the snapshot)."""
        limit = self.settings.max_accounts_per_request
        if len(accounts) > limit:
            raise RequestRejected(
                "accounts",
                f"at most {limit} accounts per request, got {len(accounts)}",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        return self.scorer.score(accounts, reasons=reasons)

    @bentoml.api(route="/explain", input_spec=ExplainRequest)
    def explain(self, account: AccountRequest) -> ExplainResponse:
        """One account in full detail: every driver, ICP criteria, the tier rule, what would
        move it up a tier, and the playbook of its tier."""
        return self.scorer.explain(account)

    @model_app.get("/model", response_model=ModelInfo)
    def model(self) -> ModelInfo:
        """Model version, metrics, tier policy and the reference cut-offs."""
        return self.scorer.model_info()

    @model_app.get("/accounts/{account_id}/history", response_model=AccountTimeline)
    def account_history(self, account_id: str) -> AccountTimeline:
        """The account's tier in every recorded batch run, with why it changed."""
        return history_response(self.history, account_id)


# @bentoml.service turns the class into a Service object; mypy still sees the class.
TieringService.add_asgi_middleware(ApiKeyMiddleware)  # type: ignore[attr-defined]
