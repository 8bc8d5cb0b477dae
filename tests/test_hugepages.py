"""fsq_repro/hugepages.py: when a process restarts with glibc's huge-page tunable, and that it
does restart with it."""

import os
import subprocess
import sys

from fsq_repro import hugepages


def test_wanted_only_on_glibc_235_with_thp_and_not_set_already(tmp_path):
  madvise = tmp_path / "enabled"
  madvise.write_text("always [madvise] never\n")
  never = tmp_path / "never"
  never.write_text("always madvise [never]\n")
  glibc = ("glibc", "2.36")
  assert hugepages.wanted({}, glibc, str(madvise))
  assert not hugepages.wanted({}, glibc, str(never))  # the kernel's THP off
  assert not hugepages.wanted({}, glibc, str(tmp_path / "missing"))  # no THP at all
  assert not hugepages.wanted({}, ("glibc", "2.34"), str(madvise))  # no such tunable yet
  assert not hugepages.wanted({}, ("", ""), str(madvise))  # musl, macOS
  # Already set (1, or 0 to opt out): no restart.
  assert not hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, glibc, str(madvise))
  assert hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, glibc, str(madvise))
  assert hugepages.tunables({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == (
      "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
  assert hugepages.tunables({}) == "glibc.malloc.hugetlb=1"


def test_reexec_restarts_the_process_with_the_tunable_and_its_arguments():
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  script = ("from fsq_repro import hugepages; hugepages.reexec(); import os, sys; "
            "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")
  out = subprocess.run([sys.executable, "-c", script, "a", "b"], env=env, check=True,
                       capture_output=True, text=True).stdout.split("\n")[0]
  expected = "glibc.malloc.hugetlb=1" if hugepages.wanted(env) else "None"
  assert out == f"{expected} ['a', 'b']"
