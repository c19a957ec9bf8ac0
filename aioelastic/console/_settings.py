"""Console settings: every field can come from an ``AIOELASTIC_CONSOLE_<FIELD>`` variable.

Credentials are maps of name to secret, given as JSON in the environment, e.g.
``AIOELASTIC_CONSOLE_OPERATORS='{"alice": "s3cret"}'`` (HTTP Basic) or
``AIOELASTIC_CONSOLE_OPERATOR_TOKENS='{"deploy-bot": "long-random-token"}'`` (``Authorization:
Bearer``). There is no default password: with no credential at all the console is read-only
for everyone (viewer role, no action possible).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .._errors import ConfigError

__all__ = ["ConsoleSettings"]


class ConsoleSettings(BaseSettings):
    """Who may see and act, where to listen, and how long registry calls may take."""

    model_config = SettingsConfigDict(env_prefix="AIOELASTIC_CONSOLE_", frozen=True, extra="forbid")

    bind: str = "127.0.0.1:8080"
    """``host:port`` the ``aioelastic console`` command listens on (loopback by default)."""
    viewers: dict[str, SecretStr] = Field(default_factory=dict)
    """HTTP Basic users who may look (name → password)."""
    operators: dict[str, SecretStr] = Field(default_factory=dict)
    """HTTP Basic users who may also act (name → password)."""
    viewer_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    """Bearer tokens that may look (name shown in the audit log → token)."""
    operator_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    """Bearer tokens that may also act."""
    secret_key: SecretStr | None = None
    """Signs the CSRF and message cookies; default: random per process (set it when several
    console processes serve one address)."""
    registry_timeout: float = Field(default=5.0, gt=0, le=300)
    """Seconds a page waits for the registry before showing the outage banner."""
    trace_timeout: float = Field(default=5.0, gt=0, le=300)
    """Seconds a page waits for the trace database before showing the outage banner."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "console"
            raise ConfigError(field, first.get("input"), first["msg"]) from None

    @field_validator("viewers", "operators", "viewer_tokens", "operator_tokens")
    @classmethod
    def _no_empty(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in v.items():
            if not name or ":" in name or not secret.get_secret_value():
                raise ValueError("names must be non-empty without ':', secrets non-empty")
        return v

    @property
    def read_only(self) -> bool:
        """True when no operator credential is configured."""
        return not (self.operators or self.operator_tokens)

    @property
    def open_access(self) -> bool:
        """True when no credential at all is configured (anyone may look, nobody may act)."""
        return not (self.viewers or self.operators or self.viewer_tokens or self.operator_tokens)
