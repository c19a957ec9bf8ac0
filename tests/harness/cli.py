"""Running the ``aioelastic`` command as a subprocess in tests, and what its tables look like."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[2]

_JOBS_FIRST_COLUMNS = ["NAME", "STATUS", "CRON", "NEXT_FIRE", "ITEMS", "INSTANCES"]
#: ``aioelastic jobs``'s header without a trace.
JOBS_COLUMNS = [*_JOBS_FIRST_COLUMNS, "DESCRIPTION"]
#: ``aioelastic jobs``'s header with a trace (within 100 columns).
JOBS_TRACED_COLUMNS = [*_JOBS_FIRST_COLUMNS, "LAST_FIRE", "OUTCOME", "MISSED"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any ``AIOELASTIC_*`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOELASTIC_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


async def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """``python -m aioelastic.cli ARGS`` (30 s at most)."""
    with anyio.fail_after(30):
        done = await anyio.run_process(
            [sys.executable, "-m", "aioelastic.cli", *args],
            check=False,
            env=env or clean_env(),
            cwd=ROOT,
        )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())
