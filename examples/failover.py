"""Failover on ZooKeeper: when an instance dies while its items run, the survivors take those
items over and run them at once (execution source ``FAILOVER``), without waiting for the next fire.

Start ZooKeeper, then in two terminals:

    AIOELASTIC_REGISTRY_URL=zookeeper://127.0.0.1:2181/demo python examples/failover.py

Each process runs its items every 15 s; every item takes 8 s. While one process prints
"started", kill it hard (``kill -9 <pid>``, printed at start): once its ZooKeeper session
expires (the URL's ``session_timeout``, default 10 s) the other prints ``FAILOVER`` runs of
the dead one's items. A graceful stop (Ctrl-C) lets running items finish instead.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime

import anyio

from aioelastic import Scheduler, ShardingContext

scheduler = Scheduler()  # registry from AIOELASTIC_REGISTRY_URL


@scheduler.job(cron="0/15 * * * * ?", sharding_total_count=4, failover=True)
async def long_report(ctx: ShardingContext) -> None:
    now = datetime.now().strftime("%H:%M:%S")
    print(f"{now} item {ctx.sharding_item} started ({ctx.execution_source})", flush=True)
    await anyio.sleep(8)
    print(f"{datetime.now():%H:%M:%S} item {ctx.sharding_item} done", flush=True)


if __name__ == "__main__":
    if scheduler.registry_url.scheme != "zookeeper":
        sys.exit(
            "set AIOELASTIC_REGISTRY_URL=zookeeper://127.0.0.1:2181/demo (failover needs peers)"
        )
    print(f"pid {os.getpid()}, instance {scheduler.instance_id}", flush=True)
    try:
        anyio.run(scheduler.run)  # Ctrl-C: graceful stop (running items get a grace period)
    except KeyboardInterrupt:
        print("stopped")
