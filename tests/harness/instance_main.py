"""The process main shared by the instance modules (``cluster_instance``, ``ownership_instance``,
``pipeline_instance``): one command line, settings, history file, signal handling.

    python -m tests.harness.<module> --registry URL --log FILE --instance-id ID
        [--jobs A,B] [--job-options JSON] [--grace S] [--tracing-url URL --journal PATH]

Each module only adds its jobs (``run(add_jobs)``). The history file gets one JSON object per
line (flushed each line): ``ready``, ``session`` (id and password, so a test can expire it),
whatever the jobs write (``start``/``end``), ``stopping`` (on SIGTERM/SIGINT), ``stopped``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import anyio

from aioelastic import Scheduler, Settings, ShardingContext
from aioelastic.registry import Registry, SessionEvent

#: Adds the module's jobs: ``(scheduler, history, job options from --job-options, args)``.
AddJobs = Callable[[Scheduler, "History", dict[str, Any], argparse.Namespace], None]


class History:
    """The instance's history file: one JSON record a line."""

    def __init__(self, path: str, instance_id: str) -> None:
        self._file = open(path, "a", buffering=1)
        self.instance_id = instance_id

    def write(self, event: str, **fields: Any) -> None:
        record = {"ev": event, "instance": self.instance_id, "t": time.time(), **fields}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def start(self, ctx: ShardingContext, **fields: Any) -> None:
        """An item run's ``start`` (what ``Cluster.history()`` reads), with extra ``fields``."""
        scheduled = ctx.scheduled_fire_time.timestamp() if ctx.scheduled_fire_time else None
        self.write(
            "start",
            job=ctx.job_name,
            item=ctx.sharding_item,
            task_id=ctx.task_id,
            source=ctx.execution_source.value,
            scheduled=scheduled,
            **fields,
        )

    def end(self, ctx: ShardingContext, **fields: Any) -> None:
        """An item run's ``end`` with ``fields`` (``ok``, ...)."""
        self.write("end", job=ctx.job_name, item=ctx.sharding_item, task_id=ctx.task_id, **fields)


def item_seconds(options: dict[str, Any]) -> Callable[[int], float]:
    """How long an item runs: takes ``duration`` (default 0.2) and ``durations`` (per item) out
    of the job options."""
    duration = float(options.pop("duration", 0.2))
    durations = {int(k): float(v) for k, v in options.pop("durations", {}).items()}
    return lambda item: durations.get(item, duration)


def parse_args(default_jobs: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--jobs", default=default_jobs)
    parser.add_argument("--job-options", default="{}")
    parser.add_argument("--grace", type=float, default=2.0)
    parser.add_argument("--tracing-url", default=None)
    parser.add_argument("--journal", default=None)
    return parser.parse_args()


def build(args: argparse.Namespace, add_jobs: AddJobs) -> tuple[Scheduler, History]:
    tracing = {"tracing_url": args.tracing_url, "trace_journal_path": args.journal}
    settings = Settings(
        registry_url=args.registry,
        instance_id=args.instance_id,
        shutdown_grace_period=args.grace,
        **{k: v for k, v in tracing.items() if v is not None},  # else from the environment
    )
    scheduler = Scheduler(settings=settings)
    history = History(args.log, scheduler.instance_id)
    add_jobs(scheduler, history, json.loads(args.job_options), args)
    return scheduler, history


async def serve(scheduler: Scheduler, history: History) -> None:
    """Run the scheduler until SIGTERM/SIGINT, recording its sessions."""

    registry: Registry | None = None  # the running scheduler's (gone from it once stopped)

    def on_session(event: SessionEvent) -> None:
        password = getattr(registry, "session_password", b"") or b""
        history.write(
            "session", state=event.state.value, session_id=event.session_id, password=password.hex()
        )

    stop = anyio.Event()

    async def stop_on_signal() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                history.write("stopping")
                stop.set()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signal)
        async with scheduler:
            registry = scheduler.registry
            registry.add_session_listener(on_session)
            on_session(SessionEvent(registry.session_state, registry.session_id))
            history.write("ready", pid=os.getpid())
            await stop.wait()
        tg.cancel_scope.cancel()
    history.write("stopped")


def run(add_jobs: AddJobs, default_jobs: str = "cluster_job") -> None:
    """The instance module's ``__main__``: parse the command line, add the jobs, serve."""
    args = parse_args(default_jobs)

    async def main() -> None:
        await serve(*build(args, add_jobs))

    anyio.run(main)
