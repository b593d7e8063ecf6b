"""Who may call the service: the API key on the tier endpoints, and no open service on
anything but loopback, however the service was started (``tiering serve``, plain ``bentoml
serve``, a container)."""

from __future__ import annotations

import hmac
import ipaddress
import json
from http import HTTPStatus
from typing import Any

from serving.settings import ServingSettings

# Endpoints that answer with tiers (internal data): they need the API key. Health, readiness
# and metrics stay open for the orchestrator.
PROTECTED_PATHS = frozenset({"/score", "/explain", "/model"})
PROTECTED_PREFIXES = ("/accounts/",)
"""Per-account routes (tier history, later overrides): internal like the tiers themselves."""


class OpenServiceRefused(RuntimeError):
    """Auth is disabled but the service listens on a non-loopback address."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listening_addresses() -> list[str]:
    """The addresses this process listens on (a BentoML worker inherits its socket; under a
    test client there is none)."""
    import psutil

    try:
        connections = psutil.Process().net_connections(kind="inet")
    except psutil.Error:
        return []
    return [c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN and c.laddr]


def refuse_open_service(settings: ServingSettings, addresses: list[str]) -> None:
    """Without a key the service may listen on loopback only."""
    if not settings.auth_disabled:
        return
    public = [a for a in addresses if not is_loopback(a)]
    if public:
        raise OpenServiceRefused(
            f"TIERING_AUTH_DISABLED=true is for loopback only, but the service listens on "
            f"{public[0]}: set TIERING_API_KEY and drop TIERING_AUTH_DISABLED, or bind 127.0.0.1"
        )


def error_json(path: str, rule: str, message: str) -> dict[str, Any]:
    """The service's one error shape (``serving.schemas.ErrorResponse``)."""
    problem = {"path": path, "rule": rule, "message": message}
    return {"error": problem, "errors": [problem]}


async def send_json(
    send: Any, status: HTTPStatus, body: dict[str, Any], headers: list[Any]
) -> None:
    """Answer an ASGI request with a JSON body (the service's middlewares' one way to refuse)."""
    payload = json.dumps(body).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": int(status),
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class ApiKeyMiddleware:
    """Refuses calls to the tier endpoints without the right key in the API key header, and,
    with auth disabled, every call that reaches the service on a non-loopback address."""

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
        path = str(scope.get("path", ""))
        protected = path in PROTECTED_PATHS or path.startswith(PROTECTED_PREFIXES)
        if scope["type"] != "http" or not protected:
            await self.app(scope, receive, send)
            return
        if self.key is None:
            server = (scope.get("server") or ("", 0))[0] or ""
            if _is_ip(server) and not is_loopback(server):
                # The startup check covers the listening socket; this covers a server whose
                # socket could not be inspected.
                await send_json(
                    send,
                    HTTPStatus.FORBIDDEN,
                    error_json(
                        "",
                        "loopback_only",
                        "this service runs without an API key: loopback callers only",
                    ),
                    [],
                )
                return
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(self.header, b"")
        if given and hmac.compare_digest(given, self.key):
            await self.app(scope, receive, send)
            return
        problem = "missing" if not given else "wrong"
        await send_json(
            send,
            HTTPStatus.UNAUTHORIZED,
            error_json(
                self.header_name,
                f"{problem}_api_key",
                f"{problem} API key: send it in the {self.header_name} header",
            ),
            [(b"www-authenticate", b"ApiKey")],
        )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
