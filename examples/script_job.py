"""A script job: each item runs a command with its ``ShardingContext`` as JSON as the last
argument; a non-zero exit fails the item with the end of stderr as the cause.

    python examples/script_job.py               # embedded; fires every 2 s until Ctrl-C
    python examples/script_job.py --seconds 3   # stops by itself and prints what the scripts did

The "script" here is a Python one-liner so the example runs anywhere; any executable works
(``ScriptJob("/opt/jobs/backup.sh --fast")``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import anyio

from aioelastic import JobListener, Scheduler, ScriptJob, ShardingContexts

OUT = Path(tempfile.gettempdir()) / "aioelastic-script-job.txt"
SCRIPT = (
    "import json, sys\n"
    "ctx = json.loads(sys.argv[-1])\n"
    "with open(sys.argv[1], 'a') as out:\n"
    "    out.write(f\"item {ctx['sharding_item']} ({ctx['sharding_parameter']})\\n\")\n"
)


class Report(JobListener):
    """Prints what the scripts wrote, after each fire."""

    async def after_job_executed(self, contexts: ShardingContexts) -> None:
        if OUT.exists():
            print(OUT.read_text(), end="", flush=True)
            OUT.unlink()


scheduler = Scheduler()
scheduler.add_job(
    ScriptJob([sys.executable, "-c", SCRIPT, str(OUT)]),
    name="backup",
    cron="0/2 * * * * ?",
    sharding_total_count=2,
    sharding_item_parameters="0=db,1=files",
    listeners=[Report()],
)


async def main(seconds: float | None) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)  # Ctrl-C / SIGTERM: graceful stop, no traceback
        await scheduler.trigger("backup")
        if seconds is not None:
            await anyio.sleep(seconds)
            scheduler.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    anyio.run(main, parser.parse_args().seconds)
