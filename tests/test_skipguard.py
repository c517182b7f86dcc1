"""CI cannot pass blind: under CI a skip off the allow-list fails the run, and the FER2013 tests fail without data."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

TESTS = ROOT / "tests"


def run_pytest(tmp_path: Path, body: str, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_x.py").write_text(body)
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "FER_DATA")}
    environ.update(PYTHONPATH=f"{TESTS}{os.pathsep}{ROOT}", **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "skipguard", "-p", "no:cacheprovider",
                           str(tmp_path / "test_x.py")], cwd=tmp_path, env=environ, capture_output=True, text=True,
                          timeout=300)


def test_a_skip_fails_under_ci_and_passes_outside(tmp_path: Path) -> None:
    body = "import pytest\n\ndef test_data():\n    pytest.skip('real FER2013 not found')\n"
    outside = run_pytest(tmp_path, body)
    assert outside.returncode == 0 and "1 skipped" in outside.stdout
    under_ci = run_pytest(tmp_path, body, CI="true")
    assert under_ci.returncode == 1, under_ci.stdout
    assert "skips that CI does not allow" in under_ci.stdout and "real FER2013 not found" in under_ci.stdout


def test_allowed_platform_skips_pass_under_ci(tmp_path: Path) -> None:
    body = "import pytest\n\ndef test_trim():\n    pytest.skip(\"malloc_trim is glibc's; elsewhere ...\")\n"
    assert run_pytest(tmp_path, body, CI="true").returncode == 0


def test_ci_given_no_data_fails(tmp_path: Path) -> None:
    """What .ci/run exports: FER_DATA. Pointed at nothing, the FER2013 tests fail rather than skip."""
    body = "def test_fer(fer_dir):\n    assert fer_dir\n"
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text().replace(
        "ROOT = Path(__file__).resolve().parent.parent", f"ROOT = Path({str(ROOT)!r})"))
    out = run_pytest(tmp_path, body, CI="true", FER_DATA=str(tmp_path / "missing"))
    assert out.returncode == 1 and "does not point at FER2013" in out.stdout
