"""``TransactionBatch``: multi-ops of many callers sent as one, each caller getting the outcome
it would have had alone (applied, or its own ``TransactionFailedError``), on both registries."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
import pytest

from aioelastic._batch import TransactionBatch, batch_of
from aioelastic._errors import (
    NodeExistsError,
    NoNodeError,
    PacketTooLargeError,
    SessionLostError,
    TransactionFailedError,
)
from aioelastic.registry import CreateOp, DeleteOp, Op, Registry, SetOp
from aioelastic.registry._limits import PACKET_LIMIT, transaction_size
from tests.conftest import Backend
from tests.harness.helpers import eventually

pytestmark = pytest.mark.anyio


class Gated:
    """The real registry, with its multi-ops counted and, while ``gate`` is closed, held
    before they are sent; ``fail_next`` makes the next multi-op of several callers' ops fail
    with a session loss before it is sent."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.sent: list[list[Op]] = []
        self.gate: anyio.Event | None = None
        self.waiting = 0  # multi-ops waiting at the closed gate
        self.fail_combined = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.registry, name)

    async def transaction(self, ops: Sequence[Op]) -> None:
        if self.gate is not None:
            self.waiting += 1
            with anyio.fail_after(10):
                await self.gate.wait()
        self.sent.append(list(ops))
        if self.fail_combined and len(ops) > 1:
            raise SessionLostError("connection lost (injected)")
        await self.registry.transaction(ops)


@asynccontextmanager
async def running(registry: Registry, budget: int | None = None) -> AsyncIterator[TransactionBatch]:
    batch = TransactionBatch(registry) if budget is None else TransactionBatch(registry, budget)
    async with anyio.create_task_group() as tg:
        await tg.start(batch.run)
        yield batch
        tg.cancel_scope.cancel()


async def submit_all(
    batch: TransactionBatch, calls: Sequence[Sequence[Op]], lead: Sequence[Op] = ()
) -> list[object]:
    """Submit every call in the same loop pass, after ``lead`` (sent at once, as the batch is
    idle: the calls are batched behind it); each call's outcome (None or its error)."""
    outcomes: list[object] = [None] * len(calls)

    async def one(i: int) -> None:
        try:
            await batch.transaction(calls[i])
        except Exception as exc:
            outcomes[i] = exc

    async with anyio.create_task_group() as tg:
        if lead:
            tg.start_soon(batch.transaction, lead)
        for i in range(len(calls)):
            tg.start_soon(one, i)
    return outcomes


async def test_the_multi_ops_of_one_moment_are_one_request_and_all_applied(
    backend: Backend,
) -> None:
    root = backend.root
    async with backend.open() as reg:
        await reg.create(root)
        async with running(reg) as batch:
            assert batch_of(reg) is batch
            before = reg.request_count
            await batch.transaction([CreateOp(f"{root}/alone")])  # nothing else: sent at once
            assert reg.request_count - before == 1 and batch.flushes == 0
            calls = [[CreateOp(f"{root}/j{i}"), CreateOp(f"{root}/j{i}/running")] for i in range(8)]
            lead = [CreateOp(f"{root}/lead")]
            assert await submit_all(batch, calls, lead) == [None] * 8
            # The lead at once, the eight callers that came meanwhile in one multi-op.
            assert reg.request_count - before == 3 and batch.flushes == 1
        assert batch_of(reg) is None
        names = [f"j{i}" for i in range(8)]
        assert sorted(await reg.get_children(root)) == sorted(["alone", "lead", *names])
        for i in range(8):
            assert await reg.get_children(f"{root}/j{i}") == ["running"]


async def test_one_conflicting_caller_fails_alone_and_the_others_are_applied_once(
    backend: Backend,
) -> None:
    root = backend.root
    async with backend.open() as reg:
        await reg.create(root)
        await reg.create(f"{root}/taken")
        for name in ("a", "c"):
            await reg.create(f"{root}/{name}")
        counted = Gated(reg)
        async with running(counted) as batch:  # type: ignore[arg-type]
            outcomes = await submit_all(
                batch,
                [
                    [SetOp(f"{root}/a", b"A"), CreateOp(f"{root}/a1")],
                    [CreateOp(f"{root}/b1"), CreateOp(f"{root}/taken"), CreateOp(f"{root}/b2")],
                    [SetOp(f"{root}/c", b"C"), DeleteOp(f"{root}/c1-missing")],
                    [CreateOp(f"{root}/d1")],
                ],
                lead=[CreateOp(f"{root}/lead")],
            )
        a, b, c, d = outcomes
        assert a is None and d is None
        # Each failure is the caller's own, with the index into ITS ops.
        assert isinstance(b, TransactionFailedError) and b.index == 1
        assert isinstance(b.cause, NodeExistsError)
        assert isinstance(c, TransactionFailedError) and c.index == 1
        assert isinstance(c.cause, NoNodeError)
        children = set(await reg.get_children(root))
        assert {"a1", "d1"} <= children and not {"b1", "b2"} & children
        # Applied exactly once: each set moved its node's version by one.
        assert (await reg.get(f"{root}/a"))[1].version == 1
        assert (await reg.get(f"{root}/c"))[1].version == 0  # its multi-op failed: not applied
        # Together first (after the lead), failing at b: b alone, a c d together again,
        # failing at c: c alone, a d together. Only failed multi-ops are sent again.
        assert [len(ops) for ops in counted.sent] == [1, 8, 3, 5, 2, 3]


async def test_a_lost_session_fails_every_caller_and_nothing_is_sent_again(
    backend: Backend,
) -> None:
    root = backend.root
    async with backend.open() as reg:
        await reg.create(root)
        flaky = Gated(reg)
        flaky.fail_combined = True
        async with running(flaky) as batch:  # type: ignore[arg-type]
            calls = [[CreateOp(f"{root}/x{i}")] for i in range(3)]
            outcomes = await submit_all(batch, calls, [CreateOp(f"{root}/lead")])
        assert all(isinstance(o, SessionLostError) for o in outcomes), outcomes
        assert len(flaky.sent) == 2  # the lead, the three: no fallback after a session loss
        assert await reg.get_children(root) == ["lead"]


async def test_callers_that_do_not_fit_one_request_go_in_several_in_order(
    backend: Backend,
) -> None:
    root = backend.root
    async with backend.open() as reg:
        await reg.create(root)
        counted = Gated(reg)
        one = [CreateOp(f"{root}/n0", b"x" * 100)]
        budget = 3 * (transaction_size(one) - transaction_size(())) + transaction_size(())
        async with running(counted, budget) as batch:  # type: ignore[arg-type]
            calls: list[list[Op]] = [[CreateOp(f"{root}/n{i}", b"x" * 100)] for i in range(7)]
            calls.append([DeleteOp(f"{root}/n0")])  # after n0's create: order is kept
            assert await submit_all(batch, calls, [CreateOp(f"{root}/lead")]) == [None] * 8
        assert [len(ops) for ops in counted.sent] == [1, 3, 3, 2]
        assert sorted(await reg.get_children(root)) == ["lead"] + [f"n{i}" for i in range(1, 7)]


async def test_a_caller_too_big_for_a_packet_is_refused_alone(backend: Backend) -> None:
    root = backend.root
    async with backend.open() as reg:
        await reg.create(root)
        async with running(reg) as batch:
            huge = [
                CreateOp(f"{root}/h{i}", b"x" * 60_000) for i in range(PACKET_LIMIT // 60_000 + 1)
            ]
            outcomes = await submit_all(batch, [[CreateOp(f"{root}/ok")], huge])
            assert outcomes[0] is None and isinstance(outcomes[1], PacketTooLargeError)
            lead = [CreateOp(f"{root}/lead")]  # the same, batched behind another
            outcomes = await submit_all(batch, [huge, [CreateOp(f"{root}/ok2")]], lead)
            assert isinstance(outcomes[0], PacketTooLargeError) and outcomes[1] is None
        assert sorted(await reg.get_children(root)) == ["lead", "ok", "ok2"]


async def test_a_caller_cancelled_before_the_send_has_nothing_applied(backend: Backend) -> None:
    root = backend.root
    async with backend.open() as reg:
        await reg.create(root)
        gated = Gated(reg)
        gated.gate = anyio.Event()
        async with running(gated) as batch:  # type: ignore[arg-type]
            async with anyio.create_task_group() as tg:
                tg.start_soon(batch.transaction, [CreateOp(f"{root}/lead")])  # sent at once
                tg.start_soon(batch.transaction, [CreateOp(f"{root}/flushed")])  # the batch's
                await eventually(lambda: gated.waiting == 2, what="both held at the gate")
                tg.start_soon(batch.transaction, [CreateOp(f"{root}/after")])
                scope = anyio.CancelScope()
                gone = anyio.Event()

                async def doomed() -> None:
                    with scope:
                        await batch.transaction([CreateOp(f"{root}/doomed")])
                    gone.set()

                tg.start_soon(doomed)
                await eventually(lambda: len(batch._queue) == 2, what="both queued")
                scope.cancel()
                with anyio.fail_after(5):
                    await gone.wait()
                gated.gate.set()
        assert sorted(await reg.get_children(root)) == ["after", "flushed", "lead"]


async def test_a_stopped_batch_hands_unsent_calls_back_and_finishes_the_one_in_flight(
    backend: Backend,
) -> None:
    root = backend.root
    async with backend.open() as reg:
        await reg.create(root)
        gated = Gated(reg)
        gated.gate = anyio.Event()
        batch = TransactionBatch(gated)  # type: ignore[arg-type]
        outcomes: dict[str, object] = {}

        async def call(name: str) -> None:
            try:
                await batch.transaction([CreateOp(f"{root}/{name}")])
                outcomes[name] = None
            except Exception as exc:
                outcomes[name] = exc

        async with anyio.create_task_group() as callers:
            async with anyio.create_task_group() as service:
                await service.start(batch.run)
                callers.start_soon(call, "lead")
                callers.start_soon(call, "in-flight")
                await eventually(lambda: gated.waiting == 2, what="both held at the gate")
                callers.start_soon(call, "queued")
                await eventually(lambda: len(batch._queue) == 1, what="queued")
                service.cancel_scope.cancel()  # the scheduler stops: the flush is shielded
                gated.gate.set()
        assert outcomes == {"lead": None, "in-flight": None, "queued": None}
        assert sorted(await reg.get_children(root)) == ["in-flight", "lead", "queued"]
        assert len(gated.sent) == 3  # each once: the queued one by its caller


async def test_two_fires_of_one_job_in_a_batch_fail_only_the_later(backend: Backend) -> None:
    root = backend.root
    async with backend.open() as reg:
        await reg.create(root)
        counted = Gated(reg)
        async with running(counted) as batch:  # type: ignore[arg-type]
            mark: list[Op] = [CreateOp(f"{root}/job-running")]
            calls: list[list[Op]] = [mark, [CreateOp(f"{root}/other")], mark]
            outcomes = await submit_all(batch, calls, [CreateOp(f"{root}/lead")])
        assert outcomes[0] is None and outcomes[1] is None
        assert isinstance(outcomes[2], TransactionFailedError) and outcomes[2].index == 0
        assert isinstance(outcomes[2].cause, NodeExistsError)
        # The others' multi-op is not failed by it: the later one is sent on its own after.
        assert [len(ops) for ops in counted.sent] == [1, 2, 1]


async def test_many_conflicting_callers_are_not_resent_with_the_group_after_each_failure(
    backend: Backend,
) -> None:
    """An overloaded moment where most callers conflict: after a few failed combined
    multi-ops the rest go each on its own, not the whole group again after each failure."""
    root = backend.root
    async with backend.open() as reg:
        await reg.create(root)
        for i in range(0, 20, 2):
            await reg.create(f"{root}/n{i}")  # every even caller's create conflicts
        counted = Gated(reg)
        async with running(counted) as batch:  # type: ignore[arg-type]
            outcomes = await submit_all(
                batch,
                [[CreateOp(f"{root}/n{i}")] for i in range(20)],
                lead=[CreateOp(f"{root}/lead")],
            )
        assert all(isinstance(outcomes[i], TransactionFailedError) for i in range(0, 20, 2))
        assert all(outcomes[i] is None for i in range(1, 20, 2))
        assert {f"n{i}" for i in range(20)} <= set(await reg.get_children(root))
        # The lead, 3 failed combined multi-ops each with its culprit alone, then the 17 left
        # each on its own, in flight at once: the ops sent stay linear in the callers (the
        # group resent after each of the 10 failures sent 165 ops in 21 sequential requests).
        assert len(counted.sent) == 1 + 3 * 2 + 17
        assert sum(len(ops) for ops in counted.sent) == 1 + (20 + 19 + 18) + 3 + 17
