"""Answers scored ahead for the accounts of a snapshot (``serving.precomputed``): each is the
answer a request would compute, for every account, with and without reasons, with and
without per-owner cut-offs; a request with anything but an account id, a replaced snapshot or
a snapshot above the limit is computed per request."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from serving.batch import score_accounts
from serving.model_loader import LoadedModel
from serving.online import OnlineScorer
from serving.schemas import AccountRequest, ScoreResponse
from tiering.bundle import Bundle
from tiering.config import CapacityConfig, Config

from support import TrainedBundle


@dataclass(frozen=True)
class Scored:
    config: Config
    bundle: Bundle
    snapshot: Path
    ids: list[str]


def _scored(trained: TrainedBundle, folder: Path, within: str) -> Scored:
    config = trained.config_writing_to(folder)
    if within != "global":
        config = config.model_copy(
            update={"capacity": CapacityConfig(within=within, tier1_per_rep=2, tier2_per_rep=3)}
        )
    bundle = Bundle.load(trained.bundle_dir)
    result = score_accounts(config, bundle, out=folder / "tiers.parquet")
    return Scored(config, bundle, result.snapshot, result.scores["account_id"].astype(str).tolist())


@pytest.fixture(scope="module", params=["global", "owner"])
def scored(
    request: pytest.FixtureRequest,
    trained_bundle: TrainedBundle,
    tmp_path_factory: pytest.TempPathFactory,
) -> Scored:
    return _scored(trained_bundle, tmp_path_factory.mktemp(request.param), request.param)


def _scorer(scored: Scored, precompute: int) -> OnlineScorer:
    return OnlineScorer(
        LoadedModel(bundle=scored.bundle, source="test", version="test"),
        snapshot_path=scored.snapshot,
        feature_config=scored.config.features,
        max_accounts=1_000,
        precompute_max_accounts=precompute,
    )


def _ready(scorer: OnlineScorer) -> OnlineScorer:
    snapshot = scorer.snapshots.current()
    assert snapshot is not None
    scorer.precomputed.build(snapshot, scorer.groups.current(), wait=True)
    return scorer


def _plain(answer: ScoreResponse | None) -> dict[str, Any]:
    assert answer is not None
    return answer.model_dump(mode="json", exclude={"scored_at"})


def test_every_account_gets_the_answer_it_would_compute(scored: Scored) -> None:
    computed = _scorer(scored, precompute=0)
    ahead = _ready(_scorer(scored, precompute=10_000))
    snapshot = ahead.snapshots.current()
    assert ahead.precomputed.accounts(snapshot, ahead.groups.current()) == len(scored.ids)
    if scored.config.capacity.within == "owner":
        assert ahead.groups.current() is not None
    segments = set()
    for account_id in scored.ids:
        request = [AccountRequest(account_id=account_id)]
        for reasons in (True, False):
            stored = _plain(ahead.answered(request, reasons=reasons))
            assert stored == _plain(computed.score(request, reasons=reasons)), account_id
            segments.add(stored["accounts"][0]["segment"])
    # Customers (their own block and reasons) and prospects were both compared.
    assert segments == {"customer", "prospect"}
    # A request of several accounts by id is answered from the table too, in its order.
    several = [AccountRequest(account_id=i) for i in scored.ids[:5][::-1]]
    assert _plain(ahead.answered(several)) == _plain(computed.score(several))


def test_requests_with_more_than_an_id_are_computed(scored: Scored) -> None:
    ahead = _ready(_scorer(scored, precompute=10_000))
    known = scored.ids[0]
    for request in (
        [AccountRequest(account_id=known, employees=5)],
        [AccountRequest(account_id=known, owner="somebody else")],
        [AccountRequest(account_id="A-404")],
        [AccountRequest(industry="software", employees=300)],
        [AccountRequest(account_id=known), AccountRequest(account_id="A-404")],
    ):
        assert ahead.answered(request) is None
    # ...and answered as before.
    answer = ahead.score([AccountRequest(account_id=known, employees=5)])
    assert answer.accounts[0].source == "snapshot+fields"


def test_a_replaced_snapshot_is_answered_from_its_own_scores(
    trained_bundle: TrainedBundle, tmp_path: Path
) -> None:
    scored = _scored(trained_bundle, tmp_path, "global")
    ahead = _ready(_scorer(scored, precompute=10_000))
    request = [AccountRequest(account_id=scored.ids[0])]
    before = _plain(ahead.answered(request))
    assert before["accounts"][0]["source"] == "snapshot"
    # Batch scoring as of an earlier date replaces the file.
    score_accounts(scored.config, scored.bundle, as_of="2026-01-31", out=tmp_path / "t.parquet")
    os.utime(scored.snapshot, (time.time() + 5, time.time() + 5))
    # The old table is not used for the new snapshot: computed until the new one is built.
    assert ahead.answered(request) is None
    assert ahead.model_info().precomputed_accounts == 0
    _ready(ahead)
    after = _plain(ahead.answered(request))
    assert after == _plain(_scorer(scored, precompute=0).score(request))
    assert after != before
    assert ahead.model_info().snapshot_as_of == "2026-01-31"
    assert ahead.model_info().precomputed_accounts == len(pd.read_parquet(scored.snapshot))


def test_a_snapshot_above_the_limit_is_scored_per_request(scored: Scored) -> None:
    scorer = _ready(_scorer(scored, precompute=len(scored.ids) - 1))
    request = [AccountRequest(account_id=scored.ids[0])]
    assert scorer.answered(request) is None
    assert scorer.model_info().precomputed_accounts == 0
    assert scorer.score(request).accounts[0].account_id == scored.ids[0]
