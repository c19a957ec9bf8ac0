"""Job kinds and their normalisation into one item-runner shape."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from anyio.abc import Process

from ._context import ShardingContext
from ._errors import ConfigError, ScriptJobError
from ._http_job import HttpJob, http_runner

__all__ = [
    "DataflowJob",
    "ItemRunner",
    "ScriptJob",
    "SimpleJob",
    "make_item_runner",
]

log = logging.getLogger("aioelastic.jobs")

SimpleJob = Callable[[ShardingContext], Awaitable[object]]
#: ``(ctx, keep_going)``: keep_going() turns False when a streaming job should stop looping.
ItemRunner = Callable[[ShardingContext, Callable[[], bool]], Awaitable[None]]


class _Dataflow(Protocol):
    async def fetch_data(self, ctx: ShardingContext) -> Sequence[Any]: ...

    async def process_data(self, ctx: ShardingContext, data: Sequence[Any]) -> None: ...


@dataclass(frozen=True)
class DataflowJob:
    """Fetch a batch, process it; with ``streaming`` repeat until fetch returns nothing, a
    reshard is pending, the scheduler is stopping or the item's claim is lost (``ctx.lost``)
    (ElasticJob's ``streaming.process``)."""

    fetch_data: Callable[[ShardingContext], Awaitable[Sequence[Any]]]
    process_data: Callable[[ShardingContext, Sequence[Any]], Awaitable[object]]
    streaming: bool = False

    @classmethod
    def from_object(cls, obj: _Dataflow, streaming: bool = False) -> DataflowJob:
        return cls(obj.fetch_data, obj.process_data, streaming)


@dataclass(frozen=True)
class ScriptJob:
    """Runs a command line per item; the item's ``ShardingContext`` as JSON is the last argument.

    A non-zero exit status fails the item, with the end of stderr as the failure cause. Each
    script runs in its own session and process group, so a Ctrl-C in the terminal (SIGINT to
    the foreground group) does not reach it: it gets the scheduler's grace period like any
    item. When its item is cancelled (grace period over, a second signal, a timeout) the whole
    group gets SIGTERM, then SIGKILL ``kill_after`` seconds later if anything of it is left.
    Its stdout is discarded.
    """

    command: str | Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    stderr_limit: int = field(default=2000)
    kill_after: float = 5.0

    def __post_init__(self) -> None:
        if not self.kill_after >= 0:
            raise ConfigError("kill_after", self.kill_after, "must be >= 0 seconds")
        if self.stderr_limit < 0:
            raise ConfigError("stderr_limit", self.stderr_limit, "must be >= 0 characters")

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.command) if isinstance(self.command, str) else list(self.command)


def _is_async_callable(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - async __call__ objects
    )


def _check_async(what: str, fn: object) -> None:
    if not callable(fn):
        raise ConfigError("job", fn, f"{what} is not callable")
    if not _is_async_callable(fn):
        raise ConfigError(
            "job",
            getattr(fn, "__qualname__", fn),
            f"{what} must be an 'async def' coroutine function; run blocking code inside it "
            "with 'await anyio.to_thread.run_sync(...)'",
        )


def make_item_runner(job: object) -> ItemRunner:
    """Normalise a simple job (async callable), a dataflow, script or HTTP job; sync callables
    are refused with a ``ConfigError`` (they would block every other job's event loop)."""
    if isinstance(job, HttpJob):
        return http_runner(job)
    if isinstance(job, ScriptJob):
        if not job.argv:
            raise ConfigError("job", job.command, "script command is empty")
        return _script_runner(job)
    if not isinstance(job, DataflowJob) and hasattr(job, "fetch_data"):
        job = DataflowJob.from_object(job, bool(getattr(job, "streaming", False)))  # type: ignore[arg-type]
    if isinstance(job, DataflowJob):
        _check_async("fetch_data", job.fetch_data)
        _check_async("process_data", job.process_data)
        return _dataflow_runner(job)
    _check_async("job", job)
    fn: SimpleJob = job  # type: ignore[assignment]
    returned = _ReturnValueCheck(fn)

    async def run_simple(ctx: ShardingContext, keep_going: Callable[[], bool]) -> None:
        returned.check(await fn(ctx))

    return run_simple


class _ReturnValueCheck:
    """A job's return value is ignored (as ElasticJob's ``void execute``); the first one that is
    not None is logged once per job, since it is often a mistake (e.g. a coroutine returned
    instead of awaited, which is closed here so it does not warn "never awaited")."""

    def __init__(self, fn: object) -> None:
        self._name = getattr(fn, "__qualname__", type(fn).__qualname__)
        self._warned = False

    def check(self, value: object) -> None:
        if value is None:
            return
        if inspect.iscoroutine(value):
            value.close()
        if not self._warned:
            self._warned = True
            log.warning(
                "job %s returned %s; return values are ignored (logged once per job)",
                self._name,
                "an un-awaited coroutine" if inspect.iscoroutine(value) else type(value).__name__,
            )


def _dataflow_runner(job: DataflowJob) -> ItemRunner:
    returned = _ReturnValueCheck(job.process_data)

    async def run_dataflow(ctx: ShardingContext, keep_going: Callable[[], bool]) -> None:
        while True:
            data = await job.fetch_data(ctx)
            if not data:
                return
            returned.check(await job.process_data(ctx, data))
            if not job.streaming or not keep_going() or not ctx.still_owned():
                return

    return run_dataflow


def _script_runner(job: ScriptJob) -> ItemRunner:
    async def run_script(ctx: ShardingContext, keep_going: Callable[[], bool]) -> None:
        argv = [*job.argv, json.dumps(ctx.to_json_dict())]
        process = await anyio.open_process(
            argv,
            stdin=None,
            stdout=subprocess.DEVNULL,
            env=dict(job.env) if job.env else None,
            cwd=job.cwd,
            start_new_session=True,
        )
        tail = bytearray()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_keep_tail, process, tail, job.stderr_limit * 4)
                returncode = await process.wait()
                # A child that inherited stderr may keep it open: don't wait for it long.
                tg.cancel_scope.deadline = anyio.current_time() + 1
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _stop_group(process, job.kill_after)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await process.aclose()
        if returncode != 0:
            text = tail.decode(errors="replace")
            stderr = text[max(len(text) - job.stderr_limit, 0) :]
            raise ScriptJobError(f"{argv[0]} exited with status {returncode}: {stderr}")

    return run_script


async def _keep_tail(process: Process, tail: bytearray, limit: int) -> None:
    """Read the script's stderr to the end, keeping its last ``limit`` bytes."""
    assert process.stderr is not None
    async for chunk in process.stderr:
        tail += chunk
        del tail[: max(len(tail) - limit, 0)]  # (not [:-limit]: with 0 it deletes nothing)


async def _stop_group(process: Process, kill_after: float) -> None:
    """SIGTERM to the script's process group, SIGKILL to what is left after ``kill_after``."""
    if process.returncode is None:
        _signal_group(process.pid, signal.SIGTERM)
        with anyio.move_on_after(kill_after):
            await process.wait()
    # Also when the leader is gone: its children in the group must not outlive the item.
    _signal_group(process.pid, signal.SIGKILL)
    await process.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
