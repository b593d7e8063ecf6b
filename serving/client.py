"""A small typed Python client of the HTTP service.

    from serving.client import TieringClient
    with TieringClient("http://127.0.0.1:3000", api_key="...") as client:
        answer = client.score([{"account_id": "A-000001"}])
        print(answer.accounts[0].tier, answer.accounts[0].reasons.summary)

Answers are the service's own pydantic models (``serving.schemas``), so a field the service
renames breaks here, in one place. An error answer raises :class:`ApiError` with the status
and the problems (path, rule, message) the service named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from serving.account_history import AccountTimeline
from serving.schemas import (
    AccountRequest,
    ErrorResponse,
    ExplainResponse,
    ModelInfo,
    Problem,
    ScoreResponse,
)

AccountLike = AccountRequest | Mapping[str, Any]


class ApiError(Exception):
    """An error answer: its HTTP status and the problems the service named."""

    def __init__(self, status: int, problems: list[Problem]) -> None:
        first = problems[0] if problems else Problem(path="", rule="", message="")
        super().__init__(f"HTTP {status}: {first.message}")
        self.status = status
        self.problems = problems


class TieringClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        api_key_header: str = "X-API-Key",
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {api_key_header: api_key} if api_key else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    # ---------------------------------------------------------------------- endpoints
    def score(self, accounts: Sequence[AccountLike], *, reasons: bool = True) -> ScoreResponse:
        body = {"accounts": [_plain(a) for a in accounts], "reasons": reasons}
        return ScoreResponse.model_validate(self._call("POST", "/score", json=body))

    def explain(self, account: AccountLike) -> ExplainResponse:
        body = {"account": _plain(account)}
        return ExplainResponse.model_validate(self._call("POST", "/explain", json=body))

    def model(self) -> ModelInfo:
        return ModelInfo.model_validate(self._call("GET", "/model"))

    def history(self, account_id: str) -> AccountTimeline:
        from urllib.parse import quote

        path = f"/accounts/{quote(account_id, safe='')}/history"
        return AccountTimeline.model_validate(self._call("GET", path))

    def openapi(self) -> dict[str, Any]:
        return dict(self._call("GET", "/docs.json"))

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    # ---------------------------------------------------------------------- plumbing
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                problems = ErrorResponse.model_validate(response.json()).errors
            except ValueError:
                problems = [Problem(path="", rule="http", message=response.text[:500])]
            raise ApiError(response.status_code, problems)
        return response.json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TieringClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _plain(account: AccountLike) -> dict[str, Any]:
    if isinstance(account, AccountRequest):
        return account.model_dump(exclude_none=True, exclude_defaults=True)
    return dict(account)
