"""Fencing that reaches job code: each item run's ``ctx.lost`` signal, set the moment this
instance loses its claim on the item (session lost, reshard moved the item away, the scheduler
stopping), always before the item is cancelled."""

from __future__ import annotations

import anyio

from ._layout import JobPaths
from .registry._view import View

__all__ = ["ClaimLost", "Ownerships", "fencing_token"]


class ClaimLost:
    """Event-like: set once this instance no longer owns the item (``await lost.wait()``,
    ``lost.is_set()``); ``reason`` says why. Job code that writes to an external system checks
    it right before committing (``ctx.still_owned()``), and stops early when it is set."""

    __slots__ = ("_event", "_set", "reason")

    def __init__(self) -> None:
        self._set = False
        self._event: anyio.Event | None = None  # made on first wait: a context may outlive loops
        self.reason: str | None = None

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        if self._set:
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()

    def _revoke(self, reason: str) -> None:
        if self._set:
            return
        self._set, self.reason = True, reason
        if self._event is not None:
            self._event.set()

    def __repr__(self) -> str:
        return f"ClaimLost({self.reason!r})" if self._set else "ClaimLost(owned)"


def fencing_token(task_id: str, session_id: int) -> str:
    """The run's fencing token: its task id and the registry session that holds its claim."""
    return f"{task_id}@-@{session_id:x}"


class Ownerships:
    """The claims of the item runs in progress on this instance, and what revokes them."""

    def __init__(self, paths: JobPaths, instance_id: str) -> None:
        self._paths = paths
        self._me = instance_id
        # Each run's signal -> (item, failover run?): a failover run is claimed by the item's
        # failover node, not its owner node.
        self._claims: dict[ClaimLost, tuple[int, bool]] = {}

    def hold(self, item: int, *, failover: bool) -> ClaimLost:
        """A new run of ``item`` starts: its signal (release it when the run ends)."""
        lost = ClaimLost()
        self._claims[lost] = (item, failover)
        return lost

    def release(self, lost: ClaimLost) -> None:
        self._claims.pop(lost, None)
        if not self._claims:
            self._claims = {}  # an emptied dict keeps its table: 0.2 KiB per idle job

    def revoke_all(self, reason: str) -> None:
        """Every claim is lost (session lost, scheduler stopping)."""
        for lost in list(self._claims):
            lost._revoke(reason)

    def revoke_moved(self, view: View) -> None:
        """Revoke the claims on items that the registry now gives to another instance: a
        committed reshard moved the item (a normal run), or another instance holds its failover
        node (a failover run)."""
        if not view.fresh:
            return  # an outage: nothing is known to have moved
        for lost, (item, failover) in list(self._claims.items()):
            holder = self._holder(view, item, failover)
            if holder != self._me and not lost.is_set():
                where = f"instance {holder}" if holder else "no instance"
                lost._revoke(f"item {item} now belongs to {where} (resharded)")

    def _holder(self, view: View, item: int, failover: bool) -> str | None:
        raw = view.get(
            self._paths.item_failover(item) if failover else self._paths.item_instance(item)
        )
        return raw.decode("utf-8", "replace").strip() if raw is not None else None

    def relevant(self, path: str) -> bool:
        """The view changes that can move a claimed item."""
        return (
            bool(self._claims)
            and path.startswith(self._paths.sharding + "/")
            and path.endswith(("/instance", "/failover"))
        )

    async def watch(self, view: View) -> None:
        """Revoke moved claims as the view changes (a loop of the job's runner)."""
        changes = view.subscribe(self.relevant)
        while True:
            await changes.wait(60.0)
            self.revoke_moved(view)
