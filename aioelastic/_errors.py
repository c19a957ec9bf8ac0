"""Every exception class aioelastic defines (the public ones are exported by ``aioelastic``)."""

from __future__ import annotations

__all__ = [
    "AioelasticError",
    "BadVersionError",
    "ConfigError",
    "DistributedOnceTimeoutError",
    "InstanceIdConflictError",
    "ItemCancelled",
    "JobNotFoundError",
    "NoNodeError",
    "NodeExistsError",
    "NotEmptyError",
    "NotFoundError",
    "OperationRefusedError",
    "PacketTooLargeError",
    "RegistryError",
    "ScriptJobError",
    "SessionLostError",
    "TargetImportError",
    "TimeDiffError",
    "TraceQueryError",
    "TraceUnreachableError",
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


class NotFoundError(AioelasticError, LookupError):
    """A server, instance or item named in an operation does not exist."""


class JobNotFoundError(NotFoundError, KeyError):
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


# -- coordination, operations, jobs --


class TimeDiffError(AioelasticError):
    """The local clock differs from the registry's by more than ``max_time_diff_seconds``."""


class OperationRefusedError(AioelasticError):
    """The operation would be unsafe now (e.g. removing a job that instances still run)."""


class ScriptJobError(AioelasticError):
    """A script job exited with a non-zero status; the message holds the tail of stderr."""


class DistributedOnceTimeoutError(AioelasticError, TimeoutError):
    """Not every item of a fire started (or completed) across the cluster within the timeout."""


class ItemCancelled(AioelasticError):
    """The item was cancelled: its instance lost its registry session, or shutdown's grace
    period ran out."""


# -- command line --


class TargetImportError(AioelasticError):
    """The user's module raised while being imported (its traceback is in ``error``)."""

    def __init__(self, module: str, error: BaseException) -> None:
        super().__init__(f"importing {module!r} failed (traceback above)")
        self.error = error


class TraceQueryError(AioelasticError):
    """The database refused a trace query (exit code 1)."""


class TraceUnreachableError(Exception):
    """The trace database could not be reached (exit code 4)."""
