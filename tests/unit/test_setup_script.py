"""deploy/setup.sh stops on a failed install instead of stamping a broken set-up as done.

The script runs in a copy of the repository whose ``.venv/bin/python`` is a stand-in that
records its calls and fails the one install named by ``FAIL_ON``: no network, no real pip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from deploy.local_stack import REPO_ROOT

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$* | PYTHONWARNINGS=${PYTHONWARNINGS:-}" >> "$CALLS"
case " $* " in *" $FAIL_ON "*) echo "ERROR: could not install $FAIL_ON" >&2; exit 1;; esac
exit 0
"""


def run_setup(tmp_path: Path, fail_on: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run a copy of setup.sh with the stand-in python; returns the run and the stamp path."""
    repo = tmp_path / "repo"
    (repo / "deploy").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "deploy" / "setup.sh", repo / "deploy" / "setup.sh")
    shutil.copy(REPO_ROOT / "pyproject.toml", repo / "pyproject.toml")
    python = repo / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    env = {**os.environ, "CALLS": str(tmp_path / "calls"), "FAIL_ON": fail_on}
    done = subprocess.run(
        ["bash", str(repo / "deploy" / "setup.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, repo / ".venv" / ".akr-setup-stamp"


@pytest.mark.parametrize("fail_on", ["nvidia-nat-core==1.9.0", "msgspec"])
def test_a_failed_install_stops_the_setup_unstamped(tmp_path: Path, fail_on: str) -> None:
    """Before: every install ended in '| grep ... || true', which swallowed pip's status, so
    a failed install (no network for the NAT client, say) printed 'set-up done' and wrote the
    stamp: later runs skipped the set-up, and the tests failed on a missing package."""
    done, stamp = run_setup(tmp_path, fail_on)
    assert done.returncode != 0
    assert not stamp.exists()
    assert "set-up done" not in done.stdout
    assert f"could not install {fail_on}" in done.stderr + done.stdout


def test_a_clean_run_stamps_the_setup(tmp_path: Path) -> None:
    done, stamp = run_setup(tmp_path, fail_on="nothing-fails")
    assert done.returncode == 0, done.stderr
    assert stamp.exists() and "set-up done" in done.stdout


def test_the_editable_install_hides_setuptools_notice(tmp_path: Path) -> None:
    """A fresh 'make demo' printed setuptools' 10-line 'BuildBackendWarning: Editable
    installation ... Please be careful with folders in your working directory' block; the
    filter is a PYTHONWARNINGS entry (checked with the real pip and setuptools: the block
    goes), so it must reach that install and only that one."""
    done, _ = run_setup(tmp_path, fail_on="nothing-fails")
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    editable = [c for c in calls if " -e .[test] " in f"{c} "]
    assert editable and all(c.endswith("ignore:Editable installation") for c in editable)
    others = [c for c in calls if " install " in c and c not in editable]
    assert others and not any("Editable" in c for c in others)
