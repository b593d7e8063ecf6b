"""The API contract as an integrator meets it, against a real `bentoml serve` through the typed
client: the OpenAPI document names the package, the key and the error answers; its example
request works; numbers come rounded with their units; every error has one shape; an unknown
category is accepted with a warning naming the field. The schema fuzzer runs in the slow set."""

from __future__ import annotations

import re
from importlib import metadata
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from serving.client import ApiError, TieringClient

from support import LiveService


@pytest.fixture(scope="module")
def client(live_server: LiveService) -> TieringClient:
    return TieringClient(live_server.base_url, api_key=live_server.api_key)


@pytest.fixture(scope="module")
def spec(client: TieringClient) -> dict[str, Any]:
    return client.openapi()


def _decimals(value: float) -> int:
    text = repr(value)
    return len(text.split(".")[1]) if "." in text and "e" not in text else 0


def test_openapi_names_the_package_the_key_and_one_error_shape(spec: dict[str, Any]) -> None:
    assert spec["info"]["title"] == "account-tiering"
    assert spec["info"]["version"] == metadata.version("account-tiering")
    scheme = spec["components"]["securitySchemes"]["ApiKeyAuth"]
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path in ("/score", "/explain", "/model", "/accounts/{account_id}/history"):
        (operation,) = [op for op in spec["paths"][path].values() if "responses" in op]
        assert operation["security"] == [{"ApiKeyAuth": []}], path
        for status in ("401", "404", "422"):
            schema = operation["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (path, status)


def test_every_answer_field_has_a_description(spec: dict[str, Any]) -> None:
    schemas = {
        name: spec["components"]["schemas"][name]
        for name in ("AccountScore", "Reasons", "Driver", "Cutoffs", "Problem", "ErrorResponse")
    }
    for path in ("/score", "/explain"):
        ok = spec["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]
        schemas[path] = ok["schema"]
    for name, schema in schemas.items():
        undocumented = [
            field for field, prop in schema["properties"].items() if not prop.get("description")
        ]
        assert not undocumented, (name, undocumented)
    account = schemas["AccountScore"]["properties"]
    assert "0-1" in account["p_convert"]["description"]
    assert "0-100" in account["icp_fit"]["description"]
    assert "cents" in account["expected_revenue"]["description"]


def test_the_example_request_of_the_schema_is_answered(
    spec: dict[str, Any], live_server: LiveService
) -> None:
    for path in ("/score", "/explain"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"]
        response = httpx.post(
            f"{live_server.base_url}{path}",
            json=body,
            headers={"X-API-Key": live_server.api_key},
            timeout=30,
        )
        assert response.status_code == 200, (path, response.text)


def test_answers_are_rounded_and_carry_the_model_version_and_time(
    client: TieringClient, live_server: LiveService
) -> None:
    ids = live_server.deployment.account_ids[:20]
    answer = client.score([{"account_id": i} for i in ids])
    assert answer.model_version == "test-1"
    assert answer.scored_at.tzinfo is not None
    for account in answer.accounts:
        for name in ("p_convert", "evidence", "priority", "p_win_deal"):
            value = getattr(account, name)
            assert value is None or (0 <= value <= 1 and _decimals(value) <= 4), (name, value)
        for name in ("expected_revenue", "revenue_if_converts", "revenue_p10", "revenue_p90"):
            assert _decimals(getattr(account, name)) <= 2, (name, getattr(account, name))
        assert 0 <= account.icp_fit <= 100
    explained = client.explain({"account_id": ids[0]})
    assert explained.model_version == "test-1" and explained.scored_at is not None
    assert all(_decimals(d.effect_points) <= 2 for d in explained.drivers)


def test_an_unknown_industry_is_scored_with_a_warning_naming_the_field(
    client: TieringClient, live_server: LiveService
) -> None:
    known = {"account_id": live_server.deployment.account_ids[0]}
    answer = client.score([known, {"industry": "martian-mining", "employees": 300}])
    assert [a.source for a in answer.accounts] == ["snapshot", "fields"]
    (warning,) = answer.warnings
    assert warning.path == "accounts[1].industry"
    assert warning.rule == "unknown_category"
    assert "martian-mining" in warning.message
    assert client.score([{"industry": "Healthcare", "employees": 300}]).warnings == []


@pytest.mark.parametrize(
    ("call", "status", "path", "rule"),
    [
        (lambda c: c.score([{"employees": "many"}]), 400, "accounts[0].employees", "float_parsing"),
        (lambda c: c.score([{"account_id": "NOPE-1"}]), 404, "accounts[0].account_id", "not_found"),
        (
            lambda c: c.score([{"industry": "software", "technographics": {"tech_crn": True}}]),
            422,
            "accounts[0].technographics.tech_crn",
            "unprocessable",
        ),
        (lambda c: c.history("NOPE-1"), 404, "account_id", "not_found"),
    ],
    ids=["invalid", "unknown-id", "unknown-input", "no-history"],
)
def test_every_error_has_one_shape_naming_path_and_rule(
    client: TieringClient, call: Any, status: int, path: str, rule: str
) -> None:
    with pytest.raises(ApiError) as caught:
        call(client)
    assert caught.value.status == status
    first = caught.value.problems[0]
    assert (first.path, first.rule) == (path, rule)
    assert first.message


def test_a_missing_key_is_a_401_in_the_same_shape(live_server: LiveService) -> None:
    with TieringClient(live_server.base_url) as anonymous, pytest.raises(ApiError) as caught:
        anonymous.model()
    assert caught.value.status == 401
    assert caught.value.problems[0].path == "X-API-Key"
    assert re.search("missing API key", caught.value.problems[0].message)


# ------------------------------------------------------------------------------ fuzzing
FUZZED = re.compile(r"^/(score|explain|model|accounts/)")
CASES_PER_OPERATION = 60


@pytest.mark.slow
def test_the_schema_fuzzer_finds_no_server_error_and_no_answer_off_the_schema(
    live_server: LiveService,
) -> None:
    """schemathesis draws requests from the service's own OpenAPI document (a few hundred in
    all) and checks every answer: no 5xx, a declared status, content type and body schema."""
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"{live_server.base_url}/docs.json")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    statuses: dict[str, dict[int, int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if not FUZZED.match(operation.path):
            continue
        fuzz_operation(
            operation,
            statuses.setdefault(f"{operation.method.upper()} {operation.path}", {}),
            live_server,
            checks,
        )
    assert set(statuses) == {
        "POST /score",
        "POST /explain",
        "GET /model",
        "GET /accounts/{account_id}/history",
        "PUT /accounts/{account_id}/override",
        "DELETE /accounts/{account_id}/override",
    }
    # The fuzzer reached both sides of the contract: answers and refusals.
    assert any(200 in seen for seen in statuses.values())
    assert any(code in (400, 404, 422) for seen in statuses.values() for code in seen)


def fuzz_operation(
    operation: Any, seen: dict[int, int], live_server: LiveService, checks: list[Any]
) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=CASES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def fuzz(case: Any) -> None:
        response = case.call_and_validate(
            base_url=live_server.base_url,
            headers={"X-API-Key": live_server.api_key},
            checks=checks,
            timeout=30,
        )
        seen[response.status_code] = seen.get(response.status_code, 0) + 1

    fuzz()
