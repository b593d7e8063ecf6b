"""The HTTP service: the API key is enforced, bad requests get a 4xx naming the field and the
rule (never a 500), limits hold, accounts are scored by id and by their own fields, and the
service starts and answers as a real `bentoml serve` process."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from starlette.testclient import TestClient

from tiering.config import Config

from support import TrainedBundle, free_port, serving

API_KEY = "test-key-0123456789"


@dataclass(frozen=True)
class Deployment:
    config: Config
    bundle_dir: Path
    snapshot: Path
    account_ids: list[str]


@pytest.fixture(scope="session")
def deployment(
    trained_bundle: TrainedBundle, tmp_path_factory: pytest.TempPathFactory
) -> Deployment:
    from serving.batch import score_accounts
    from tiering.bundle import Bundle

    root = tmp_path_factory.mktemp("deployment")
    config = trained_bundle.config_writing_to(root / "outputs")
    bundle_dir = trained_bundle.bundle_dir
    result = score_accounts(config, Bundle.load(bundle_dir), out=root / "outputs" / "tiers.parquet")
    return Deployment(
        config=config,
        bundle_dir=bundle_dir,
        snapshot=result.snapshot,
        account_ids=result.scores["account_id"].astype(str).tolist(),
    )


def _env(deployment: Deployment, **extra: str) -> dict[str, str]:
    return {
        "TIERING_BUNDLE_DIR": str(deployment.bundle_dir),
        "TIERING_SNAPSHOT": str(deployment.snapshot),
        "TIERING_API_KEY": API_KEY,
        "TIERING_AUTH_DISABLED": "false",
        **extra,
    }


@pytest.fixture(scope="module")
def client(deployment: Deployment) -> Iterator[TestClient]:
    from serving.service import TieringService

    with pytest.MonkeyPatch.context() as mp:
        for key, value in _env(deployment).items():
            mp.setenv(key, value)
        mp.delenv("TIERING_CONFIG", raising=False)
        with TestClient(TieringService.to_asgi()) as test_client:
            test_client.headers["X-API-Key"] = API_KEY
            yield test_client


NEW_ACCOUNT = {
    "industry": "Software",
    "employees": 1200,
    "annual_revenue": 150_000_000,
    "region": "europe",
    "technographics": {"tech_crm": True},
}


def _errors(response: httpx.Response) -> str:
    """The error body as text, whatever its shape (BentoML lists problems under ``detail``)."""
    return json.dumps(response.json())


# --------------------------------------------------------------------------- authentication


def test_requests_without_or_with_a_wrong_key_are_refused(client: TestClient) -> None:
    body = {"accounts": [{"account_id": "A-000001"}]}
    for headers in ({"X-API-Key": ""}, {"X-API-Key": "wrong"}):
        response = client.post("/score", json=body, headers=headers)
        assert response.status_code == 401
        assert "X-API-Key" in response.json()["error"]["message"]
        assert response.json()["error"]["path"] == "X-API-Key"
    assert client.get("/model", headers={"X-API-Key": "wrong"}).status_code == 401
    assert (
        client.post(
            "/explain", json={"account": {"account_id": "A-000001"}}, headers={"X-API-Key": ""}
        ).status_code
        == 401
    )


def test_health_endpoints_need_no_key(client: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/livez"):
        assert client.get(path, headers={"X-API-Key": ""}).status_code == 200


def test_auth_can_be_disabled_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    # BentoML registers its metrics once per process, so this checks the middleware around a
    # bare app rather than building a second service app.
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from serving.service import ApiKeyMiddleware

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("scored")

    app = Starlette(routes=[Route("/score", ok, methods=["POST"])])
    monkeypatch.setenv("TIERING_API_KEY", API_KEY)
    monkeypatch.setenv("TIERING_AUTH_DISABLED", "false")
    assert TestClient(ApiKeyMiddleware(app)).post("/score").status_code == 401
    monkeypatch.delenv("TIERING_API_KEY")
    monkeypatch.setenv("TIERING_AUTH_DISABLED", "true")
    assert TestClient(ApiKeyMiddleware(app)).post("/score").status_code == 200


def test_service_refuses_to_start_without_a_key_unless_auth_is_disabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError

    from serving.settings import ServingSettings

    monkeypatch.delenv("TIERING_API_KEY", raising=False)
    monkeypatch.delenv("TIERING_AUTH_DISABLED", raising=False)
    with pytest.raises(ValidationError, match="TIERING_API_KEY"):
        ServingSettings()


# --------------------------------------------------------------------------- scoring


def test_score_by_id_matches_the_snapshot_and_says_which_cutoffs(
    client: TestClient, deployment: Deployment
) -> None:
    ids = deployment.account_ids[:5]
    response = client.post("/score", json={"accounts": [{"account_id": i} for i in ids]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [a["account_id"] for a in body["accounts"]] == ids
    assert body["cutoffs"]["kind"] == "reference"
    assert body["cutoffs"]["description"].startswith("reference")
    assert body["model_version"] == "test-1"
    for account in body["accounts"]:
        assert account["source"] == "snapshot"
        assert 0 < account["p_convert"] < 1
        assert account["revenue_p10"] <= account["revenue_if_converts"] <= account["revenue_p90"]
        # Rounded to 4 decimals and to cents: equal to the rounding.
        assert account["expected_revenue"] == pytest.approx(
            account["p_convert"] * account["revenue_if_converts"],
            abs=5e-5 * account["revenue_if_converts"] + 0.01,
        )
        assert account["p_convert"] == round(account["p_convert"], 4)
        assert account["expected_revenue"] == round(account["expected_revenue"], 2)
        assert account["reasons"]["headline"][0].startswith("likely to buy in the next ")
        assert account["tier"] in (1, 2, 3)
        assert account["reasons"]["summary"].startswith(f"Tier {account['tier']}")
        assert account["reasons"]["playbook"]


def test_online_prediction_equals_batch_prediction_for_the_same_account(
    client: TestClient, deployment: Deployment
) -> None:
    batch = pd.read_parquet(deployment.snapshot.parent / "tiers.parquet").set_index("account_id")
    ids = deployment.account_ids[10:20]
    body = client.post(
        "/score", json={"accounts": [{"account_id": i} for i in ids], "reasons": False}
    ).json()
    for account in body["accounts"]:
        assert account["p_convert"] == pytest.approx(
            batch.loc[account["account_id"], "p_convert"], abs=5e-5
        )
        assert account["expected_revenue"] == pytest.approx(
            batch.loc[account["account_id"], "expected_revenue"], abs=0.005
        )
        assert account["reasons"] is None


def test_a_new_account_is_scored_from_its_fields_with_low_evidence(
    client: TestClient, deployment: Deployment
) -> None:
    body = {"accounts": [{"account_id": deployment.account_ids[0]}, NEW_ACCOUNT]}
    response = client.post("/score", json=body)
    assert response.status_code == 200, response.text
    account = response.json()["accounts"][1]
    assert account["source"] == "fields"
    assert account["account_id"] is None
    # Firmographics known, no history or engagement: evidence too low for Tier 1.
    assert account["evidence"] < 0.5
    assert account["tier"] >= 2


def test_fields_given_with_a_known_id_override_the_snapshot(
    client: TestClient, deployment: Deployment
) -> None:
    account_id = deployment.account_ids[3]
    plain = client.post("/score", json={"accounts": [{"account_id": account_id}]}).json()[
        "accounts"
    ][0]
    small = client.post(
        "/score",
        json={"accounts": [{"account_id": account_id, "employees": 1, "industry": "retail"}]},
    ).json()["accounts"][0]
    big = client.post(
        "/score",
        json={
            "accounts": [{"account_id": account_id, "employees": 50_000, "industry": "software"}]
        },
    ).json()["accounts"][0]
    assert small["source"] == big["source"] == "snapshot+fields"
    assert big["icp_fit"] >= small["icp_fit"]
    assert (small["p_convert"], small["revenue_if_converts"]) != (
        big["p_convert"],
        big["revenue_if_converts"],
    ) or plain == small


def test_explain_gives_every_driver_and_the_tier_rule(
    client: TestClient, deployment: Deployment
) -> None:
    response = client.post("/explain", json={"account": {"account_id": deployment.account_ids[0]}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["account"]["reasons"]["tier_rule"]
    assert body["account"]["reasons"]["playbook"]
    top = len(body["account"]["reasons"]["positives"]) + len(
        body["account"]["reasons"]["negatives"]
    )
    assert len(body["drivers"]) >= top
    assert all(d["text"] for d in body["drivers"])


def test_model_endpoint_shows_version_policy_and_cutoffs(client: TestClient) -> None:
    response = client.get("/model")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "test-1"
    assert 0.5 < body["metrics"]["test_auc"] <= 1
    assert body["policy"]["method"] == "quantile"
    assert body["cutoffs"]["kind"] == "reference"
    assert body["snapshot_as_of"] is not None
    assert body["max_accounts_per_request"] == 1000


# --------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("body", "path", "rule"),
    [
        ({}, "accounts", "missing"),
        ({"accounts": []}, "accounts", "too_short"),
        (
            {"accounts": [{"account_id": "A-000001", "employees": "many"}]},
            "employees",
            "float_parsing",
        ),
        ({"accounts": [{"account_id": "A-000001", "employes": 10}]}, "employes", "extra_forbidden"),
        (
            {"accounts": [{"industry": "software", "annual_revenue": -5}]},
            "annual_revenue",
            "greater_than_equal",
        ),
        ({"accounts": [{}]}, "accounts", "value_error"),
        (
            {"accounts": [{"account_id": "A-000001"}], "reasons": "perhaps"},
            "reasons",
            "bool_parsing",
        ),
        ({"account": {"account_id": "A-000001"}}, "accounts", "missing"),
    ],
    ids=[
        "no-accounts",
        "empty-list",
        "mistyped",
        "misspelt",
        "negative",
        "neither-id-nor-fields",
        "bad-flag",
        "wrong-body",
    ],
)
def test_bad_requests_get_400_with_field_path_and_rule(
    client: TestClient, body: dict[str, Any], path: str, rule: str
) -> None:
    response = client.post("/score", json=body)
    assert response.status_code == 400, response.text
    problems = response.json()["errors"]
    assert response.json()["error"] == problems[0]
    assert any(path in p["path"] and p["rule"] == rule for p in problems), problems


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(client: TestClient, token: str) -> None:
    raw = '{"accounts": [{"industry": "software", "employees": ' + token + "}]}"
    response = client.post("/score", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert any(
        p["rule"] == "finite_number" and p["path"] == "accounts[0].employees"
        for p in response.json()["errors"]
    )


def test_malformed_json_is_a_400(client: TestClient) -> None:
    response = client.post(
        "/score", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400


def test_more_than_1000_accounts_are_refused(client: TestClient, deployment: Deployment) -> None:
    ids = deployment.account_ids
    accounts = [{"account_id": ids[i % len(ids)]} for i in range(1001)]
    response = client.post("/score", json={"accounts": accounts, "reasons": False})
    assert response.status_code == 400
    assert any(p["rule"] == "too_long" for p in response.json()["errors"])
    response = client.post("/score", json={"accounts": accounts[:1000], "reasons": False})
    assert response.status_code == 200
    assert len(response.json()["accounts"]) == 1000


def test_unknown_id_without_fields_is_a_404_naming_the_account(client: TestClient) -> None:
    body = {"accounts": [{"account_id": "A-000001"}, {"account_id": "NOPE-1"}]}
    response = client.post("/score", json=body)
    assert response.status_code == 404
    assert "accounts[1].account_id" in _errors(response)
    assert "NOPE-1" in _errors(response)
    response = client.post("/explain", json={"account": {"account_id": "NOPE-1"}})
    assert response.status_code == 404
    # With its fields, an id the snapshot does not know is a new account.
    response = client.post("/score", json={"accounts": [{"account_id": "NOPE-1", **NEW_ACCOUNT}]})
    assert response.status_code == 200
    assert response.json()["accounts"][0]["source"] == "fields"


def test_unknown_technographic_is_a_422_naming_it(client: TestClient) -> None:
    body = {"accounts": [{"industry": "software", "technographics": {"tech_crn": True}}]}
    response = client.post("/score", json=body)
    assert response.status_code == 422
    assert "accounts[0].technographics.tech_crn" in _errors(response)


# --------------------------------------------------------------------------- a real server


@pytest.mark.slow
def test_a_real_bentoml_server_answers_on_loopback(deployment: Deployment, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        **_env(deployment),
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    env.pop("TIERING_CONFIG", None)
    bentoml = Path(sys.executable).parent / "bentoml"
    command = [str(bentoml), "serve", "serving.service:TieringService"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with serving(command, env, port, tmp_path / "server.log") as base:
        body = {"accounts": [{"account_id": deployment.account_ids[0]}, NEW_ACCOUNT]}
        # Metrics exist only in a real server (Prometheus is set up by `bentoml serve`).
        assert httpx.get(f"{base}/metrics", timeout=10).status_code == 200
        refused = httpx.post(f"{base}/score", json=body, timeout=30)
        assert refused.status_code == 401
        response = httpx.post(
            f"{base}/score", json=body, headers={"X-API-Key": API_KEY}, timeout=30
        )
        assert response.status_code == 200, response.text
        assert [a["source"] for a in response.json()["accounts"]] == ["snapshot", "fields"]


def test_serve_refuses_to_run_open_on_a_public_interface_or_without_a_key(
    deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer
    from typer.testing import CliRunner

    from tiering_cli.score_cmd import serve, service_env

    config_file = tmp_path / "deployment.toml"
    config_file.write_text(
        "[data.accounts]\npath = 'a.csv'\n[data.opportunities]\npath = 'o.csv'\n"
    )
    app = typer.Typer()
    app.command()(serve)
    monkeypatch.delenv("TIERING_API_KEY", raising=False)
    public = CliRunner().invoke(
        app, ["--config", str(config_file), "--host", "0.0.0.0", "--no-auth"]
    )
    assert public.exit_code == 2 and "local use only" in public.output
    keyless = CliRunner().invoke(app, ["--config", str(config_file)])
    assert keyless.exit_code == 2 and "TIERING_API_KEY" in keyless.output

    env = service_env(
        deployment.config, config_file, model=str(deployment.bundle_dir), auth_disabled=True
    )
    assert env["TIERING_BUNDLE_DIR"] == str(deployment.bundle_dir.resolve())
    assert env["TIERING_AUTH_DISABLED"] == "true" and env["BENTOML_DO_NOT_TRACK"] == "true"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert Path(env["TIERING_SNAPSHOT"]).is_absolute()


# --------------------------------------------------------------------------- request validation
@pytest.mark.parametrize(
    ("attributes", "rule"),
    [({"employees": "x"}, "valid number"), ({"employees": -5}, "greater than or equal to 0")],
    ids=["text-for-a-number", "negative"],
)
def test_account_fields_sent_as_attributes_get_the_same_checks(
    client: TestClient, attributes: dict[str, Any], rule: str
) -> None:
    body = {"accounts": [{"industry": "software", "attributes": attributes}]}
    response = client.post("/score", json=body)
    assert response.status_code == 400, response.text
    assert "attributes.employees" in _errors(response) and rule in _errors(response)


def test_a_body_that_is_not_json_is_a_415(client: TestClient) -> None:
    for content_type in ("multipart/form-data", "text/plain"):
        response = client.post("/score", content=b"--x--", headers={"Content-Type": content_type})
        assert response.status_code == 415, (content_type, response.text)
        assert "application/json" in response.json()["error"]["message"]


def test_a_body_over_the_size_cap_is_a_413_whether_declared_or_streamed(
    client: TestClient,
) -> None:
    from serving.settings import DEFAULT_MAX_BODY_BYTES

    big = b'{"accounts": [' + b" " * (DEFAULT_MAX_BODY_BYTES + 10) + b"]}"
    declared = client.post("/score", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and "TIERING_MAX_BODY_BYTES" in declared.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap holds while reading
        for start in range(0, len(big), 1 << 20):
            yield big[start : start + (1 << 20)]

    streamed = client.post("/score", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413


def test_a_client_error_is_logged_as_one_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO"):
        response = client.post("/score", json={"accounts": [{"employees": "many"}]})
    assert response.status_code == 400
    records = [r for r in caplog.records if r.name == "bentoml._internal.server.http_app"]
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    assert records[0].exc_info is None and "\n" not in records[0].getMessage()
    assert records[0].getMessage().startswith("400 on /score: accounts.0.employees")


# --------------------------------------------------------------------------- a damaged snapshot
def test_a_damaged_snapshot_keeps_the_last_good_one_and_says_so(
    client: TestClient, deployment: Deployment
) -> None:
    good = deployment.snapshot.read_bytes()
    known = deployment.account_ids[0]
    before = client.post("/score", json={"accounts": [{"account_id": known}]}).json()
    try:
        deployment.snapshot.write_bytes(good[: len(good) // 3])
        os.utime(deployment.snapshot, (time.time() + 5, time.time() + 5))
        after = client.post("/score", json={"accounts": [{"account_id": known}]})
        assert after.status_code == 200, after.text
        assert after.json()["accounts"] == before["accounts"]
        new = client.post("/score", json={"accounts": [NEW_ACCOUNT]})
        assert new.status_code == 200
        info = client.get("/model").json()
        assert "unreadable" in info["snapshot_problem"] and "kept" in info["snapshot_problem"]
        assert info["snapshot_as_of"] is not None
        assert client.get("/readyz").status_code == 200
    finally:
        deployment.snapshot.write_bytes(good)
        os.utime(deployment.snapshot, (time.time() + 10, time.time() + 10))
    assert client.get("/model").json()["snapshot_problem"] is None


def test_a_service_that_never_had_a_snapshot_is_not_ready(tmp_path: Path) -> None:
    from serving.snapshot import SnapshotCache, SnapshotError

    garbage = tmp_path / "snapshot.parquet"
    garbage.write_bytes(b"PAR1 not really")
    cache = SnapshotCache(garbage)
    with pytest.raises(SnapshotError, match="unreadable"):
        cache.load()  # at startup: a reason not to start
    assert cache.current() is None and not cache.ready
    assert SnapshotCache(tmp_path / "absent.parquet").ready  # none written yet: by fields only


# --------------------------------------------------------------------------- load shedding
def _drive(app: Any, messages: list[dict[str, Any]], gone: Any = None) -> Any:
    """One request through an ASGI app: the body, then (if ``gone`` is set) a disconnect."""
    import asyncio

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        if gone is not None:
            await gone.wait()
        else:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/score",
        "headers": [(b"content-type", b"application/json")],
        "server": ("127.0.0.1", 3000),
    }
    return app(scope, receive, send), sent


def test_a_full_service_answers_503_with_retry_after_at_once_and_drops_work_of_gone_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from serving.traffic import RequestLimits

    monkeypatch.setenv("TIERING_API_KEY", API_KEY)
    monkeypatch.setenv("TIERING_MAX_CONCURRENCY", "1")
    computed: list[str] = []
    release = asyncio.Event()

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await release.wait()  # waiting for the worker thread
        computed.append("answer")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    limits = RequestLimits(slow_app)

    async def scenario() -> None:
        nonlocal release
        release = asyncio.Event()
        body = {"type": "http.request", "body": b"{}", "more_body": False}
        gone = asyncio.Event()
        first, first_sent = _drive(limits, [dict(body)], gone)
        first_task = asyncio.ensure_future(first)
        await asyncio.sleep(0.05)
        assert limits.in_flight == 1
        second, second_sent = _drive(limits, [dict(body)])
        started = time.monotonic()
        await asyncio.wait_for(second, timeout=1)
        assert time.monotonic() - started < 1
        assert second_sent[0]["status"] == 503
        assert (b"retry-after", b"1") in second_sent[0]["headers"]
        # The first client leaves before its answer: its work is dropped, never computed.
        gone.set()
        await asyncio.wait_for(first_task, timeout=5)
        assert first_sent == [] and limits.dropped == 1 and limits.in_flight == 0
        release.set()
        third, third_sent = _drive(limits, [dict(body)])
        await asyncio.wait_for(third, timeout=5)
        assert third_sent[0]["status"] == 200

    asyncio.run(scenario())
    assert computed == ["answer"]


def test_open_service_is_refused_on_anything_but_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.auth import OpenServiceRefused, refuse_open_service
    from serving.settings import ServingSettings

    monkeypatch.delenv("TIERING_API_KEY", raising=False)
    monkeypatch.setenv("TIERING_AUTH_DISABLED", "true")
    settings = ServingSettings()
    refuse_open_service(settings, ["127.0.0.1", "::1"])
    for address in ("0.0.0.0", "192.0.2.10", "::"):
        with pytest.raises(OpenServiceRefused, match="loopback only"):
            refuse_open_service(settings, ["127.0.0.1", address])
    monkeypatch.setenv("TIERING_API_KEY", API_KEY)
    monkeypatch.setenv("TIERING_AUTH_DISABLED", "false")
    refuse_open_service(ServingSettings(), ["0.0.0.0"])  # with a key: fine anywhere


# ------------------------------------------------------------------------------- customers


def test_customers_get_their_own_tier_and_prospects_none(
    client: TestClient, deployment: Deployment
) -> None:
    import pandas as pd

    snapshot = pd.read_parquet(deployment.snapshot)
    customer = str(snapshot.loc[snapshot["cs_customer"] > 0, "account_id"].iloc[0])
    body = {"accounts": [{"account_id": customer}, NEW_ACCOUNT]}
    response = client.post("/score", json=body)
    assert response.status_code == 200, response.text
    known, new = response.json()["accounts"]
    assert known["segment"] == "customer"
    block = known["customer"]
    assert block["tier"] in (1, 2, 3) and block["tier_name"].startswith(f"Tier {block['tier']}")
    assert 0 < block["p_churn"] < 1 and block["recurring_revenue"] > 0
    # p_churn comes rounded to 4 places, money to cents: the product agrees to that precision.
    assert block["revenue_at_risk"] == pytest.approx(
        block["recurring_revenue"] * block["p_churn"], abs=block["recurring_revenue"] * 5e-5 + 0.01
    )
    assert block["reasons"][0].startswith("churn or downgrade risk") and block["playbook"]
    assert new["segment"] == "prospect" and new["customer"] is None
