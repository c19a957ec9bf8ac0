"""``aioelastic run`` when the user's module fails to import: the user's own traceback (none of
ours), exit 1; a module that does not exist: one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.cli import ROOT, clean_env


def run(tmp_path: Path, target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aioelastic.cli", "run", target, "--app-dir", str(tmp_path)],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("import json\n\ndef helper():\n    return 1 / 0\n\nhelper()\n", "return 1 / 0"),
        ("import json\nimport no_such_dependency_xyz\n", "import no_such_dependency_xyz"),
        ("def broken(:\n    pass\n", "def broken(:"),
    ],
    ids=["raises", "missing-dependency", "syntax-error"],
)
def test_import_error_shows_the_users_traceback(tmp_path: Path, source: str, shown: str) -> None:
    (tmp_path / "userjobs.py").write_text(source)
    result = run(tmp_path, "userjobs:scheduler")
    assert result.returncode == 1, result.stderr
    assert f'{tmp_path / "userjobs.py"}", line' in result.stderr
    assert shown in result.stderr
    assert "aioelastic/cli" not in result.stderr and "importlib" not in result.stderr
    assert result.stderr.strip().endswith(
        "aioelastic: error: importing 'userjobs' failed (traceback above)"
    )


def test_a_missing_module_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run(tmp_path, "not_there_at_all:scheduler")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "cannot import 'not_there_at_all'" in result.stderr
