"""How a registry hands events to watchers: each (watcher, event) once, in order, one failing
watcher not stopping the rest, and in linear time (a multi-op of thousands of creates fires
thousands of events at once: a quadratic dedup blocked the loop for seconds)."""

from __future__ import annotations

import pytest

from aioelastic.registry import WatchEvent, WatchEventType
from aioelastic.registry._base import ListenerBase
from aioelastic.registry._protocol import Watcher


def test_each_pair_is_delivered_once_and_each_watcher_in_order() -> None:
    got: list[tuple[str, str]] = []
    a = WatchEvent(WatchEventType.DELETED, "/n")
    b = WatchEvent(WatchEventType.CREATED, "/m")

    def one(event: WatchEvent) -> None:
        got.append(("one", event.path))

    def two(event: WatchEvent) -> None:
        got.append(("two", event.path))

    ListenerBase._notify_watchers([(one, a), (two, a), (one, a), (one, b), (two, a)])
    # Each watcher hears its events once and in order (a watcher's events may be handed over
    # together: one watcher's before the next one's).
    assert [p for w, p in got if w == "one"] == ["/n", "/m"]
    assert [p for w, p in got if w == "two"] == ["/n"]


def test_a_failing_watcher_does_not_stop_the_others() -> None:
    got: list[WatchEvent] = []

    def bad(event: WatchEvent) -> None:
        raise RuntimeError("boom")

    ListenerBase._notify_watchers(
        [
            (bad, WatchEvent(WatchEventType.CREATED, "/a")),
            (got.append, WatchEvent(WatchEventType.CREATED, "/b")),
        ]
    )
    assert got == [WatchEvent(WatchEventType.CREATED, "/b")]


@pytest.mark.timeout(20)  # linear: well under a second; quadratic (the old dedup): hours
def test_tens_of_thousands_of_events_are_delivered_without_a_quadratic_dedup() -> None:
    got: list[WatchEvent] = []
    events = [WatchEvent(WatchEventType.WRITTEN, f"/j/sharding/{i}/running") for i in range(50_000)]
    watcher: Watcher = got.append
    ListenerBase._notify_watchers([(watcher, e) for e in events])
    assert got == events


def test_a_watcher_failing_on_one_event_still_hears_its_others() -> None:
    got: list[str] = []

    def picky(event: WatchEvent) -> None:
        if event.path == "/bad":
            raise RuntimeError("boom")
        got.append(event.path)

    events = [WatchEvent(WatchEventType.CREATED, p) for p in ("/a", "/bad", "/b")]
    ListenerBase._notify_watchers([(picky, e) for e in events])
    assert got == ["/a", "/b"]


def test_a_generator_of_pairs_with_an_unhashable_watcher_loses_none() -> None:
    got: list[str] = []

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, event: WatchEvent) -> None:
            got.append(event.path)

    watcher = Unhashable()
    events = [WatchEvent(WatchEventType.CREATED, p) for p in ("/a", "/b", "/a")]
    ListenerBase._notify_watchers((watcher, e) for e in events)
    assert got == ["/a", "/b", "/a"]


def test_unequal_events_on_one_path_are_all_delivered_and_equal_ones_once() -> None:
    # A multi-op that creates, deletes and re-creates a node: every event reaches a watcher;
    # only an equal repeat (its data watch and child watch both hearing a deletion) is dropped.
    got: list[WatchEvent] = []
    watcher: Watcher = got.append
    first = WatchEvent(WatchEventType.CREATED, "/n", b"1")
    gone = WatchEvent(WatchEventType.DELETED, "/n")
    again = WatchEvent(WatchEventType.CREATED, "/n", b"2")
    repeat = WatchEvent(WatchEventType.DELETED, "/n")
    ListenerBase._notify_watchers([(watcher, e) for e in (first, gone, repeat, again)])
    assert got == [first, gone, again]


def test_a_node_deleted_created_and_deleted_again_reaches_the_watcher_as_all_three() -> None:
    """ZooKeeper's notifications carry no data: the two deletions are equal events. Delivered
    together (one read from the socket), the watcher must still hear all three, or a view ends
    believing the node exists (a reshard flag seen as pending for good)."""
    got: list[WatchEvent] = []
    watcher: Watcher = got.append
    flag = "/ns/job/leader/sharding/necessary"
    events = [
        WatchEvent(WatchEventType.DELETED, flag),
        WatchEvent(WatchEventType.CREATED, flag),
        WatchEvent(WatchEventType.DELETED, flag),
    ]
    ListenerBase._notify_watchers([(watcher, e) for e in events])
    assert got == events
