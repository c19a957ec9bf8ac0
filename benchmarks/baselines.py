"""The baselines' own virtual environment, and running baseline scripts in it.

APScheduler 4's alpha wants ``anyio<4.14`` and ``sniffio``; kazoo and matplotlib come along. They
live in ``benchmarks/.venv-baselines`` (git-ignored), created on first use from
``requirements-baselines.txt`` and re-installed when that file changes, so they never constrain
aioelastic's own environment. A baseline script prints one JSON object on stdout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-baselines"
REQUIREMENTS = HERE / "requirements-baselines.txt"
PACKAGES = ("apscheduler", "anyio", "sqlalchemy", "asyncpg", "kazoo", "matplotlib")
_running: set[subprocess.Popen[str]] = set()


def python() -> Path:
    return VENV / "bin" / "python"


def _requirements_hash() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def ensure_venv() -> Path:
    """Create or update the baselines venv if needed; its interpreter."""
    stamp = VENV / ".requirements.sha256"
    want = _requirements_hash()
    if python().exists() and stamp.exists() and stamp.read_text() == want:
        return python()
    print(f"setting up {VENV.relative_to(HERE.parent)} ...", flush=True)
    if not python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
    pip = [str(python()), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True, timeout=900)
    stamp.write_text(want)
    return python()


def versions() -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        f"print(json.dumps({{p: m.version(p) for p in {PACKAGES!r}}}))"
    )
    out = subprocess.run([str(python()), "-c", code], capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def run(
    script: str,
    *args: object,
    timeout: float,
    interpreter: str | Path | None = None,
    stop: Callable[[dict[str, Any]], bool] | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``benchmarks/{script}`` (in the baselines venv unless ``interpreter`` is given); the
    last JSON object it printed (one per line). ``stop(obj)`` true ends it at once (its teardown
    is not waited for). Its whole process group is killed on exit, timeout or interruption, so
    no process it started (members, a ZooKeeper) outlives it. ``env``: extra environment
    variables (e.g. ``PYTHONPATH`` to measure another revision of aioelastic)."""
    cmd = [str(interpreter or python()), str(HERE / script), *map(str, args)]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            cmd,
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
        expired = threading.Event()
        watchdog = threading.Timer(timeout, lambda: (expired.set(), _kill_group(proc)))
        _running.add(proc)
        watchdog.start()
        last: dict[str, Any] | None = None
        stopped = False
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("{"):
                    last = json.loads(line)
                    if stop is not None and stop(last):
                        stopped = True
                        break
        finally:
            watchdog.cancel()
            _running.discard(proc)
            _kill_group(proc)  # the script and anything it left behind
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        if last is None or expired.is_set() or (proc.returncode != 0 and not stopped):
            err.seek(0)
            why = f"timed out after {timeout:.0f} s" if expired.is_set() else "failed"
            raise RuntimeError(
                f"{script} {args} {why} (exit {proc.returncode}):\n{err.read()[-3000:]}"
            )
    return last


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def kill_running() -> None:
    """Kill the baseline scripts running now (from a signal handler, say)."""
    for proc in list(_running):
        _kill_group(proc)
