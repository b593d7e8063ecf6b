"""Settings of the HTTP service, read from the environment (prefix ``TIERING_``).

The service is started by ``bentoml serve`` in its own process, so everything it needs comes
from environment variables rather than function arguments; ``tiering serve`` sets them.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Answers scored ahead per worker for a snapshot of at most this many accounts: about 3 KB and
# 0.3 ms of one core each with reasons, so about 150 MB and 15 s in the background at the ceiling.
DEFAULT_PRECOMPUTE_MAX_ACCOUNTS = 50_000

# Hard ceiling of one request: above it a caller should run batch scoring instead.
MAX_ACCOUNTS_PER_REQUEST = 1_000
# 1,000 accounts with every field take about 0.4 MB of JSON: 4 MiB leaves room, and stops a
# client from making the service buffer (and parse) hundreds of megabytes.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
# Scoring requests one worker holds at once (one computing in its thread, one queued) before it
# answers 503: a bounded queue keeps the latency of what is accepted bounded.
DEFAULT_MAX_CONCURRENCY = 2
# Single-account requests merged into one model call, and how long the first one waits for
# company: a call's fixed cost dwarfs its cost per account, so merging is where the throughput
# comes from; no wait by default (the next batch fills while the previous one computes).
DEFAULT_BATCH_MAX_SIZE = 32
DEFAULT_BATCH_MAX_LATENCY_MS = 0.0
DEFAULT_REQUEST_TIMEOUT_S = 10.0


def traffic_from_env() -> dict[str, float | int]:
    """BentoML's own traffic settings of the service, read when ``bentoml serve`` imports it.

    ``timeout`` cancels a request (504) that waits or computes too long; ``max_concurrency``
    is BentoML's hard ceiling on requests in flight (429 above it), set above the service's
    own limit so the service sheds load first, with a 503 and Retry-After.
    """
    limit = int(os.environ.get("TIERING_MAX_CONCURRENCY", default_max_concurrency()))
    timeout = float(os.environ.get("TIERING_REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT_S))
    return {"timeout": timeout, "max_concurrency": 2 * limit + 4}


def batching_from_env() -> bool:
    return os.environ.get("TIERING_BATCHING", "true").strip().lower() not in ("0", "false", "no")


def default_max_concurrency() -> int:
    """With batching a worker holds a batch being computed and the next one filling; without,
    one request computing and one queued."""
    if not batching_from_env():
        return DEFAULT_MAX_CONCURRENCY
    size = int(os.environ.get("TIERING_BATCH_MAX_SIZE", DEFAULT_BATCH_MAX_SIZE))
    return max(DEFAULT_MAX_CONCURRENCY, 2 * size)


def workers_from_env() -> int:
    """BentoML worker processes: one per core unless ``TIERING_WORKERS`` says otherwise."""
    return int(os.environ.get("TIERING_WORKERS", "") or os.cpu_count() or 1)


class ServingSettings(BaseSettings):
    """Where the model and the account snapshot come from, and who may call the service.

    ``TIERING_BUNDLE_DIR`` (a saved bundle folder) wins over ``TIERING_MODEL_URI`` (the
    MLflow registry); the registry is read through ``TIERING_TRACKING_URI``, else the
    config's ``[mlflow] tracking_uri``.
    """

    model_config = SettingsConfigDict(env_prefix="TIERING_", extra="ignore")

    config: Path | None = Field(
        default=None, description="TOML config of the deployment (MLflow, snapshot path, features)."
    )
    model_uri: str | None = Field(
        default=None,
        description="MLflow model URI; default models:/<registered_model>@champion from the config.",
    )
    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; default from the config."
    )
    bundle_dir: Path | None = Field(
        default=None, description="A saved bundle folder; overrides model_uri."
    )
    snapshot: Path | None = Field(
        default=None,
        description="Account snapshot Parquet written by batch scoring; default from the config.",
    )
    api_key: SecretStr | None = Field(
        default=None, description="The key callers send in the API key header."
    )
    api_key_header: str = "X-API-Key"
    auth_disabled: bool = Field(
        default=False,
        description="Serve without an API key. Local use only: tiers are internal data.",
    )
    max_accounts_per_request: int = Field(
        default=MAX_ACCOUNTS_PER_REQUEST, ge=1, le=MAX_ACCOUNTS_PER_REQUEST
    )
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES,
        ge=1024,
        description="Largest request body accepted; larger ones get 413.",
    )
    max_concurrency: int = Field(
        default_factory=default_max_concurrency,
        ge=1,
        description="Scoring requests in flight per worker; more get 503 with Retry-After "
        "(default 2, or twice the batch size with batching).",
    )
    batching: bool = Field(
        default=True,
        description="Merge concurrent single-account /score and /explain requests into one "
        "model call.",
    )
    batch_max_size: int = Field(
        default=DEFAULT_BATCH_MAX_SIZE, ge=1, description="Most requests merged into one call."
    )
    batch_max_latency_ms: float = Field(
        default=DEFAULT_BATCH_MAX_LATENCY_MS,
        ge=0,
        description="Longest the first request of a batch waits for others to join it. 0 (the "
        "default): a request reaching an idle worker is computed at once, and the requests "
        "that arrive while it computes form the next batch, so batches grow with the load "
        "and a lone request never waits.",
    )
    precompute_max_accounts: int = Field(
        default=DEFAULT_PRECOMPUTE_MAX_ACCOUNTS,
        ge=0,
        description="Score every account of a snapshot of at most this many accounts once, in "
        "the background, and answer requests that name accounts by id alone from it "
        "(serving.precomputed); larger snapshots, and requests with account fields, are "
        "computed per request. 0 turns it off.",
    )
    workers: int = Field(
        default_factory=workers_from_env,
        ge=1,
        description="BentoML worker processes (default: one per core).",
    )
    request_timeout: float = Field(
        default=DEFAULT_REQUEST_TIMEOUT_S,
        gt=0,
        description="Seconds a request may wait and compute before it is cancelled (504).",
    )
    retry_after_s: int = Field(
        default=1, ge=1, description="Retry-After of a 503 when the service is full."
    )

    @model_validator(mode="after")
    def _auth_is_configured(self) -> ServingSettings:
        if not self.auth_disabled and (self.api_key is None or not self.api_key.get_secret_value()):
            raise ValueError(
                "TIERING_API_KEY is not set: set it, or set TIERING_AUTH_DISABLED=true for local use only"
            )
        return self
