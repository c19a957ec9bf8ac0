"""Exceptions raised by aioelastic."""

from __future__ import annotations

__all__ = [
    "AioelasticError",
    "BadVersionError",
    "ConfigError",
    "InstanceIdConflictError",
    "JobNotFoundError",
    "NoNodeError",
    "NodeExistsError",
    "NotEmptyError",
    "PacketTooLargeError",
    "RegistryError",
    "SessionLostError",
    "TransactionFailedError",
]


class AioelasticError(Exception):
    """Base class of every error aioelastic raises on purpose."""


class ConfigError(AioelasticError, ValueError):
    """A configuration value is invalid; the message names the field and the bad value."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}={value!r}: {reason}")


class JobNotFoundError(AioelasticError, KeyError):
    """No job with that name is registered."""

    def __str__(self) -> str:
        return f"no job named {self.args[0]!r}"


class RegistryError(AioelasticError):
    """A registry (ZooKeeper or embedded) request failed."""


class NoNodeError(RegistryError):
    """The node does not exist."""


class NodeExistsError(RegistryError):
    """The node already exists."""


class BadVersionError(RegistryError):
    """The node's version is not the expected one."""


class NotEmptyError(RegistryError):
    """The node has children and cannot be deleted without ``recursive=True``."""


class SessionLostError(RegistryError):
    """The registry session is not usable (suspended too long, expired or closed)."""


class TransactionFailedError(RegistryError):
    """A multi-op failed as a whole; ``index`` is the first failing op, ``cause`` its error."""

    def __init__(self, index: int, cause: RegistryError) -> None:
        self.index = index
        self.cause = cause
        super().__init__(f"transaction failed at op {index}: {cause!r}")


class InstanceIdConflictError(RegistryError):
    """Another session (another process with the same instance id) holds this instance's
    node in the registry."""


class PacketTooLargeError(RegistryError):
    """A request would exceed ZooKeeper's packet limit (``jute.maxbuffer``); it was not sent."""
