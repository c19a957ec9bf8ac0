"""Running, misfire and failover marks of one job's items, as one instance writes them.

A running mark (``sharding/{i}/running``) is ephemeral and created, for all items of a fire, in
one multi-op: a second instance (or a second fire) trying to run an item that is running fails
atomically and misfires instead. With failover on, the same multi-op writes each item's
persistent intent (``leader/failover/items/{i}``); a takeover is the ephemeral
``sharding/{i}/failover`` mark. Marks that could not be deleted (the registry unreachable, the
session alive) are kept in the uncleared set and deleted once it is back.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
from collections.abc import Callable, Mapping, Sequence

import anyio

from ._batch import batch_of
from ._config import JobConfig
from ._errors import NodeExistsError, NoNodeError, RegistryError, TransactionFailedError
from ._layout import JobPaths
from .registry._limits import batch_items, chunk_ops
from .registry._protocol import CreateOp, DeleteOp, Op, Registry, SessionState, SetOp
from .registry._view import View
from .tracing._events import JobExecutionEvent

__all__ = ["RunMarks", "create_all"]

log = logging.getLogger("aioelastic.coordination")


class _Role(enum.Enum):
    """What an op of ``mark_running``'s multi-op is for (its failure means something else)."""

    RUNNING = "running"
    INTENT = "intent"
    MISFIRE = "misfire"
    CLAIM = "claim"


async def create_all(registry: Registry, ops: Sequence[CreateOp]) -> None:
    """Create the nodes of ``ops`` in one multi-op; if some exist already or lost their
    parent (a stale view, a timed-out fire's leftovers), create the rest one by one."""
    try:
        await registry.transaction(ops)
    except TransactionFailedError:
        for op in ops:
            with contextlib.suppress(NodeExistsError, NoNodeError):
                await registry.create(op.path, op.data)


class _ClearBatch:
    """Marks to delete in the next clear, and its outcome for those who wait on it."""

    __slots__ = ("_done", "error", "paths")

    def __init__(self) -> None:
        self.paths: list[str] = []
        self._done: anyio.Event | None = None  # made when first used: most batches never are
        self.error: RegistryError | None = None

    @property
    def done(self) -> anyio.Event:
        if self._done is None:
            self._done = anyio.Event()
        return self._done


class RunMarks:
    """The marks this instance writes for one job (reads come from the job's view)."""

    def __init__(
        self,
        registry: Registry,
        paths: JobPaths,
        view: View,
        instance_id: str,
        config: Callable[[], JobConfig],
    ) -> None:
        self.registry = registry
        self.paths = paths
        self.view = view
        self.instance_id = instance_id
        self._config = config  # the job's current config (it changes when the stored one does)
        self._me = instance_id.encode()
        self._uncleared: dict[int, set[str]] = {}  # session id -> marks still to delete
        self._clearing = False  # a clear is in flight: later ones join ``_next_clear``
        self._next_clear = _ClearBatch()

    def _misfired(self, item: int) -> bool:
        return self.view.exists(self.paths.item_misfire(item))

    def running_elsewhere(self, item: int) -> bool:
        """The view shows a running mark of another instance (our own are tracked locally:
        the view may still show one we have just deleted)."""
        raw = self.view.get(self.paths.item_running(item))
        return raw is not None and raw != self._me

    async def mark_running(
        self,
        items: Sequence[int],
        *,
        misfire_run: bool = False,
        runs: Mapping[int, JobExecutionEvent] | None = None,
        claims: Sequence[str] = (),
    ) -> bool:
        """Atomically create the running marks (and clear misfire marks) of ``items``.

        False if any item is already running (here or on another instance): nothing is marked.
        A misfire re-run (``misfire_run``) must also consume every item's misfire mark in the
        same multi-op, so two instances (or a stale view) cannot both re-run a misfire. With
        failover on, a persistent intent (``leader/failover/items/{i}``: runner and session) is
        written in the same multi-op: if this instance dies mid-run, survivors find it (with
        the item's trace event from ``runs``, so they can complete its trace row). ``claims``:
        nodes a requested fire creates in the same multi-op (its items' ``ran`` claims), so an
        item is claimed exactly when it runs; False if one exists (claimed elsewhere) or its
        request is gone.
        """
        runs = runs or {}
        intents: dict[int, Op] = {}
        if self._config().failover:
            data = {i: self._intent(runs.get(i)) for i in items}
            for i in items:
                path = self.paths.failover_item(i)
                intents[i] = (
                    SetOp(path, data[i]) if self.view.exists(path) else CreateOp(path, data[i])
                )
        misfired = list(items) if misfire_run else [i for i in items if self._misfired(i)]
        for _ in range(2 * len(items) + 2):
            planned: list[tuple[Op, _Role, int]] = [
                (CreateOp(self.paths.item_running(i), self._me, ephemeral=True), _Role.RUNNING, i)
                for i in items
            ]
            planned += [(op, _Role.INTENT, i) for i, op in intents.items()]
            planned += [(DeleteOp(self.paths.item_misfire(i)), _Role.MISFIRE, i) for i in misfired]
            planned += [(CreateOp(path, self._me), _Role.CLAIM, -1) for path in claims]
            # Misfire re-runs and claims conflict by design (another re-run, another instance):
            # sent on their own, so that they never fail the batch of the other jobs' fires.
            batched = not misfired and not claims
            try:
                await self._transaction_all_or_nothing([op for op, _, _ in planned], batched)
                return True
            except TransactionFailedError as exc:
                op, role, item = planned[exc.index]
                if role is _Role.MISFIRE and isinstance(exc.cause, NoNodeError):
                    if misfire_run:
                        return False  # another re-run consumed the mark
                    misfired.remove(item)  # a mark the view still showed
                    continue
                if role is _Role.INTENT:
                    # The view was stale about an intent node: flip create/set and retry.
                    flip = SetOp if isinstance(op, CreateOp) else CreateOp
                    intents[item] = flip(op.path, data[item])
                    continue
                if isinstance(exc.cause, NodeExistsError | NoNodeError):
                    return False
                raise
        return False

    async def claim(self, claims: Sequence[str]) -> bool:
        """Create a requested fire's ``claims`` all or none (a job without running marks);
        False if one exists or its request is gone."""
        try:
            await self._transaction_all_or_nothing(
                [CreateOp(path, self._me) for path in claims], batched=False
            )
        except TransactionFailedError as exc:
            if isinstance(exc.cause, NodeExistsError | NoNodeError):
                return False
            raise
        return True

    async def clear_running(
        self, items: Sequence[int], *, failover_run: bool = False, keep_intents: bool = False
    ) -> None:
        """The run of ``items`` is over: delete their running marks and, with failover, the
        failover intents (unless ``keep_intents``: the items were cancelled, not completed)
        and, for a takeover run, this instance's takeover marks, in one multi-op.

        If the registry cannot be reached now (e.g. the server restarts) but the session may
        live on, the marks are remembered and deleted by ``retry_clears`` once it is back:
        a surviving session's running mark would otherwise block the item forever."""
        if not items or self.registry.session_state is SessionState.LOST:
            return  # a lost session's ephemerals are gone with it; intents stay for failover
        paths: list[str] = [self.paths.item_running(i) for i in items]
        if (self._config().failover or failover_run) and not keep_intents:
            paths += [self.paths.failover_item(i) for i in items]
        if failover_run:
            paths += [self.paths.item_failover(i) for i in items]
        session = self.registry.session_id
        try:
            await self._delete_coalesced(paths)
        except RegistryError as exc:
            log.warning(
                "%s: clearing marks failed (%s); retrying when connected", self.paths.job, exc
            )
            self._uncleared.setdefault(session, set()).update(paths)

    async def retry_clears(self) -> None:
        """Delete marks a failed ``clear_running`` left, if their session still lives."""
        session = self.registry.session_id
        for old in [s for s in self._uncleared if s != session]:
            del self._uncleared[old]  # that session ended: its ephemerals went with it
        paths = self._uncleared.pop(session, set())
        if paths:
            try:
                await self._delete_all(sorted(paths))
            except RegistryError:
                self._uncleared.setdefault(session, set()).update(paths)
                raise

    def clears_pending(self) -> bool:
        return bool(self._uncleared)

    async def _delete_coalesced(self, paths: Sequence[str]) -> None:
        """``_delete_all``, with the clears that arrive while one is in flight (the items of
        one fire completing together) sent together as the next multi-op."""
        if self._clearing:
            batch = self._next_clear
            batch.paths += paths
            with anyio.fail_after(30):
                await batch.done.wait()
            if batch.error is not None:
                raise batch.error
            return
        self._clearing = True
        try:
            await self._delete_all(paths)
        finally:
            try:
                while self._next_clear.paths:
                    batch, self._next_clear = self._next_clear, _ClearBatch()
                    try:
                        await self._delete_all(batch.paths)
                    except RegistryError as exc:
                        batch.error = exc
                    finally:
                        batch.done.set()
            finally:
                self._clearing = False
                if self._next_clear.paths:  # cancelled mid-way: fail the waiters
                    batch, self._next_clear = self._next_clear, _ClearBatch()
                    batch.error = RegistryError("clearing marks was interrupted")
                    batch.done.set()

    async def _delete_all(self, paths: Sequence[str]) -> None:
        for chunk in chunk_ops([DeleteOp(p) for p in paths]):
            try:
                await self._batched(chunk)
            except TransactionFailedError:
                for op in chunk:  # some were not there (a stale view): delete the rest
                    try:
                        await self.registry.delete(op.path)
                    except NoNodeError:
                        pass

    async def mark_misfire(self, items: Sequence[int], fire: bytes = b"") -> None:
        """Create the misfire marks of ``items`` (at once, so views never see part of them)
        holding ``fire``, the key of the fire that misfired (for dependent jobs: the re-run
        completes that fire, wherever it runs); a mark that exists takes the later key, as
        its one re-run stands for both fires. Marks of older versions hold no key."""
        missing = [i for i in items if not self._misfired(i)]
        for chunk in chunk_ops([CreateOp(self.paths.item_misfire(i), fire) for i in missing]):
            await create_all(self.registry, [op for op in chunk if isinstance(op, CreateOp)])
        if fire:
            paths = [self.paths.item_misfire(i) for i in items if i not in missing]
            await self._set_all([p for p in paths if self.view.get(p) != fire], fire)

    async def _set_all(self, paths: Sequence[str], data: bytes) -> None:
        """Write ``data`` into ``paths``, creating those gone meanwhile (a re-run took them)."""
        for chunk in chunk_ops([SetOp(p, data) for p in paths]):
            try:
                await self.registry.transaction(chunk)
            except TransactionFailedError:
                for op in chunk:
                    try:
                        await self.registry.set(op.path, data)
                    except NoNodeError:
                        with contextlib.suppress(NodeExistsError, NoNodeError):
                            await self.registry.create(op.path, data)

    async def restore_misfire(self, items: Sequence[int], fires: Mapping[int, str]) -> None:
        """Put back the misfire marks a re-run of ``items`` consumed (it did not start), each
        with the fire key it held (``fires``)."""
        ops = [CreateOp(self.paths.item_misfire(i), fires.get(i, "").encode()) for i in items]
        for chunk in chunk_ops(ops):
            await create_all(self.registry, [op for op in chunk if isinstance(op, CreateOp)])

    def misfire_fires(self, items: Sequence[int]) -> dict[int, str]:
        """The fire keys the misfire marks of ``items`` hold (items whose mark holds none are
        left out)."""
        out: dict[int, str] = {}
        for i in items:
            if raw := self.view.get(self.paths.item_misfire(i)):
                out[i] = raw.decode(errors="replace")
        return out

    async def claim_failover(self, items: Sequence[int]) -> list[int]:
        """Take ``items`` over (ephemeral ``sharding/{i}/failover`` = this instance), all at once;
        items someone else took meanwhile are skipped. Returns the items claimed."""
        batches = batch_items(
            items, lambda i: [CreateOp(self.paths.item_failover(i), self._me, ephemeral=True)]
        )
        if len(batches) > 1:  # too many for one multi-op: claim batch by batch
            return [i for batch in batches for i in await self.claim_failover(batch)]
        pending = list(items)
        while pending:
            ops: list[Op] = [
                CreateOp(self.paths.item_failover(i), self._me, ephemeral=True) for i in pending
            ]
            try:
                await self.registry.transaction(ops)
                return pending
            except TransactionFailedError as exc:
                if not isinstance(exc.cause, NodeExistsError | NoNodeError):
                    raise
                del pending[exc.index]
        return []

    async def release_failover(self, items: Sequence[int]) -> None:
        """Give back takeover marks this instance holds (the item runs elsewhere already)."""
        for item in items:
            try:
                await self.registry.delete(self.paths.item_failover(item))
            except NoNodeError:
                pass

    def _intent(self, run: JobExecutionEvent | None = None) -> bytes:
        """A failover intent: the runner and its session (what older versions read), plus the
        run's trace event (id, task, host, start) so a taker can complete its trace row."""
        record: dict[str, object] = {
            "instance": self.instance_id,
            "session": self.registry.session_id,
        }
        if run is not None:
            record |= {
                "task_id": run.task_id,
                "id": run.id,
                "start_time": run.start_time.isoformat(),
                "hostname": run.hostname,
                "ip": run.ip,
                "source": run.execution_source.value,
            }
        return json.dumps(record, separators=(",", ":")).encode()

    async def _transaction_all_or_nothing(self, ops: Sequence[Op], batched: bool) -> None:
        """One multi-op if ``ops`` fit a packet (``batched``: through the batch); else chunk by
        chunk, undoing the chunks already applied if a later one fails (then the error is
        raised, with ``index`` into ``ops``)."""
        chunks = chunk_ops(ops)
        if len(chunks) == 1:
            if batched:
                await self._batched(ops)
            else:
                await self.registry.transaction(ops)
            return
        applied: list[Op] = []
        for chunk in chunks:
            try:
                await self.registry.transaction(chunk)
            except RegistryError as exc:
                with anyio.move_on_after(10, shield=True):
                    await self._undo(applied)
                if isinstance(exc, TransactionFailedError):
                    raise TransactionFailedError(len(applied) + exc.index, exc.cause) from exc
                raise
            applied += chunk

    async def _batched(self, ops: Sequence[Op]) -> None:
        """``registry.transaction(ops)``, sent with other jobs' of the same moment (the fires
        of one tick) as one multi-op if the scheduler runs a batch (``TransactionBatch``)."""
        batch = batch_of(self.registry)
        if batch is None:
            await self.registry.transaction(ops)
        else:
            await batch.transaction(ops)

    async def _undo(self, applied: Sequence[Op]) -> None:
        """Revert ops that were applied (creates deleted, deletes re-created and sets restored
        from the view, which they were computed from); creates that cannot be deleted now are
        retried by ``retry_clears``."""
        reverse: list[Op] = []
        for op in reversed(applied):
            if isinstance(op, CreateOp):
                reverse.append(DeleteOp(op.path))
            elif isinstance(op, DeleteOp):
                reverse.append(CreateOp(op.path, self.view.get(op.path) or b""))
            elif isinstance(op, SetOp) and (old := self.view.get(op.path)) is not None:
                reverse.append(SetOp(op.path, old))
        for chunk in chunk_ops(reverse):
            try:
                await self.registry.transaction(chunk)
                continue
            except TransactionFailedError:
                pass
            except RegistryError:
                created = [op.path for op in chunk if isinstance(op, DeleteOp)]
                self._uncleared.setdefault(self.registry.session_id, set()).update(created)
                continue
            for op in chunk:  # one op failed (a stale view): apply the rest one by one
                try:
                    await self.registry.transaction([op])
                except TransactionFailedError:
                    pass
