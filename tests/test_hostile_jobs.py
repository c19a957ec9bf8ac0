"""A job raising SystemExit / KeyboardInterrupt in its own process: the item fails, the
process stays alive and keeps firing every job (no zombie), and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.helpers import eventually

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(60)]


def records(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("exception", ["SystemExit", "KeyboardInterrupt"])
async def test_base_exception_in_a_job_does_not_make_a_zombie(
    tmp_path: Path, exception: str
) -> None:
    log = tmp_path / "runs.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.harness.hostile_instance", exception, str(log)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def count(job: str) -> int:
            return sum(1 for r in records(log) if r["job"] == job)

        def fired_on() -> bool:
            assert proc.poll() is None, f"the process died: {proc.stderr.read().decode()[-3000:]}"  # type: ignore[union-attr]
            return (
                count("hostile") >= 6
                and count("steady") >= 3
                and count("hostile-sibling-done") >= 3
            )

        await eventually(
            fired_on, 30, 0.1, what="firing on", detail=lambda: f"records: {records(log)}"
        )
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err.decode()[-3000:]
        assert records(log)[-1]["job"] == "stopped"
        assert f"{exception}: raised by the job" in err.decode()  # logged by the error handler
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
