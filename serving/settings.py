"""Settings of the HTTP service, read from the environment (prefix ``TIERING_``).

The service is started by ``bentoml serve`` in its own process, so everything it needs comes
from environment variables rather than function arguments; ``tiering serve`` sets them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Hard ceiling of one request: above it a caller should run batch scoring instead.
MAX_ACCOUNTS_PER_REQUEST = 1_000


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

    @model_validator(mode="after")
    def _auth_is_configured(self) -> ServingSettings:
        if not self.auth_disabled and (self.api_key is None or not self.api_key.get_secret_value()):
            raise ValueError(
                "TIERING_API_KEY is not set: set it, or set TIERING_AUTH_DISABLED=true for local use only"
            )
        return self
