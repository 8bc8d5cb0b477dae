"""The per-process phase clock behind timings.json and `sweep.py --profile`."""

import json
import time

from fsq_repro import timing


def test_marks_add_the_time_since_the_previous_mark_to_their_phase(tmp_path):
  timing.reset()
  time.sleep(0.05)
  first = timing.mark("setup")
  time.sleep(0.02)
  timing.mark("steps", count=2)
  time.sleep(0.02)
  timing.mark("steps", count=3)  # a phase met twice accumulates
  summary = timing.summary()
  assert list(summary["phases_s"]) == ["setup", "steps"]
  assert 0.05 <= first == summary["phases_s"]["setup"] < 1.0
  assert 0.04 <= summary["phases_s"]["steps"] < 1.0
  assert summary["counts"] == {"steps": 5}
  assert summary["per_unit_s"]["steps"] == summary["phases_s"]["steps"] / 5
  # The total counts from the process's start, before any mark (imports, start-up).
  assert summary["total_s"] >= sum(summary["phases_s"].values())
  path = timing.write(str(tmp_path / "stage1"))
  assert json.load(open(path))["counts"] == {"steps": 5}


def test_process_start_precedes_this_test():
  start = timing.process_start_time()
  assert time.time() - 24 * 3600 < start <= timing._IMPORTED <= time.time()
