"""Adaptive batching: concurrent single-account requests answered by one model call, each
with the answer it would get alone, a bad account failing only its own request."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
import pytest

from serving.batching import Batcher
from serving.model_loader import LoadedModel
from serving.online import OnlineScorer
from serving.request_features import RequestRejected
from serving.schemas import AccountRequest
from serving.settings import ServingSettings

from support import LiveDeployment, LiveService


@pytest.fixture(scope="module")
def scorer(live_deployment: LiveDeployment) -> OnlineScorer:
    settings = ServingSettings(
        bundle_dir=live_deployment.bundle_dir,
        snapshot=live_deployment.snapshot,
        auth_disabled=True,
    )
    return OnlineScorer.from_settings(settings)


def _comparable(answer: object) -> dict[str, object]:
    data = answer.model_dump(mode="json")  # type: ignore[attr-defined]
    data.pop("scored_at")
    return data


def test_merged_requests_get_the_answers_they_would_get_alone(
    scorer: OnlineScorer, live_deployment: LiveDeployment
) -> None:
    ids = live_deployment.account_ids[:5]
    requests = [(AccountRequest(account_id=a), bool(i % 2)) for i, a in enumerate(ids)]
    # A new account by its fields, with a category the model never saw: its warning is its own.
    requests.append(
        (AccountRequest(industry="underwater basket weaving", employees=120), True)  # type: ignore[call-arg]
    )
    merged = scorer.score_each(requests)
    alone = [scorer.score([account], reasons=reasons) for account, reasons in requests]
    assert [_comparable(m) for m in merged] == [_comparable(a) for a in alone]
    assert [w.path for w in merged[-1].warnings] == ["accounts[0].industry"]  # type: ignore[union-attr]
    assert all(not m.warnings for m in merged[:-1])  # type: ignore[union-attr]

    explained = scorer.explain_each([AccountRequest(account_id=a) for a in ids])
    assert [_comparable(e) for e in explained] == [
        _comparable(scorer.explain(AccountRequest(account_id=a))) for a in ids
    ]


def test_a_bad_account_fails_only_its_own_request(
    scorer: OnlineScorer, live_deployment: LiveDeployment
) -> None:
    good = live_deployment.account_ids[:2]
    accounts = [
        AccountRequest(account_id=good[0]),
        AccountRequest(account_id="NO-SUCH"),
        AccountRequest(account_id=good[1]),
    ]
    answers = scorer.score_each([(a, True) for a in accounts])
    assert isinstance(answers[1], RequestRejected) and "NO-SUCH" in str(answers[1])
    assert [a.accounts[0].account_id for a in (answers[0], answers[2])] == good  # type: ignore[union-attr]
    explained = scorer.explain_each(accounts)
    assert isinstance(explained[1], RequestRejected)
    assert explained[0].account.account_id == good[0]  # type: ignore[union-attr]


def test_the_batcher_merges_concurrent_calls_up_to_its_size() -> None:
    calls: list[list[int]] = []

    def compute(items: list[int]) -> list[int | Exception]:
        calls.append(items)
        return [ValueError(f"bad {i}") if i == 3 else i * 10 for i in items]

    async def scenario() -> list[object]:
        batcher: Batcher[int, int] = Batcher(compute, max_size=4, max_latency_ms=1_000)
        return await asyncio.gather(*(batcher(i) for i in range(6)), return_exceptions=True)

    answers = asyncio.run(scenario())
    # Four at once (full, without waiting out the latency), then the two left.
    assert calls == [[0, 1, 2, 3], [4, 5]]
    assert answers[:3] == [0, 10, 20] and answers[4:] == [40, 50]
    assert isinstance(answers[3], ValueError)


def _batch_sizes_over_one(metrics: str, endpoint: str) -> float:
    """Model calls of ``endpoint`` that answered more than one request, from /metrics."""
    counts = {
        float(m.group(1)) if m.group(1) != "+Inf" else float("inf"): float(m.group(2))
        for m in re.finditer(
            rf'tiering_batch_size_bucket\{{[^}}]*endpoint="{endpoint}"[^}}]*le="([^"]+)"[^}}]*\}} (\S+)',
            metrics,
        )
    }
    return counts[float("inf")] - counts[1.0]


@pytest.mark.slow
def test_a_concurrent_burst_is_merged_and_a_bad_account_gets_its_own_404(
    live_server: LiveService, tmp_path: Path
) -> None:
    ids = live_server.deployment.account_ids[:24]
    headers = {"X-API-Key": live_server.api_key}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=live_server.base_url, headers=headers, timeout=30
        ) as client:
            # With an owner, so each is computed (by id alone it may be answered from the
            # scores precomputed for the snapshot, which never reach the batcher).
            bodies = [{"accounts": [{"account_id": a, "owner": "burst"}]} for a in ids]
            bodies[5] = {"accounts": [{"account_id": "NO-SUCH-ACCOUNT"}], "reasons": True}
            scores = [client.post("/score", json=b) for b in bodies]
            explains = [
                client.post("/explain", json={"account": {"account_id": a}}) for a in ids[:8]
            ]
            return await asyncio.gather(*scores, *explains)

    answers = asyncio.run(burst())
    scores, explains = answers[:24], answers[24:]
    assert scores[5].status_code == 404, scores[5].text
    assert "NO-SUCH-ACCOUNT" in scores[5].text
    for i, response in enumerate(scores):
        if i != 5:
            assert response.status_code == 200, response.text
            assert response.json()["accounts"][0]["account_id"] == ids[i]
            assert response.json()["accounts"][0]["reasons"]["headline"]
    assert [r.json()["account"]["account_id"] for r in explains] == ids[:8]
    metrics = httpx.get(f"{live_server.base_url}/metrics", headers=headers).text
    assert _batch_sizes_over_one(metrics, "score") >= 1, metrics[-3000:]


@pytest.mark.slow
def test_a_real_server_answers_ids_from_its_precomputed_scores(
    live_server: LiveService, scorer: OnlineScorer
) -> None:
    headers = {"X-API-Key": live_server.api_key}
    ids = live_server.deployment.account_ids
    deadline = time.monotonic() + 120
    while True:
        info = httpx.get(f"{live_server.base_url}/model", headers=headers, timeout=30).json()
        if info["precomputed_accounts"] == len(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert info["precomputed_accounts"] == len(ids)
    # One account with more than its id is computed: a model call, counted in /metrics.
    body = {"accounts": [{"account_id": ids[0], "owner": "somebody"}]}
    httpx.post(f"{live_server.base_url}/score", json=body, headers=headers, timeout=30)
    calls_before = _model_calls(live_server, "score")
    assert calls_before >= 1
    computed = OnlineScorer(
        LoadedModel(bundle=scorer.bundle, source=scorer.source, version=scorer.version),
        snapshot_path=live_server.deployment.snapshot,
        feature_config=scorer.features.feature_config,
        max_accounts=1_000,
        precompute_max_accounts=0,
    )
    for account_id in ids[:: max(1, len(ids) // 20)]:
        for reasons in (True, False):
            body = {"accounts": [{"account_id": account_id}], "reasons": reasons}
            response = httpx.post(
                f"{live_server.base_url}/score", json=body, headers=headers, timeout=30
            )
            assert response.status_code == 200, response.text
            alone = computed.score([AccountRequest(account_id=account_id)], reasons=reasons)
            answer = response.json()
            answer.pop("scored_at")
            assert answer == _comparable(alone), account_id
    # No model call answered them.
    assert _model_calls(live_server, "score") == calls_before


def _model_calls(live_server: LiveService, endpoint: str) -> float:
    """Model calls of ``endpoint`` so far, every worker's, from /metrics."""
    metrics = httpx.get(
        f"{live_server.base_url}/metrics", headers={"X-API-Key": live_server.api_key}
    ).text
    pattern = rf'tiering_batch_size_count\{{[^}}]*endpoint="{endpoint}"[^}}]*\}} (\S+)'
    return sum(float(m.group(1)) for m in re.finditer(pattern, metrics))
