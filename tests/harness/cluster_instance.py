"""One scheduler instance as its own OS process, for multi-instance tests.

    python -m tests.harness.cluster_instance --registry URL --log FILE [--job-options JSON]

Writes one JSON object per line to FILE (flushed each line): ``ready``, ``session`` (id and
password, so a test can expire it), ``start`` and ``end`` of every item run, ``stopped``.
SIGTERM/SIGINT stop it gracefully. A file ``FILE.block`` holding a number makes its next item
block the event loop that many seconds (``tests/harness/chaos.py``); ``--tracing-url``/
``--journal`` set its trace (default: from the environment).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio

from aioelastic import Scheduler, Settings, ShardingContext
from aioelastic.registry import SessionEvent


class History:
    def __init__(self, path: str, instance_id: str) -> None:
        self._file = open(path, "a", buffering=1)
        self.instance_id = instance_id

    def write(self, event: str, **fields: Any) -> None:
        record = {"ev": event, "instance": self.instance_id, "t": time.time(), **fields}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()


def block_requested(flag: str) -> float:
    """Seconds to block the loop for, if the test wrote them to ``flag`` (taken once)."""
    try:
        seconds = float(Path(flag).read_text() or 0)
        os.unlink(flag)
    except (OSError, ValueError):
        return 0.0
    return seconds


def build(args: argparse.Namespace) -> tuple[Scheduler, History]:
    tracing = {"tracing_url": args.tracing_url, "trace_journal_path": args.journal}
    settings = Settings(
        registry_url=args.registry,
        instance_id=args.instance_id,
        shutdown_grace_period=args.grace,
        **{k: v for k, v in tracing.items() if v is not None},  # else from the environment
    )
    scheduler = Scheduler(settings=settings)
    history = History(args.log, scheduler.instance_id)
    options: dict[str, Any] = json.loads(args.job_options)
    duration = float(options.pop("duration", 0.2))
    durations = {int(k): float(v) for k, v in options.pop("durations", {}).items()}
    # Blocked loop (issue 11.1): the first item run blocks the event loop this many seconds.
    block_loop = [float(options.pop("block_loop", 0))]

    async def work(ctx: ShardingContext) -> None:
        history.write(
            "start",
            job=ctx.job_name,
            item=ctx.sharding_item,
            task_id=ctx.task_id,
            source=ctx.execution_source.value,
            scheduled=ctx.scheduled_fire_time.timestamp() if ctx.scheduled_fire_time else None,
        )
        ok = False
        try:
            if block_loop[0]:
                seconds, block_loop[0] = block_loop[0], 0
                time.sleep(seconds)  # blocks the loop on purpose
            elif seconds := block_requested(args.log + ".block"):
                time.sleep(
                    seconds
                )  # asked for by the test (tests/harness/chaos.py): blocks the loop
            await anyio.sleep(durations.get(ctx.sharding_item, duration))
            ok = True
        finally:
            history.write(
                "end", job=ctx.job_name, item=ctx.sharding_item, task_id=ctx.task_id, ok=ok
            )

    for name in args.jobs.split(","):
        scheduler.add_job(work, name=name, **options)
    return scheduler, history


async def main(args: argparse.Namespace) -> None:
    scheduler, history = build(args)

    def on_session(event: SessionEvent) -> None:
        registry = scheduler.registry
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
            scheduler.registry.add_session_listener(on_session)
            on_session(
                SessionEvent(scheduler.registry.session_state, scheduler.registry.session_id)
            )
            history.write("ready", pid=os.getpid())
            await stop.wait()
        tg.cancel_scope.cancel()
    history.write("stopped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--jobs", default="cluster_job")
    parser.add_argument("--job-options", default="{}")
    parser.add_argument("--grace", type=float, default=2.0)
    parser.add_argument("--tracing-url", default=None)
    parser.add_argument("--journal", default=None)
    anyio.run(main, parser.parse_args())
