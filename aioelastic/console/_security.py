"""Who is asking (HTTP Basic or bearer tokens from ``ConsoleSettings``), signed cookies, CSRF."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

from pydantic import SecretStr

from ._settings import ConsoleSettings

__all__ = ["Principal", "Signer", "authenticate"]

Role = Literal["viewer", "operator"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: ``name`` goes into the audit log."""

    name: str
    role: Role

    @property
    def can_act(self) -> bool:
        return self.role == "operator"


def _match(given: str, secret: SecretStr) -> bool:
    return hmac.compare_digest(given.encode(), secret.get_secret_value().encode())


def _basic(header: str) -> tuple[str, str] | None:
    try:
        raw = base64.b64decode(header, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = raw.partition(":")
    return (user, password) if sep else None


def authenticate(settings: ConsoleSettings, authorization: str | None) -> Principal | None:
    """The caller's principal, or None (then the console answers 401). With no credential
    configured everyone is an anonymous viewer."""
    if settings.open_access:
        return Principal("anonymous", "viewer")
    scheme, _, value = (authorization or "").partition(" ")
    scheme = scheme.lower()
    if scheme == "basic" and (pair := _basic(value.strip())) is not None:
        user, password = pair
        for role, users in (("operator", settings.operators), ("viewer", settings.viewers)):
            secret = users.get(user)
            if secret is not None and _match(password, secret):
                return Principal(user, role)  # type: ignore[arg-type]
    elif scheme == "bearer":
        token = value.strip()
        for role, tokens in (
            ("operator", settings.operator_tokens),
            ("viewer", settings.viewer_tokens),
        ):
            for name, secret in tokens.items():
                if _match(token, secret):
                    return Principal(name, role)  # type: ignore[arg-type]
    return None


class Signer:
    """HMAC-SHA256 signatures for the console's cookies."""

    def __init__(self, key: SecretStr | None) -> None:
        self._key = key.get_secret_value().encode() if key else secrets.token_bytes(32)

    def sign(self, value: str) -> str:
        mac = hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()
        return f"{value}.{mac}"

    def unsign(self, signed: str | None) -> str | None:
        """The value of a cookie this signer made, or None (absent, forged or altered)."""
        if not signed:
            return None
        value, _, mac = signed.rpartition(".")
        expected = hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()
        return value if value and hmac.compare_digest(mac, expected) else None

    @staticmethod
    def new_token() -> str:
        return secrets.token_urlsafe(24)
