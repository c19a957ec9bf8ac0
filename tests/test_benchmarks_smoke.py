"""CI smoke test: ``benchmarks/run_all.py --quick`` runs end to end, baselines included.

Tiny sizes, so the figures mean nothing here; the point is that every section, the baselines
venv, the JSON and the plots still work. The first run creates ``benchmarks/.venv-baselines``
(pip install from PyPI), hence the generous timeout; later runs take about a minute.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 480

pytestmark = [pytest.mark.zookeeper, pytest.mark.postgres, pytest.mark.slow]


def run_quick(out: Path) -> subprocess.CompletedProcess[str]:
    """Run it; on timeout SIGTERM first (run_all then stops its servers), SIGKILL after 60 s."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--out", str(out)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate(timeout=10)
        pytest.fail(f"run_all.py --quick took over {RUN_TIMEOUT}s:\n{output[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, output, "")


@pytest.mark.timeout(RUN_TIMEOUT + 120)
def test_run_all_quick(tmp_path: Path) -> None:
    proc = run_quick(tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:]
    results = json.loads((tmp_path / "run_all.json").read_text())
    assert set(results) >= {"machine", "lag", "throughput", "coordination", "recovery", "scale"}
    lag = results["lag"]["10"]
    for name in ("aioelastic embedded", "aioelastic ZooKeeper", "APScheduler 4 PostgreSQL"):
        assert lag[name]["runs"] > 0, (name, lag[name])
    kazoo = results["recovery"]["kazoo_set_partitioner"]
    assert kazoo["sigkill_to_repartitioned_s"], kazoo
    assert "error" not in results["scale"]["rows"][0], results["scale"]
    assert (tmp_path / "run_all.md").read_text().startswith("Machine:")
    assert (tmp_path / "lag_cdf.png").stat().st_size > 0
