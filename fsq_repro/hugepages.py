"""Transparent huge pages for XLA's CPU temporaries, through glibc's malloc, from process start.

XLA's CPU runtime allocates every execution's temporary buffers afresh: 7.3 GB for one Stage II
step of the paper's transformer at 256 px and batch 8. glibc serves such blocks with mmap, and
with 4 KiB pages the kernel faults and zeroes them page by page: 2.3 million page faults and
10 of the step's 28 CPU seconds, measured here. glibc's tunable `glibc.malloc.hugetlb=1`
(glibc >= 2.35) makes malloc ask for transparent huge pages on its mappings, 512 times fewer
faults: that step went from 16 s to 9 s (README, "Scale and speed"). glibc reads
GLIBC_TUNABLES only when a process starts, so the entry points (fsq_repro/main.py,
scripts/bench.py) call `reexec()` before anything else: the process re-executes itself once
with the tunable added. Nothing happens where GLIBC_TUNABLES already names it (set it to 0 to
opt out), without glibc >= 2.35, or where the kernel's transparent huge pages are off.
"""

import os
import platform
import sys

ENV = "GLIBC_TUNABLES"
TUNABLE = "glibc.malloc.hugetlb"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)


def wanted(environ=os.environ, libc=None, thp_setting: str = THP_SETTING) -> bool:
  """Whether this process should restart with glibc.malloc.hugetlb=1."""
  if TUNABLE in environ.get(ENV, ""):
    return False
  name, version = libc or platform.libc_ver()
  try:
    if name != "glibc" or tuple(map(int, version.split(".")[:2])) < MIN_GLIBC:
      return False
    with open(thp_setting) as f:
      return "[never]" not in f.read()
  except (OSError, ValueError):
    return False


def tunables(environ=os.environ) -> str:
  """GLIBC_TUNABLES with the huge-page tunable added to whatever it holds."""
  return ":".join(filter(None, [environ.get(ENV, ""), f"{TUNABLE}=1"]))


def reexec() -> None:
  """Re-executes this process (same interpreter, same arguments) with the tunable, if wanted."""
  if wanted():
    os.environ[ENV] = tunables()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
