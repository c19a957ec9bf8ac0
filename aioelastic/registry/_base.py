"""What both registry backends share: the session listener list and guarded notification."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .._observer import hook_name
from ._protocol import SessionEvent, SessionListener, Watcher, WatchEvent

__all__ = ["ListenerBase"]

log = logging.getLogger("aioelastic.registry")


class ListenerBase:
    """Session listeners, and calls into listeners and watchers that never let one raise."""

    def __init__(self) -> None:
        self._listeners: list[SessionListener] = []

    def add_session_listener(self, listener: SessionListener) -> None:
        self._listeners.append(listener)

    def remove_session_listener(self, listener: SessionListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify_session(self, event: SessionEvent) -> None:
        """Call every listener with ``event``, each on its own: one that raises is logged with
        its name and the others (and the backend's session handling) go on."""
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception(
                    "session listener %s raised on %s; ignored",
                    hook_name(listener),
                    event.state.value,
                )

    @staticmethod
    def _notify_watchers(fired: Iterable[tuple[Watcher, WatchEvent]]) -> None:
        """Call each watcher once per event; one that raises is logged and the rest go on."""
        # A watcher on a node's data and children hears its deletion once. A dict keeps the
        # order (a list's `in` made a multi-op of thousands of creates quadratic: seconds).
        unique = dict.fromkeys(fired)
        for watcher, event in unique:
            try:
                watcher(event)
            except Exception:
                log.exception("watcher %r failed on %s", watcher, event)
