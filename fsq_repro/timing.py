"""Where a stage's wall time goes: start-up, set-up, compilation, steps, evaluation phases.

One clock per process, started when the process started (so start-up counts Python's and the
libraries' imports). Code that finishes a phase calls `mark(name)`: the time since the
previous mark is added to that phase. `main` writes the phases into the stage's directory as
timings.json when the job ends; `scripts/sweep.py --profile` tabulates them for a sweep.
"""

import json
import os
import time

from fsq_repro import files

FILENAME = "timings.json"


def process_start_time() -> float:
  """Unix time at which this process started: /proc on Linux, else the import of this module."""
  try:
    with open("/proc/self/stat") as f:
      after_name = f.read().rsplit(")", 1)[1].split()
    with open("/proc/uptime") as f:
      uptime = float(f.read().split()[0])
    ticks = int(after_name[19])  # field 22, starttime, in clock ticks after boot
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError):
    return _IMPORTED


_IMPORTED = time.time()
_phases: dict[str, float] = {}
_counts: dict[str, int] = {}
_last = [process_start_time()]


def mark(phase: str, count: int | None = None) -> float:
  """Ends `phase` now: adds the seconds since the previous mark to it (and `count` units of
  work, e.g. steps, for a per-unit time). Returns those seconds."""
  now = time.time()
  seconds = now - _last[0]
  _last[0] = now
  _phases[phase] = _phases.get(phase, 0.0) + seconds
  if count is not None:
    _counts[phase] = _counts.get(phase, 0) + count
  return seconds


def summary() -> dict:
  """{"total_s", "phases_s": {phase: seconds} in order, "counts", "per_unit_s"}."""
  return {"total_s": time.time() - process_start_time(), "phases_s": dict(_phases),
          "counts": dict(_counts),
          "per_unit_s": {p: _phases[p] / n for p, n in _counts.items() if n}}


def write(directory: str) -> str:
  """Writes `summary()` to <directory>/timings.json; returns the path."""
  path = os.path.join(directory, FILENAME)
  with files.atomic_write(path) as f:
    json.dump(summary(), f, indent=1)
  return path


def reset() -> None:
  """Starts the clock afresh (for tests, and for a process that runs several jobs)."""
  _phases.clear()
  _counts.clear()
  _last[0] = time.time()
