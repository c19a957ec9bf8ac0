"""The registry: the small surface of ZooKeeper the coordination code runs on, and its backends.

- :class:`Registry` — the protocol (``get``/``get_children``/``exists`` with one-shot watchers,
  ``create``/``set``/``delete``, multi-op ``transaction``, session state and listeners).
- :func:`create_registry` — a backend for a registry URL: :class:`ZooKeeperRegistry` for
  ``zookeeper://host:port,...`` or the embedded :class:`MemoryRegistry` for ``memory://name``.

Both backends share the path rules (ZooKeeper's), the packet limit and listener handling, so
code tested on the embedded registry behaves the same on ZooKeeper.
"""

from __future__ import annotations

from .._urls import RegistryURL
from ._memory import MemoryRegistry, MemoryStore
from ._protocol import (
    CheckOp,
    CreateOp,
    DeleteOp,
    Op,
    Registry,
    SessionEvent,
    SessionListener,
    SessionState,
    SetOp,
    Stat,
    Watcher,
    WatchEvent,
    WatchEventType,
)
from ._zookeeper import SESSION_LOSS_FRACTION, ZooKeeperRegistry

__all__ = [
    "SESSION_LOSS_FRACTION",
    "CheckOp",
    "CreateOp",
    "DeleteOp",
    "MemoryRegistry",
    "MemoryStore",
    "Op",
    "Registry",
    "SessionEvent",
    "SessionListener",
    "SessionState",
    "SetOp",
    "Stat",
    "WatchEvent",
    "WatchEventType",
    "Watcher",
    "ZooKeeperRegistry",
    "create_registry",
]


def create_registry(url: RegistryURL) -> Registry:
    """A registry session object (not started) for ``url``."""
    if url.scheme == "memory":
        return MemoryRegistry(url)
    return ZooKeeperRegistry(url)
