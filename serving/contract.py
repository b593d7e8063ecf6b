"""The API contract as integrators see it: one error shape on every error answer, and an
OpenAPI document that says what the service is, how to authenticate and what each answer means.

BentoML answers its own errors in several shapes (a pydantic failure as ``{"error", "detail":
[...]}``, an API exception as ``[{"error": ...}]``, FastAPI's ``{"detail": ...}``) and writes
its own title and version into ``/docs.json``. ``ApiContract`` is the outermost ASGI
middleware: it rewrites every JSON error body into ``serving.schemas.ErrorResponse`` and
completes the OpenAPI document on its way out, so the service code stays BentoML as its docs
show it.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from importlib import metadata
from typing import Any

from serving.schemas import EXAMPLE_ACCOUNT, ErrorResponse, Problem

DIST = "account-tiering"
SECURITY_SCHEME = "ApiKeyAuth"
PROTECTED_OPERATIONS = ("/score", "/explain", "/model", "/accounts/{account_id}/history")
ERROR_STATUSES = (400, 401, 403, 404, 413, 415, 422, 429, 500, 503, 504)
"""Every error status the service answers on its tier endpoints, each with the one shape."""

RULE_OF_STATUS = {
    400: "invalid_request",
    401: "api_key",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}
# "accounts[1].account_id: ..." -- a message that starts with the field path it is about.
_PATH_PREFIX = re.compile(r"^([A-Za-z_][\w\-]*(?:\[\d+\])?(?:\.[\w\-]+(?:\[\d+\])?)*): (.*)$", re.S)


def problem(status: int, message: str, path: str = "", rule: str | None = None) -> Problem:
    return Problem(
        path=path, rule=rule or RULE_OF_STATUS.get(status, f"http_{status}"), message=message
    )


def error_body(problems: list[Problem]) -> dict[str, Any]:
    return ErrorResponse(error=problems[0], errors=problems).model_dump()


def loc_path(loc: list[Any] | tuple[Any, ...]) -> str:
    """pydantic's ``("accounts", 0, "employees")`` as ``accounts[0].employees``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _from_text(status: int, text: str) -> Problem:
    """A message "accounts[1].account_id: 'X' is not ..." carries its own path."""
    match = _PATH_PREFIX.match(text.strip())
    if match:
        return problem(status, text.strip(), path=match.group(1))
    return problem(status, text.strip() or HTTPStatus(status).phrase)


def normalise(status: int, body: Any) -> dict[str, Any]:
    """Any error body the stack produces, in the one shape."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict) and "errors" in body:
        return body
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            problems = [
                Problem(
                    path=loc_path(item.get("loc", [])),
                    rule=str(item.get("type", RULE_OF_STATUS.get(status, "invalid"))),
                    message=f"{loc_path(item.get('loc', [])) or 'request'}: {item.get('msg', '')}",
                )
                for item in detail
            ]
            return error_body(problems)
        text = body.get("error") if isinstance(body.get("error"), str) else detail
        if isinstance(text, dict):
            text = json.dumps(text)
        return error_body([_from_text(status, str(text or ""))])
    return error_body([_from_text(status, str(body) if body is not None else "")])


# ------------------------------------------------------------------------------- OpenAPI
def package_info() -> tuple[str, str, str]:
    try:
        meta = metadata.metadata(DIST)
        return DIST, meta["Version"], meta["Summary"] or ""
    except metadata.PackageNotFoundError:
        return DIST, "0+unknown", ""


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def complete_openapi(spec: dict[str, Any], api_key_header: str) -> dict[str, Any]:
    """Title and version from the package, the API key scheme, the error answers in the one
    shape, and example requests that work."""
    title, version, summary = package_info()
    info = spec.setdefault("info", {})
    info.update(
        title=title,
        version=version,
        description=(
            f"{summary}\n\nSend the API key in the `{api_key_header}` header. Probabilities are "
            "0-1 with 4 decimals, money is in the export's currency rounded to cents, ICP fit "
            "is 0-100. Every error answer has the shape of `ErrorResponse`; a value the model "
            "never saw (e.g. an unknown industry) is accepted and named in `warnings`."
        ),
    )
    info.pop("contact", None)
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error_schema.pop("$defs", {}))
    schemas["ErrorResponse"] = error_schema
    # BentoML's and FastAPI's own error schemas: no answer has them any more.
    for stale in (
        "HTTPValidationError",
        "ValidationError",
        "InvalidArgument",
        "NotFound",
        "InternalServerError",
    ):
        schemas.pop(stale, None)
    components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
        "type": "apiKey",
        "in": "header",
        "name": api_key_header,
        "description": "The service's API key (TIERING_API_KEY).",
    }
    examples = {
        "/score": {"accounts": [EXAMPLE_ACCOUNT], "reasons": True},
        "/explain": {"account": EXAMPLE_ACCOUNT},
    }
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            protected = path in PROTECTED_OPERATIONS or path.startswith("/accounts/")
            responses = operation["responses"]
            for code in list(responses):
                if str(code) != "200" and str(code).isdigit():
                    del responses[code]
            if protected:
                operation["security"] = [{SECURITY_SCHEME: []}]
                for status in ERROR_STATUSES:
                    responses[str(status)] = {
                        "description": HTTPStatus(status).phrase,
                        "content": {"application/json": {"schema": _ref("ErrorResponse")}},
                    }
            if path in examples and method == "post":
                content = operation.get("requestBody", {}).get("content", {})
                if "application/json" in content:
                    content["application/json"]["example"] = examples[path]
    return spec


# ---------------------------------------------------------------------------- middleware
class ApiContract:
    """Outermost ASGI middleware: error bodies in the one shape, the OpenAPI document
    completed."""

    def __init__(self, app: Any) -> None:
        from serving.settings import ServingSettings

        self.app = app
        try:
            self.header = ServingSettings().api_key_header
        except ValueError:  # settings refused: the service will say why when it starts
            self.header = "X-API-Key"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_spec = scope.get("method") == "GET" and scope.get("path") in ("/docs.json",)
        start: dict[str, Any] = {}
        chunks: list[bytes] = []
        holding = False

        async def shaped_send(message: Any) -> None:
            nonlocal holding
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = dict(message.get("headers") or [])
                media = headers.get(b"content-type", b"")
                # Pages (HTML) keep their own error pages; every other error body is shaped.
                holding = (status >= 400 and not media.startswith(b"text/html")) or (
                    is_spec and status == 200 and media.startswith(b"application/json")
                )
                if holding:
                    start.update(message)
                    return
                await send(message)
                return
            if message["type"] == "http.response.body" and holding:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                await self._send_rewritten(send, start, b"".join(chunks), is_spec)
                return
            await send(message)

        await self.app(scope, receive, shaped_send)

    async def _send_rewritten(
        self, send: Any, start: dict[str, Any], raw: bytes, is_spec: bool
    ) -> None:
        status = int(start["status"])
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        if is_spec and status == 200 and isinstance(body, dict):
            new = complete_openapi(body, self.header)
        else:
            new = normalise(status, body)
        payload = json.dumps(new).encode("utf-8")
        headers = [
            (k, v)
            for k, v in start.get("headers") or []
            if k.lower() not in (b"content-length", b"content-type")
        ]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
