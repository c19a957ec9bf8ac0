"""What both registry backends share: the session listener list and guarded notification."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

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
        """Call each watcher once per event, in order (a watcher with ``many`` gets all of its
        events in one call: a multi-op's, say); one that raises is logged, the rest go on."""
        batches: dict[int, tuple[Watcher, list[WatchEvent]]] = {}
        for watcher, event in fired:
            batch = batches.get(id(watcher))
            if batch is None:
                batches[id(watcher)] = (watcher, [event])
            else:
                batch[1].append(event)
        for watcher, events in batches.values():
            if len(events) > 1:
                # A watcher on a node's data and children hears its deletion once: an event
                # equal to the one just before it is dropped. Only adjacent ones: a node
                # created, deleted and created again (ZooKeeper's events carry no data, so the
                # two creations are equal) must reach the watcher as all three.
                events[:] = _without_repeats(events)
            many = getattr(watcher, "many", None)
            if many is not None and len(events) > 1:
                _call_watcher(many, events)
            else:
                for event in events:  # each on its own: one failing event spoils no other
                    _call_watcher(watcher, event)


def _without_repeats(events: list[WatchEvent]) -> list[WatchEvent]:
    kept = [events[0]]
    for event in events[1:]:
        last = kept[-1]
        if event.type is last.type and event.path == last.path and event == last:
            continue
        kept.append(event)
    return kept


def _call_watcher(watcher: Callable[[Any], None], arg: object) -> None:
    try:
        watcher(arg)
    except Exception:
        log.exception("watcher %r failed on %s", watcher, arg)
