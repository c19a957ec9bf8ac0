"""An instance process running a two-job pipeline: ``extract`` (upstream, its options from
``--job-options``) and ``load`` (``after="extract"``, one item, failover on, running for
``load_duration`` seconds of those options, default 0).

Same command line and history records as ``cluster_instance`` (``start`` and ``end`` of every
item run, for both jobs); a ``load`` start also names its ``upstream`` task ids.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from typing import Any

import anyio

from aioelastic import Scheduler, Settings, ShardingContext
from tests.harness.cluster_instance import History


async def main(args: argparse.Namespace) -> None:
    settings = Settings(
        registry_url=args.registry, instance_id=args.instance_id, shutdown_grace_period=args.grace
    )
    scheduler = Scheduler(settings=settings)
    history = History(args.log, scheduler.instance_id)
    options: dict[str, Any] = json.loads(args.job_options)
    duration = float(options.pop("duration", 0.2))
    durations = {int(k): float(v) for k, v in options.pop("durations", {}).items()}
    load_duration = float(options.pop("load_duration", 0.0))

    async def work(ctx: ShardingContext) -> None:
        history.write(
            "start",
            job=ctx.job_name,
            item=ctx.sharding_item,
            task_id=ctx.task_id,
            source=ctx.execution_source.value,
            scheduled=ctx.scheduled_fire_time.timestamp() if ctx.scheduled_fire_time else None,
            upstream=list(ctx.upstream_task_ids),
        )
        ok = False
        try:
            if ctx.job_name == "extract":
                await anyio.sleep(durations.get(ctx.sharding_item, duration))
            elif load_duration:
                await anyio.sleep(load_duration)
            ok = True
        finally:
            history.write(
                "end", job=ctx.job_name, item=ctx.sharding_item, task_id=ctx.task_id, ok=ok
            )

    scheduler.add_job(work, name="extract", **options)
    scheduler.add_job(work, name="load", after="extract", failover=True)
    async with anyio.create_task_group() as tg:
        async with scheduler:
            history.write("ready", pid=os.getpid())
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
        tg.cancel_scope.cancel()
    history.write("stopped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--jobs", default="extract")
    parser.add_argument("--job-options", default="{}")
    parser.add_argument("--grace", type=float, default=2.0)
    anyio.run(main, parser.parse_args())
