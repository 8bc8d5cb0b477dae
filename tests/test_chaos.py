"""scripts/chaos.py, one trial of every scenario: kill -9 and SIGTERM at random moments of
Stage I, token extraction and Stage II, each resumed run bitwise equal to an uninterrupted one.
Its own file so that pytest-xdist can run it beside tests/test_reliability.py."""

import subprocess
import sys

import pytest

from scripts import chaos
from test_reliability import TINY


@pytest.mark.slow
def test_chaos_script_survives_one_trial_of_every_scenario(tmp_path):
  # The tiny models: the script's machinery is under test here, not the demo's sizes.
  sizes = [f"--set={k}={v}" for k, v in TINY.items() if not k.startswith(("stage1.", "stage2."))]
  result = subprocess.run([sys.executable, "scripts/chaos.py", "--trials=1",
                           f"--workdir={tmp_path / 'chaos'}", *sizes], cwd=chaos.ROOT,
                          capture_output=True, text=True, timeout=3600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  for scenario in ("stage1-kill9", "stage1-sigterm", "extraction-kill9", "stage2-kill9",
                   "stage2-sigterm"):
    assert f"{scenario:<18} 1/1" in result.stdout
