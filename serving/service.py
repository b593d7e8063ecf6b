"""The HTTP service: ``POST /score``, ``POST /explain``, ``GET /model``, plus BentoML's own
``/healthz``, ``/livez``, ``/readyz`` and ``/metrics``.

Run it with ``tiering serve`` (or ``bentoml serve serving.service:TieringService``); it is
configured by environment variables (``serving.settings.ServingSettings``). The champion
bundle is loaded once per worker, in ``__init__``; the work is done by
``serving.online.OnlineScorer``, the guards by ``serving.auth`` and ``serving.traffic``.

A service that cannot start (no champion, a damaged bundle or snapshot, auth disabled on a
public interface) logs one line saying why and stops the whole server, instead of letting
BentoML restart the worker forever while /healthz hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from http import HTTPStatus
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI

from serving.account_history import AccountTimeline, history_response, service_store
from serving.auth import ApiKeyMiddleware, listening_addresses, refuse_open_service
from serving.batching import BATCH_SIZE_BUCKETS, Batcher
from serving.bento import declared_model, with_bento_model
from serving.contract import ApiContract
from serving.online import OnlineScorer
from serving.override_api import (
    OverrideRequest,
    OverrideResponse,
    delete_override,
    put_override,
)
from serving.request_features import RequestRejected
from serving.schemas import (
    AccountRequest,
    ExplainRequest,
    ExplainResponse,
    ModelInfo,
    ScoreRequest,
    ScoreResponse,
)
from serving.settings import ServingSettings, traffic_from_env, workers_from_env
from serving.traffic import RequestLimits, quiet_client_errors
from serving.ui import app as ui_app
from serving.ui import bind as bind_ui

logger = logging.getLogger("tiering.service")

# GET /model is a plain route; BentoML's own API routes are POST only.
model_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
# The rep pages (server-rendered HTML, their own session sign-in) beside the JSON API.
model_app.mount("/ui", ui_app)

EXIT_CANNOT_START = 3


class ApiError(BentoMLException):
    """A request that cannot be answered: a 4xx whose message names the field path and the
    rule."""

    def __init__(self, message: str, status: HTTPStatus) -> None:
        super().__init__(message, error_code=status)


def _stop_server(reason: str) -> None:
    """One clear line, then stop: the whole ``bentoml serve`` when this is one of its workers
    (so the server exits instead of restarting a worker that cannot start), else this
    process's caller gets the exception."""
    from bentoml._internal.context import server_context

    if server_context.worker_index is None:
        logger.error("tiering service cannot start: %s", reason)
        return
    parent = os.getppid()
    # Every worker loads the same bundle and fails the same way, and the server may restart a
    # worker before it stops: the first to claim this server's marker says why, once.
    if _first_to_say(parent):
        # Straight to the server's stderr: the worker is about to go, log handlers may not flush.
        print(f"error: tiering service cannot start: {reason}", file=sys.stderr, flush=True)
    if parent > 1:
        with contextlib.suppress(ProcessLookupError):
            os.kill(parent, signal.SIGTERM)
    os._exit(EXIT_CANNOT_START)


def _first_to_say(parent: int) -> bool:
    """Whether this worker is the first of server process ``parent`` to report (the marker is
    named by the server's pid and start time, so a later server with the same pid reports)."""
    try:
        started = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return True
    marker = Path(tempfile.gettempdir()) / f"tiering-cannot-start-{parent}-{started}"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    except OSError:
        return True
    return True


# Requests answered per model call (1 without batching): /metrics shows whether merging works.
batch_size_histogram = bentoml.metrics.Histogram(
    name="tiering_batch_size",
    documentation="Requests answered by one model call",
    labelnames=["endpoint"],
    buckets=BATCH_SIZE_BUCKETS,
)


@bentoml.service(name="account_tiering", traffic=traffic_from_env(), workers=workers_from_env())
@bentoml.asgi_app(model_app, path="/")
class TieringService:
    # Inside a Bento: the bundle and snapshot packed by `tiering build` (serving.bento).
    bento_model = declared_model()

    def __init__(self) -> None:
        quiet_client_errors()
        try:
            self.settings = with_bento_model(ServingSettings(), self.bento_model)
            refuse_open_service(self.settings, listening_addresses())
            self.scorer = OnlineScorer.from_settings(self.settings)
            self.history = service_store(self.settings.config)
            self.score_batcher = self._batcher(self.scorer.score_each, "score")
            self.explain_batcher = self._batcher(self.scorer.explain_each, "explain")
            api_key = self.settings.api_key
            bind_ui(
                self.scorer,
                self.history,
                None
                if self.settings.auth_disabled or api_key is None
                else api_key.get_secret_value(),
                self.settings.config,
            )
        # Whatever stops the service from starting (settings, registry, bundle, snapshot),
        # the answer is the same: say why in one line and exit.
        except Exception as exc:
            _stop_server(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
            raise

    def _batcher(self, compute: Any, endpoint: str) -> Batcher[Any, Any]:
        settings = self.settings
        return Batcher(
            compute,
            # Batching off: every request its own call (the same path, batches of one).
            max_size=settings.batch_max_size if settings.batching else 1,
            max_latency_ms=settings.batch_max_latency_ms if settings.batching else 0.0,
            observe=batch_size_histogram.labels(endpoint=endpoint).observe,
        )

    def __is_ready__(self) -> bool:
        """Not ready only while no account snapshot was ever readable although one is there;
        a bad replacement of a good one keeps the good one (and /model says so)."""
        return self.scorer.snapshots.ready

    @bentoml.api(route="/score", input_spec=ScoreRequest)
    async def score(self, accounts: list[AccountRequest], reasons: bool = True) -> ScoreResponse:
        """Score 1 to 1,000 accounts: by account_id (features from the account snapshot),
        by their own fields (a new account), or both (fields override the snapshot)."""
        limit = self.settings.max_accounts_per_request
        if len(accounts) > limit:
            raise ApiError(
                f"accounts: at most {limit} accounts per request, got {len(accounts)}",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        try:
            if len(accounts) == 1:
                # By id alone: the answer scored ahead for this snapshot, without the batcher's
                # thread (``OnlineScorer.score`` looks it up itself for many accounts).
                ready = self.scorer.answered(accounts, reasons=reasons)
                if ready is not None:
                    return ready
                answer: ScoreResponse = await self.score_batcher((accounts[0], reasons))
                return answer
            # A request of many accounts is a batch already.
            return await asyncio.to_thread(self.scorer.score, accounts, reasons=reasons)
        except RequestRejected as exc:
            raise ApiError(str(exc), exc.status) from None

    @bentoml.api(route="/explain", input_spec=ExplainRequest)
    async def explain(self, account: AccountRequest) -> ExplainResponse:
        """One account in full detail: every driver, ICP criteria, the tier rule, what would
        move it up a tier, and the playbook of its tier."""
        try:
            answer: ExplainResponse = await self.explain_batcher(account)
            return answer
        except RequestRejected as exc:
            raise ApiError(str(exc), exc.status) from None

    @model_app.get("/model", response_model=ModelInfo)
    def model(self) -> ModelInfo:
        """Model version, metrics, tier policy, the reference cut-offs and the snapshot in
        use (with why the file on disk is not, if it is not)."""
        return self.scorer.model_info()

    @model_app.get("/accounts/{account_id}/history", response_model=AccountTimeline)
    def account_history(self, account_id: str) -> AccountTimeline:
        """The account's tier in every recorded batch run, with why it changed."""
        return history_response(self.history, account_id)

    @model_app.put("/accounts/{account_id}/override", response_model=OverrideResponse)
    def set_override(self, account_id: str, body: OverrideRequest) -> OverrideResponse:
        """Set a rep override (tier 1-3, reason, by, optional until); the next batch run
        applies it after the policy."""
        snapshot = self.scorer.snapshots.current()
        ids = None if snapshot is None else snapshot.features.index
        return put_override(self.history, ids, account_id, body)

    @model_app.delete("/accounts/{account_id}/override", response_model=OverrideResponse)
    def clear_override(self, account_id: str, by: str = "") -> OverrideResponse:
        """Clear the account's override in force (``?by=NAME``); the record stays."""
        return delete_override(self.history, account_id, by)


# @bentoml.service turns the class into a Service object; mypy still sees the class.
# The first middleware added is the outermost: every error answer passes through the API
# contract (one error shape), then the key is checked before anything is read.
TieringService.add_asgi_middleware(ApiContract)  # type: ignore[attr-defined]
TieringService.add_asgi_middleware(ApiKeyMiddleware)  # type: ignore[attr-defined]
TieringService.add_asgi_middleware(RequestLimits)  # type: ignore[attr-defined]
