"""A read-only ``Registry`` over a watch-maintained ``TreeView``: ``Operations`` reads the
namespace from the local copy (no request per node), so the overview of 500 jobs costs no
registry round trip, and it changes only when a watch says the registry did."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack

from .._errors import NoNodeError, OperationRefusedError
from ..registry._protocol import (
    Op,
    ReadResult,
    Registry,
    SessionListener,
    SessionState,
    Stat,
    Watcher,
)
from ..registry._view import TreeView

__all__ = ["ViewRegistry"]


class ViewRegistry:
    """Reads from ``view``; every write is refused (writes go through the real session)."""

    def __init__(self, view: TreeView, session: Registry) -> None:
        self._view = view
        self._session = session

    @property
    def session_state(self) -> SessionState:
        return self._session.session_state

    @property
    def session_id(self) -> int:
        return self._session.session_id

    @property
    def request_count(self) -> int:
        return 0

    async def start(self, exit_stack: AsyncExitStack) -> None:
        return None

    def add_session_listener(self, listener: SessionListener) -> None:
        self._session.add_session_listener(listener)

    def remove_session_listener(self, listener: SessionListener) -> None:
        self._session.remove_session_listener(listener)

    async def get(self, path: str, watcher: Watcher | None = None) -> tuple[bytes, Stat]:
        data, stat = self._view.get(path), self._view.stat(path)
        if data is None or stat is None:
            raise NoNodeError(path)
        return data, stat

    async def get_children(self, path: str, watcher: Watcher | None = None) -> list[str]:
        if not self._view.exists(path):
            raise NoNodeError(path)
        return self._view.children(path)

    async def exists(self, path: str, watcher: Watcher | None = None) -> Stat | None:
        return self._view.stat(path)

    def _refuse(self) -> OperationRefusedError:
        return OperationRefusedError("the console's registry snapshot is read-only")

    async def create(
        self,
        path: str,
        data: bytes = b"",
        *,
        ephemeral: bool = False,
        sequential: bool = False,
        make_parents: bool = False,
    ) -> str:
        raise self._refuse()

    async def set(self, path: str, data: bytes, *, version: int = -1) -> Stat:
        raise self._refuse()

    async def delete(self, path: str, *, version: int = -1, recursive: bool = False) -> None:
        raise self._refuse()

    async def transaction(self, ops: Sequence[Op]) -> None:
        raise self._refuse()

    async def watch_tree(self, path: str, watcher: Watcher) -> bool:
        return False  # the snapshot changes only with the view it reads

    async def unwatch_tree(self, path: str, watcher: Watcher) -> None:
        return None

    async def read_many(
        self, paths: Sequence[str], on_result: ReadResult, *, children: Sequence[str] = ()
    ) -> None:
        listed = set(children)
        for path in paths:
            data, stat = self._view.get(path), self._view.stat(path)
            kids = self._view.children(path) if path in listed and stat is not None else None
            on_result(path, data, stat, kids)

    def abandon_session(self, reason: str) -> None:
        return None
