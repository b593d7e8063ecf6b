"""What the service accepts and how much at once, before any model code runs.

- only JSON bodies on the scoring endpoints (415 otherwise, e.g. multipart without a boundary);
- a body size cap (413), enforced while reading, whatever Content-Length claims;
- a bound on scoring requests in flight per worker: above it, an immediate 503 with
  Retry-After instead of a queue that grows until every answer comes too late;
- work whose client has gone is dropped: a request still waiting for its thread is cancelled
  when its client disconnects, so the service never computes answers nobody reads.

BentoML's own traffic settings (``timeout``, ``max_concurrency``) stay in force behind this.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

from serving.auth import error_json, send_json
from serving.settings import ServingSettings

logger = logging.getLogger("tiering.service")


LIMITED_PATHS = frozenset({"/score", "/explain"})


async def _answer(
    send: Any, status: HTTPStatus, error: str, headers: list[Any] | None = None
) -> None:
    rules = {413: "body_too_large", 415: "unsupported_media_type", 503: "at_capacity"}
    await send_json(
        send, status, error_json("", rules.get(int(status), "refused"), error), headers or []
    )


class RequestLimits:
    """ASGI middleware applying the limits above to ``LIMITED_PATHS``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        settings = ServingSettings()
        self.max_body = settings.max_body_bytes
        self.max_in_flight = settings.max_concurrency
        self.retry_after = str(settings.retry_after_s).encode()
        self.in_flight = 0
        self.dropped = 0
        """Requests cancelled because their client left (for tests and metrics)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in LIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        media = headers.get(b"content-type", b"application/json").decode("latin-1")
        if media.split(";")[0].strip().lower() != "application/json":
            await _answer(
                send,
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type {media.split(';')[0].strip() or '(empty)'} is not accepted: "
                "send the request as application/json",
            )
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await self._too_large(send)
            return
        if self.in_flight >= self.max_in_flight:
            await _answer(
                send,
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"the service is at capacity ({self.max_in_flight} requests in flight): "
                "retry after the Retry-After seconds",
                [(b"retry-after", self.retry_after)],
            )
            return
        self.in_flight += 1
        try:
            await self._serve(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _too_large(self, send: Any) -> None:
        await _answer(
            send,
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"request body larger than {self.max_body:,} bytes (TIERING_MAX_BODY_BYTES): "
            "send fewer accounts per request, or run batch scoring",
        )

    async def _serve(self, scope: Any, receive: Any, send: Any) -> None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.dropped += 1
                return
            size += len(message.get("body", b""))
            if size > self.max_body:
                await self._too_large(send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        gone = asyncio.Event()
        started = False
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def tracked_send(message: Any) -> None:
            nonlocal started
            started = True
            await send(message)

        app = asyncio.ensure_future(self.app(scope, replay, tracked_send))

        async def watch() -> None:
            # After the body, the only message a client sends is its disconnect.
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    if not started and not app.done():
                        self.dropped += 1
                        logger.info("client left before its answer: %s dropped", scope["path"])
                        app.cancel()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            await app
        except asyncio.CancelledError:
            if not gone.is_set():
                raise
        finally:
            watcher.cancel()


class OneLineClientErrors(logging.Filter):
    """BentoML logs every 4xx it answers with a full traceback; a client's mistake is one
    line (status, path, the first problem), a server fault keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None:
            return True
        exc = record.exc_info[1]
        status = _client_status(exc)
        if status is None:
            return True
        path = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        first = _first_problem(exc)
        record.msg = "%s on %s: %s"
        record.args = (status, path, first[:300])
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info = None
        record.exc_text = None
        return True


def _first_problem(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError) and exc.errors():
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return f"{where}: {error['msg']}{more}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _client_status(exc: BaseException) -> int | None:
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, BentoMLException):
        status = int(exc.error_code)
        return status if 400 <= status < 500 else None
    return None


def quiet_client_errors() -> None:
    """Install ``OneLineClientErrors`` on BentoML's request logger (once per process)."""
    target = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, OneLineClientErrors) for f in target.filters):
        target.addFilter(OneLineClientErrors())
