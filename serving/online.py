"""The online scorer: one loaded bundle, the account snapshot (with its last-good cache) and
the request -> feature rows step, answering score, explain and model requests.

Plain Python (no BentoML), so it can be used and tested on its own; ``serving.service`` is
the HTTP shell around it. A single request cannot see the population, so it is tiered against
the reference cut-offs frozen in the bundle, and every answer says so.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from features.config import FeatureConfig
from serving.group_cutoffs import GroupCutoffsCache
from serving.model_loader import LoadedModel
from serving.precomputed import PrecomputedScores
from serving.request_features import RequestFeatures, RequestRejected
from serving.schemas import (
    AccountRequest,
    AccountScore,
    CustomerScore,
    Cutoffs,
    Driver,
    ExplainResponse,
    ModelInfo,
    Problem,
    Reasons,
    ScoreResponse,
)
from serving.settings import ServingSettings
from serving.snapshot import Snapshot, SnapshotCache
from tiering.config import TIER_NAMES

T = TypeVar("T")

TIERING_TRACKING_URI = "the environment variable TIERING_TRACKING_URI"


class OnlineScorer:
    """Scores request accounts against the reference cut-offs."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        snapshot_path: Path | None,
        feature_config: FeatureConfig,
        max_accounts: int,
        top_reasons: int = 3,
        precompute_max_accounts: int = 0,
    ) -> None:
        self.bundle = loaded.bundle
        self.source = loaded.source
        self.version = loaded.version
        self.max_accounts = max_accounts
        self.top_reasons = top_reasons
        self.features = RequestFeatures(self.bundle, feature_config)
        self.snapshots = SnapshotCache(snapshot_path)
        self.groups = GroupCutoffsCache(snapshot_path)
        self.precomputed = PrecomputedScores(
            self._score_by_id, max_accounts=precompute_max_accounts
        )
        # A damaged snapshot at startup is a reason not to start (SnapshotError).
        snapshot = self.snapshots.load()
        if snapshot is not None:
            self.precomputed.build(snapshot, self.groups.current())

    @classmethod
    def from_settings(cls, settings: ServingSettings) -> OnlineScorer:
        from serving.model_loader import champion_uri, load_model
        from tiering.config import load_config
        from tiering.store import open_store

        config = load_config(settings.config) if settings.config is not None else None
        model_uri = settings.model_uri
        if model_uri is None and config is not None:
            model_uri = champion_uri(config.mlflow.registered_model)
        registry = None
        if settings.bundle_dir is None:
            if config is None and settings.tracking_uri is None:
                raise ValueError(
                    "no model source: set TIERING_BUNDLE_DIR, or TIERING_CONFIG / "
                    "TIERING_TRACKING_URI for the MLflow registry"
                )
            registry = open_store(
                config.mlflow.tracking_uri if config is not None else "",
                override=(TIERING_TRACKING_URI, settings.tracking_uri or ""),
            )
        loaded = load_model(
            bundle_dir=settings.bundle_dir,
            model_uri=model_uri,
            registry=registry,
            project=config.name if config is not None else None,
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
            precompute_max_accounts=settings.precompute_max_accounts,
        )

    # ------------------------------------------------------------------ answers
    def score(self, accounts: list[AccountRequest], *, reasons: bool = True) -> ScoreResponse:
        answered = self.answered(accounts, reasons=reasons)
        if answered is not None:
            return answered
        scored, sources, warnings, grouped = self._scored(accounts, reasons)
        return self._score_response(scored, sources, warnings, reasons, grouped)

    def answered(
        self, accounts: Sequence[AccountRequest], *, reasons: bool = True
    ) -> ScoreResponse | None:
        """The answer from the scores precomputed for the current snapshot
        (``serving.precomputed``), or None unless every account is named by id alone and the
        snapshot's table is built: then ``score`` computes it."""
        found = self.precomputed.lookup(
            accounts, reasons, self.snapshots.current(), self.groups.current()
        )
        if found is None:
            return None
        return self._response([a for a, _ in found], [u for _, u in found], [])

    def _score_by_id(
        self, accounts: list[AccountRequest], snapshot: Snapshot, groups: Any
    ) -> list[tuple[AccountScore, str]]:
        """What ``score`` answers for accounts by id against ``snapshot`` and ``groups``, with
        reasons: each account's score and the cut-offs used (for the precomputed table)."""
        rows, sources, warnings, grouped = self._scored(accounts, True, snapshot, groups)
        if warnings:
            raise ValueError(f"scoring accounts by id gave warnings: {warnings[0].message}")
        return [
            (_account_score(row, source, True, grouped=grouped), str(row["cutoffs_used"]))
            for row, source in zip(rows, sources, strict=True)
        ]

    def score_each(
        self, requests: Sequence[tuple[AccountRequest, bool]]
    ) -> list[ScoreResponse | RequestRejected]:
        """Single-account requests (account, reasons) answered by one scoring call per
        ``reasons`` value: each gets the answer ``score([account])`` would give it, or its own
        rejection."""
        answers: list[ScoreResponse | RequestRejected | None] = [None] * len(requests)
        for reasons in (True, False):
            chosen = [i for i, (_, r) in enumerate(requests) if r is reasons]
            if not chosen:
                continue
            accounts = [requests[i][0] for i in chosen]
            try:
                scored, sources, warnings, grouped = self._scored(accounts, reasons)
            except RequestRejected:
                # Somebody's account is bad: each request on its own, so only its own fails.
                for i in chosen:
                    answers[i] = _answer_or_rejection(self.score, [requests[i][0]], reasons=reasons)
                continue
            for k, i in enumerate(chosen):
                answers[i] = self._score_response(
                    scored[k : k + 1],
                    sources[k : k + 1],
                    _own(warnings, k, "accounts[0]"),
                    reasons,
                    grouped,
                )
        return [a for a in answers if a is not None]

    def _scored(
        self,
        accounts: list[AccountRequest],
        reasons: bool,
        snapshot: Snapshot | None = None,
        groups: Any = None,
    ) -> tuple[list[dict[Any, Any]], list[str], list[Problem], bool]:
        """The one scoring path of the service: feature rows, then ``tiering.scoring.score``
        (against the group cut-offs when there are any); rows, sources, warnings, grouped.
        ``snapshot`` and ``groups`` default to the current ones."""
        from tiering.scoring import records, score_columns

        if snapshot is None:
            snapshot, groups = self.snapshots.current(), self.groups.current()
        warnings: list[Problem] = []
        features, sources = self.features.rows(accounts, snapshot, warnings=warnings)
        if groups is not None:
            from serving.online_groups import score_in_groups

            rows = records(
                score_in_groups(
                    self.bundle, features, accounts, groups, reasons=reasons, top=self.top_reasons
                )
            )
        else:
            rows = records(
                score_columns(
                    self.bundle,
                    features,
                    reasons=reasons,
                    population=False,
                    top_reasons=self.top_reasons,
                )
            )
        return rows, sources, warnings, groups is not None

    def _score_response(
        self,
        rows: list[dict[Any, Any]],
        sources: list[str],
        warnings: list[Problem],
        reasons: bool,
        grouped: bool,
    ) -> ScoreResponse:
        return self._response(
            [
                _account_score(row, source, reasons, grouped=grouped)
                for row, source in zip(rows, sources, strict=True)
            ],
            [str(row["cutoffs_used"]) for row in rows],
            warnings,
        )

    def _response(
        self, accounts: list[AccountScore], cutoffs_used: list[str], warnings: list[Problem]
    ) -> ScoreResponse:
        used = list(dict.fromkeys(cutoffs_used))
        return ScoreResponse(
            model_version=self.version,
            scored_at=_now(),
            warnings=warnings,
            cutoffs=self.cutoffs(
                used[0] if len(used) == 1 else "per account: see each account's cutoffs_used"
            ),
            accounts=accounts,
        )

    def explain(self, account: AccountRequest) -> ExplainResponse:
        return self._explained([account], path="account")[0]

    def explain_each(
        self, accounts: Sequence[AccountRequest]
    ) -> list[ExplainResponse | RequestRejected]:
        """Explain requests answered by one model call: each gets the answer ``explain`` would
        give it, or its own rejection."""
        if self.groups.current() is not None:
            # Each account may have its own group's cut-offs: one call per account.
            return [_answer_or_rejection(self.explain, a) for a in accounts]
        try:
            return list(self._explained(list(accounts), path="accounts"))
        except RequestRejected:
            return [_answer_or_rejection(self.explain, a) for a in accounts]

    def _explained(self, accounts: list[AccountRequest], path: str) -> list[ExplainResponse]:
        from tiering.explain import drivers
        from tiering.scoring import base_win_probability, records, score_columns

        warnings: list[Problem] = []
        features, sources = self.features.rows(
            accounts, self.snapshots.current(), path=path, warnings=warnings
        )
        win_contrib, value_contrib = self.bundle.contributions(features)
        groups = self.groups.current()
        bundle = self.bundle
        if groups is not None:
            from serving.online_groups import bundle_for

            # Only ever one account here (explain_each explains grouped accounts one by one).
            bundle = bundle_for(self.bundle, groups, accounts[:1])[0]
        scored = score_columns(
            bundle,
            features,
            reasons=True,
            population=False,
            top_reasons=self.top_reasons,
            contributions=(win_contrib, value_contrib),
        )
        if groups is not None:
            account = accounts[0]
            key = groups.group_of(account.account_id, account.owner, account.territory)
            scored["cutoffs_used"] = groups.describe(key)
        every = drivers(
            features,
            win_contrib,
            value_contrib,
            scored["p_convert"],
            base_win_probability(self.bundle, win_contrib["bias"].to_numpy(dtype=np.float64)),
            top=len(self.bundle.feature_names),
        )
        rows = records(scored)
        return [
            ExplainResponse(
                model_version=self.version,
                scored_at=_now(),
                warnings=warnings if path == "account" else _own(warnings, k, "account"),
                cutoffs=self.cutoffs(str(rows[k]["cutoffs_used"])),
                account=_account_score(rows[k], sources[k], True, grouped=groups is not None),
                drivers=[Driver.model_validate(d) for d in every[k]],
            )
            for k in range(len(accounts))
        ]

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
        snapshot = self.snapshots.status()
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
            snapshot_as_of=snapshot.as_of,
            snapshot_problem=snapshot.problem,
            max_accounts_per_request=self.max_accounts,
            precomputed_accounts=self.precomputed.accounts(
                self.snapshots.current(), self.groups.current()
            ),
        )


def _answer_or_rejection(
    answer: Callable[..., T], *args: Any, **kwargs: Any
) -> T | RequestRejected:
    try:
        return answer(*args, **kwargs)
    except RequestRejected as exc:
        return exc


def _own(warnings: list[Problem], k: int, path: str) -> list[Problem]:
    """The warnings about merged account ``k``, with the path its own request knows it by."""
    prefix = f"accounts[{k}]"
    return [
        w.model_copy(update={"path": path + w.path[len(prefix) :]})
        for w in warnings
        if w.path == prefix or w.path.startswith(prefix + ".")
    ]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _finite_or_none(value: Any) -> float | None:
    number = float(value)
    return number if np.isfinite(number) else None


def _account_score(
    row: Mapping[Any, Any], source: str, with_reasons: bool, *, grouped: bool = False
) -> AccountScore:
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
        cutoffs_used=str(row["cutoffs_used"]) if grouped else None,
        **customer_fields(row),
    )


CUSTOMER_TIER_NAMES = {
    1: "Tier 1 - dedicated CSM",
    2: "Tier 2 - scheduled check-ins",
    3: "Tier 3 - digital success",
}


def customer_fields(row: Mapping[Any, Any]) -> dict[str, Any]:
    """``segment`` and, for a customer, its ``customer`` block (tiering.customers' columns)."""
    if row.get("segment") != "customer":
        return {"segment": "prospect"}
    tier = row.get("customer_tier")
    tier = None if tier is None or pd.isna(tier) else int(tier)
    return {
        "segment": "customer",
        "customer": CustomerScore(
            recurring_revenue=float(row["recurring_revenue"]),
            p_churn=_finite_or_none(row["p_churn"]),
            revenue_at_risk=_finite_or_none(row["revenue_at_risk"]),
            expected_expansion=_finite_or_none(row["expected_expansion"]),
            priority=float(row["customer_priority"]),
            tier=tier,
            tier_name=None if tier is None else CUSTOMER_TIER_NAMES[tier],
            reasons=list(row.get("customer_reasons") or []),
            advocacy=str(row.get("advocacy") or ""),
            playbook=list(row.get("customer_playbook") or []),
            note=str(row.get("customer_note") or ""),
        ),
    }
