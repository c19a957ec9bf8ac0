"""One multi-op for the registry writes of many jobs: the running marks of a tick's fires.

With a thousand jobs firing in the same second, each fire's running marks (and, when it ends,
their deletion) are a multi-op of their own: a registry round trip each. ``TransactionBatch``
sends a multi-op at once if nothing else is on its way, and those submitted while one is (the
rest of the fires of the tick) together as ONE multi-op, in submission order, giving each
submitter exactly the outcome it would have had alone:

- the combined multi-op succeeds: every submitter's ops were applied (a multi-op applies its
  ops in order, so this is what sending them one after the other would have done);
- it fails at an op (a multi-op is all or nothing: one job's conflicting create fails all):
  nothing was applied; the submitter of that op sends its multi-op on its own (so it gets its
  own outcome: success, or its own ``TransactionFailedError`` with the index into ITS ops) and
  the others are sent together again. Submitters of one multi-op touch disjoint paths (one
  touching a path an earlier one touches is sent on its own after them: two fires of one job),
  so their order among themselves does not matter;
- it fails otherwise (the session is lost, no answer): every submitter of it gets that error,
  as each would have got it alone; nothing is sent twice.

Submissions that do not fit one request together (``CHUNK_BUDGET``) are sent as several, in
order. A submitter cancelled before its ops are sent is left out (nothing of it is applied); one
cancelled after that stands as a request cancelled in flight does (the caller's cleanup handles
it as without the batch). One batch serves one registry session (``batch_of``), run by its
scheduler (``run``); without a running batch, transactions go to the registry directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from ._errors import SessionLostError, TransactionFailedError
from .registry._limits import CHUNK_BUDGET, check_request, transaction_size
from .registry._paths import validate_path
from .registry._protocol import Op, Registry

__all__ = ["TransactionBatch", "batch_of"]

#: Combined multi-ops a group may fail (each failure sends its culprit alone and the rest
#: together again) before the rest are sent each on its own.
_COMBINED_ATTEMPTS = 3

#: A flush's deadline (the registry's own request timeout normally ends it much earlier).
_FLUSH_DEADLINE = 30.0

# By the registry's id: a running batch holds its registry, so the id is not reused while the
# entry exists (a WeakKeyDictionary lookup, made twice per fire, costs a weak reference each).
_batches: dict[int, TransactionBatch] = {}


def batch_of(registry: Registry) -> TransactionBatch | None:
    """The running batch of ``registry``'s session, if its scheduler runs one."""
    batch = _batches.get(id(registry))
    return batch if batch is not None and batch.registry is registry else None


class _Submission:
    """One caller's multi-op; its future is True once applied by the batch, False if the
    caller must send it itself (the batch stopped before sending it)."""

    __slots__ = ("future", "ops", "size")

    def __init__(self, ops: Sequence[Op], size: int, future: asyncio.Future[bool]) -> None:
        self.ops = ops
        self.size = size
        self.future = future


class TransactionBatch:
    """Multi-ops on one registry session, sent together (see the module docstring)."""

    def __init__(self, registry: Registry, budget: int = CHUNK_BUDGET) -> None:
        self.registry = registry
        self._budget = budget
        self._queue: list[_Submission] = []
        self._taken: list[_Submission] = []  # being sent by the current flush
        self._direct = 0  # transactions sent at once by their callers, not answered yet
        self._wake: asyncio.Future[None] | None = None
        self._open = False
        self.flushes = 0
        """Combined sends so far (for tests and benchmarks)."""

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Send what is submitted until cancelled (then submissions go to the registry)."""
        loop = asyncio.get_running_loop()
        self._open = True
        _batches[id(self.registry)] = self
        task_status.started()
        try:
            while True:
                await anyio.lowlevel.checkpoint_if_cancelled()  # the flush below is shielded
                if not self._queue:
                    self._wake = loop.create_future()
                    await self._wake  # idle until a submission (cancelled with the scheduler)
                    self._wake = None
                self._taken = [s for s in self._queue if not s.future.done()]
                self._queue = []
                # Shielded: once taken, submissions get their real outcome even if the
                # scheduler is cancelled meanwhile (its shielded clears wait for them).
                with anyio.CancelScope(shield=True), anyio.move_on_after(_FLUSH_DEADLINE):
                    await self._flush(self._taken)
                self._fail(self._taken, f"no answer from the registry within {_FLUSH_DEADLINE}s")
                self._taken = []
        finally:
            self._open = False
            if _batches.get(id(self.registry)) is self:
                del _batches[id(self.registry)]
            self._fail(self._taken, "the transaction batch stopped mid-send")
            for sub in self._queue:  # never sent: their callers send them themselves
                if not sub.future.done():
                    sub.future.set_result(False)
            self._queue = self._taken = []

    async def transaction(self, ops: Sequence[Op]) -> None:
        """``registry.transaction(ops)``, sent together with those of other callers."""
        if not self._open or not ops:
            await self.registry.transaction(ops)
            return
        for op in ops:  # refused before anything is sent, as the registry's own would be
            validate_path(op.path)
        size = transaction_size(ops)
        check_request(size, f"transaction of {len(ops)} ops on {ops[0].path}")
        if not (self._queue or self._taken or self._direct):
            # Nothing else on its way: send at once (no loop pass lost waiting for the batch;
            # a completed item's failover intent is deleted as soon as without it). Callers
            # arriving meanwhile are batched behind it, sent in order after it.
            self._direct += 1
            try:
                await self.registry.transaction(ops)
            finally:
                self._direct -= 1
            return
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append(_Submission(ops, size, future))
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        # No deadline of its own: the flush that takes it has one (``_FLUSH_DEADLINE``).
        if not await future:
            await self.registry.transaction(ops)

    def _fail(self, subs: Sequence[_Submission], why: str) -> None:
        """Fail submissions whose outcome is unknown (they may have been applied)."""
        for sub in subs:
            if not sub.future.done():
                sub.future.set_exception(SessionLostError(f"{why}; outcome unknown"))

    async def _flush(self, subs: Sequence[_Submission]) -> None:
        """Send ``subs`` in groups that fit a request. A submission touching a path an earlier
        one of its group touches (two fires of one job, the later of which is bound to fail)
        is sent on its own after the groups, in order: it never fails the others' multi-op."""
        self.flushes += 1
        header = transaction_size(())
        group: list[_Submission] = []
        touched: set[str] = set()
        later: list[_Submission] = []
        later_paths: set[str] = set()
        size = header
        for sub in subs:
            paths = {op.path for op in sub.ops}
            if not (paths.isdisjoint(touched) and paths.isdisjoint(later_paths)):
                later.append(sub)
                later_paths |= paths
                continue
            n = sub.size - header
            if group and size + n > self._budget:
                await self._send(group)
                group, size = [], header
                touched = set()
            group.append(sub)
            touched |= paths
            size += n
        if group:
            await self._send(group)
        for sub in later:
            await self._send_alone(sub)

    async def _send(self, group: Sequence[_Submission]) -> None:
        """Send ``group`` (submissions on disjoint paths) as one multi-op; if one submission's
        op fails, that one is sent on its own (its own outcome) and the rest together again."""
        pending = [s for s in group if not s.future.done()]  # cancelled ones are left out
        failed = 0
        while len(pending) > 1:
            if failed == _COMBINED_ATTEMPTS:
                # Conflicts everywhere (an overloaded instance whose fires overlap): each
                # failure would resend the whole group, quadratic in round trips. Send every
                # submission on its own instead, all in flight at once.
                async with anyio.create_task_group() as tg:
                    for sub in pending:
                        tg.start_soon(self._send_alone, sub)
                return
            try:
                await self.registry.transaction([op for sub in pending for op in sub.ops])
            except TransactionFailedError as exc:  # nothing was applied
                failed += 1
                culprit = pending.pop(_owner(pending, exc.index))
                await self._send_alone(culprit)
                pending = [s for s in pending if not s.future.done()]
                continue
            except Exception as exc:  # the session, the connection: as for each alone
                for sub in pending:
                    if not sub.future.done():
                        sub.future.set_exception(exc)
                return
            for sub in pending:
                if not sub.future.done():
                    sub.future.set_result(True)
            return
        if pending:
            await self._send_alone(pending[0])

    async def _send_alone(self, sub: _Submission) -> None:
        if sub.future.done():
            return
        try:
            await self.registry.transaction(sub.ops)
        except Exception as exc:
            if not sub.future.done():
                sub.future.set_exception(exc)
            return
        if not sub.future.done():
            sub.future.set_result(True)


def _owner(subs: Sequence[_Submission], index: int) -> int:
    """Which submission holds op ``index`` of their combined ops (the last if out of range)."""
    start = 0
    for position, sub in enumerate(subs):
        start += len(sub.ops)
        if index < start:
            return position
    return len(subs) - 1
