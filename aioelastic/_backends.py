"""Backends chosen by URL: the registry, and the trace sinks."""

from __future__ import annotations

from ._events import TraceSink
from ._memory_registry import MemoryRegistry
from ._registry import Registry
from ._urls import RegistryURL, TracingURL
from .tracing import create_sink

__all__ = ["create_registry", "create_trace_sink"]


def create_registry(url: RegistryURL) -> Registry:
    """A registry session object (not started) for ``url``."""
    if url.scheme == "memory":
        return MemoryRegistry(url)
    from ._zk_registry import ZooKeeperRegistry

    return ZooKeeperRegistry(url)


def create_trace_sink(url: TracingURL) -> TraceSink:
    """The sink for a tracing URL (PostgreSQL, SQLite, memory or log)."""
    return create_sink(url)
