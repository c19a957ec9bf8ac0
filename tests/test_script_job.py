"""``ScriptJob`` children: their own process group, stopped on cancellation (SIGTERM to the
group, SIGKILL after ``kill_after``), never orphaned, and out of reach of a terminal's Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from aioelastic import ConfigError, Scheduler, ScriptJob, Settings
from tests.harness.helpers import eventually

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time, pathlib
    marks = pathlib.Path(sys.argv[1])
    mode = sys.argv[2]

    def on_term(signum, frame):
        with marks.open("a") as f:
            f.write("terminated\\n")
        sys.exit(0)

    signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else on_term)
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with marks.open("a") as f:
        f.write(f"started {os.getpid()} {grandchild.pid}\\n")
    time.sleep(float(sys.argv[3]))
    with marks.open("a") as f:
        f.write("done\\n")
    """
)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie waiting for its reaper is dead


def started(marks: Path) -> list[int]:
    for line in marks.read_text().splitlines() if marks.exists() else []:
        if line.startswith("started"):
            return [int(p) for p in line.split()[1:]]
    return []


@pytest.mark.parametrize("mode", ["polite", "stubborn"])
async def test_a_cancelled_item_stops_its_whole_process_group(tmp_path: Path, mode: str) -> None:
    marks, script = tmp_path / "marks.txt", tmp_path / "child.py"
    script.write_text(CHILD)
    scheduler = Scheduler(
        settings=Settings(
            registry_url=f"memory://script{uuid.uuid4().hex[:6]}/ns", shutdown_grace_period=0
        )
    )
    scheduler.add_job(
        ScriptJob([sys.executable, str(script), str(marks), mode, "60"], kill_after=1.0),
        name="child",
    )
    async with scheduler:
        await scheduler.trigger("child")
        await eventually(lambda: started(marks), 20, 0.02, what="the script start")
        pids = started(marks)
        stop_began = time.monotonic()
    stopped_in = time.monotonic() - stop_began  # no grace: cancelled, then SIGTERM
    # SIGKILL is delivered asynchronously: a killed grandchild may take a moment to exit.
    await eventually(
        lambda: not any(alive(p) for p in pids), 5, what="a script process outlived its item"
    )
    if mode == "polite":
        assert "terminated" in marks.read_text()  # it got SIGTERM and could clean up
        assert stopped_in < 1.0 + 3  # well before SIGKILL was due (+ slack for load)
    else:
        assert "terminated" not in marks.read_text()
        assert stopped_in >= 1.0  # SIGKILL only after kill_after
    assert "done" not in marks.read_text()


def test_kill_after_is_validated() -> None:
    with pytest.raises(ConfigError, match="kill_after"):
        ScriptJob("true", kill_after=-1)
    with pytest.raises(ConfigError, match="kill_after"):
        ScriptJob("true", kill_after=float("nan"))
    with pytest.raises(ConfigError, match="stderr_limit"):
        ScriptJob("true", stderr_limit=-1)


SERVICE = textwrap.dedent(
    """
    import sys
    import anyio
    from aioelastic import Scheduler, ScriptJob, Settings

    child, marks = sys.argv[1], sys.argv[2]
    scheduler = Scheduler(settings=Settings(shutdown_grace_period=20))
    scheduler.add_job(
        ScriptJob([sys.executable, child, marks, "polite", "1.5"]), name="child"
    )

    async def main():
        async with anyio.create_task_group() as tg:
            await tg.start(scheduler.run)
            await scheduler.trigger("child")

    anyio.run(main)
    """
)


async def test_ctrl_c_to_the_process_group_gives_scripts_the_grace_period(
    tmp_path: Path,
) -> None:
    marks, child, service = tmp_path / "marks.txt", tmp_path / "child.py", tmp_path / "svc.py"
    child.write_text(CHILD)
    service.write_text(SERVICE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOELASTIC_")}
    proc = subprocess.Popen(
        [sys.executable, str(service), str(child), str(marks)],
        env={**env, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own group, like a shell's foreground job
    )
    try:
        await eventually(lambda: started(marks), 20, 0.02, what="the script start")
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        await eventually(lambda: proc.poll() is not None, 20, 0.02, what="the scheduler's exit")
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert proc.returncode == 0, stderr
        assert marks.read_text().splitlines()[1:] == ["done"], marks.read_text()
        assert "Traceback" not in stderr, stderr
        await eventually(lambda: not alive(started(marks)[0]), 5, 0.02, what="the script's exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in started(marks)[1:]:  # the grandchild sleeps on (normal exit: not ours)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
