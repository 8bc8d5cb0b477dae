"""scripts/sweep.py and the figure configs' get_sweep(): commands, filters, manifest, run loop."""

import json
import math
import os
import shlex
import subprocess
import sys
import time

import pytest

from fsq_repro import config_lib
from fsq_repro.models import factory
from fsq_repro.quantizers.fsq import levels_for_codebook_size
from fsq_repro.checkpoints import PREEMPTED_EXIT_CODE
from scripts import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = ("configs/tradeoff_128.py", "configs/maskgit_256.py", "configs/demo.py")
FIGURE3_BITS = (4, 6, 8, 9, 10, 11, 12, 14, 16)


def load_config_module(path):
  return config_lib.config_module(os.path.join(REPO, path))


def print_commands(capsys, *argv):
  """Runs sweep.main(argv) and returns its stdout lines that are commands (not comments)."""
  assert sweep.main(list(argv)) == 0
  return [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]


def parse_flags(argv):
  return dict(arg.split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)


def test_print_lists_every_figure3_run(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(REPO)
  lines = print_commands(capsys, "--config=configs/tradeoff_128.py", f"--root={tmp_path}",
                         "--print")
  expected = [(f"{q}_2p{b}", f"quantizer={q},codebook_bits={b}")
              for q in ("fsq", "vq") for b in FIGURE3_BITS]
  expected += [(f"fsq_L{l}", f"quantizer=fsq,levels={l}")
               for l in ("4-4-4-4", "4-4-4-4-4", "4-4-4-4-4-4")]
  assert len(lines) == 3 * len(expected)
  for i, (name, arg) in enumerate(expected):
    for j, stage in enumerate(("stage1", "stage2", "eval")):
      argv = shlex.split(lines[3 * i + j])
      assert argv[:3] == ["python", "-m", "fsq_repro.main"]
      assert parse_flags(argv) == {"--mode": stage,
                                   "--config": f"configs/tradeoff_128.py:{arg}",
                                   "--workdir": str(tmp_path / name)}
  manifest = json.loads((tmp_path / "sweep.json").read_text())["runs"]
  assert [(r["name"], r["arg"]) for r in manifest] == expected
  assert manifest[0]["workdir"] == str(tmp_path / "fsq_2p4")
  assert manifest[0]["config"] == "configs/tradeoff_128.py"


def test_only_filters_by_name_and_glob_and_keeps_manifest_entries(tmp_path, capsys):
  config = os.path.join(REPO, "configs/tradeoff_128.py")
  lines = print_commands(capsys, f"--config={config}", f"--root={tmp_path}", "--print",
                         "--only=vq_2p1*,fsq_2p8")
  workdirs = [parse_flags(shlex.split(line))["--workdir"] for line in lines[::3]]
  assert workdirs == [str(tmp_path / n) for n in ("fsq_2p8", "vq_2p10", "vq_2p11", "vq_2p12",
                                                   "vq_2p14", "vq_2p16")]
  print_commands(capsys, f"--config={config}", f"--root={tmp_path}", "--print", "--only=vq_2p4")
  manifest = json.loads((tmp_path / "sweep.json").read_text())["runs"]
  assert [r["name"] for r in manifest] == ["fsq_2p8", "vq_2p10", "vq_2p11", "vq_2p12", "vq_2p14",
                                           "vq_2p16", "vq_2p4"]


def test_unknown_only_name_is_a_clear_error(tmp_path, capsys):
  argv = [f"--config={REPO}/configs/tradeoff_128.py", f"--root={tmp_path}", "--print",
          "--only=fsq_2p10,fsq_2p13"]
  assert sweep.main(argv) == 2
  err = capsys.readouterr().err
  assert "--only='fsq_2p13' matches no run" in err
  assert "fsq_2p10" in err and "vq_2p16" in err and "fsq_L4-4-4-4-4" in err
  assert not (tmp_path / "sweep.json").exists()


def test_overrides_after_double_dash_reach_every_command(tmp_path, capsys):
  overrides = ["--config.stage1.num_train_steps=100", "--config.eval.num_images=64"]
  lines = print_commands(capsys, f"--config={REPO}/configs/maskgit_256.py", f"--root={tmp_path}",
                         "--print", "--", *overrides)
  assert len(lines) == 6
  for line in lines:
    assert shlex.split(line)[-2:] == overrides
  manifest = json.loads((tmp_path / "sweep.json").read_text())["runs"]
  assert all(r["overrides"] == overrides for r in manifest)


def test_tpu_prints_the_whole_pod_recipe(capsys):
  """Create unless present, this commit onto every worker, install with ACCEL=tpu there, then
  every stage on every worker with the installed Python; no path of this machine."""
  lines = print_commands(capsys, f"--config={REPO}/configs/maskgit_256.py", "--root=/mnt/runs",
                         "--tpu=pod-a", "--zone=us-central2-b", "--accelerator_type=v4-64",
                         "--", "--config.seed=3")
  assert not any(REPO in line for line in lines)
  commit, _ = sweep.checkout_commit()
  create, archive, copy, install, manifest_line, *stage_lines = lines
  assert create == ("gcloud compute tpus tpu-vm describe pod-a --zone=us-central2-b > /dev/null "
                    "2>&1 || gcloud compute tpus tpu-vm create pod-a --zone=us-central2-b "
                    "--accelerator-type=v4-64 --version=tpu-ubuntu2204-base")
  tarball = f"fsq_repro-{commit[:12]}.tar.gz"
  assert shlex.split(archive) == ["git", "archive", "--format=tar.gz",
                                  f"--output=/tmp/{tarball}", commit]
  assert shlex.split(copy) == ["gcloud", "compute", "tpus", "tpu-vm", "scp", f"/tmp/{tarball}",
                               f"pod-a:{tarball}", "--zone=us-central2-b", "--worker=all"]
  install = shlex.split(install)
  assert install[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod-a",
                         "--zone=us-central2-b", "--worker=all"]
  remote = install[8].removeprefix("--command=").split(" && ")
  assert remote[-3:] == [f"tar -xzf ~/{tarball} -C ~/fsq_repro", "cd ~/fsq_repro",
                         "make install ACCEL=tpu PYTHON=python3.11"]
  assert "python3.11" in remote[0]  # TPU VM images carry Python 3.10

  manifest_line = shlex.split(manifest_line)
  assert "--worker=0" in manifest_line
  assert manifest_line[-1].startswith("--command=cd ~/fsq_repro && .venv/bin/python "
                                      "scripts/sweep.py")
  assert len(stage_lines) == 6
  for line, (name, stage) in zip(stage_lines, [(n, s) for n in ("fsq_2p10", "vq_2p10")
                                               for s in ("stage1", "stage2", "eval")]):
    argv = shlex.split(line)
    assert argv[:8] == install[:8] and len(argv) == 9
    flag, command = argv[8].split("=", 1)
    cd, remote = command.split(" && ")
    assert flag == "--command" and cd == "cd ~/fsq_repro"
    remote = shlex.split(remote)
    assert remote[:3] == [".venv/bin/python", "-m", "fsq_repro.main"]
    assert remote[-1] == "--config.seed=3"
    assert parse_flags(remote)["--mode"] == stage
    assert parse_flags(remote)["--workdir"] == f"/mnt/runs/{name}"


def test_tpu_repo_path_is_used_on_the_workers(capsys):
  lines = print_commands(capsys, f"--config={REPO}/configs/demo.py", "--root=runs",
                         "--tpu=pod-a", "--zone=z", "--repo=/home/me/fsq", "--only=fsq_2p6")
  assert "mkdir -p /home/me/fsq && tar -xzf" in lines[3]
  assert all("--command='cd /home/me/fsq && .venv/bin/python" in line for line in lines[4:])


def test_slurm_prints_a_batch_script_of_every_stage(capsys):
  assert sweep.main([f"--config={REPO}/configs/maskgit_256.py", "--root=/shared/runs",
                     "--slurm", "--nodes=4", "--gpus_per_node=8", "--repo=/shared/fsq",
                     "--", "--config.seed=3"]) == 0
  script = capsys.readouterr().out
  assert script.startswith("#!/bin/bash\n")
  for directive in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--requeue"):
    assert f"#SBATCH {directive}\n" in script
  assert "make install ACCEL=cuda12" in script and "\ncd /shared/fsq\n" in script
  assert 'srun --nodes=4 --ntasks-per-node=1 "$@"' in script
  stages = [shlex.split(line)[1:] for line in script.splitlines() if line.startswith("stage .")]
  assert len(stages) == 6
  for argv, (name, stage) in zip(stages, [(n, s) for n in ("fsq_2p10", "vq_2p10")
                                          for s in ("stage1", "stage2", "eval")]):
    assert argv[:3] == [".venv/bin/python", "-m", "fsq_repro.main"]
    assert parse_flags(argv)["--mode"] == stage and argv[-1] == "--config.seed=3"
    assert parse_flags(argv)["--workdir"] == f"/shared/runs/{name}"


@pytest.mark.parametrize("accel,extra", [("cuda12", "jax[cuda12]"), ("tpu", "jax[tpu]")])
def test_make_install_adds_the_pinned_jax_accelerator_extra(tmp_path, accel, extra):
  pinned = next(line.split("==")[1].strip() for line in open(os.path.join(REPO,
                "requirements.txt")) if line.startswith("jax=="))
  dry_run = subprocess.run(["make", "-n", "install", f"ACCEL={accel}", f"VENV={tmp_path}/v"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout
  assert f'pip install --quiet --disable-pip-version-check "{extra}=={pinned}"' in dry_run
  assert "-r requirements.txt" in dry_run  # the same pins first
  unknown = subprocess.run(["make", "-n", "install", "ACCEL=rocm"], cwd=REPO,
                           capture_output=True, text=True)
  assert unknown.returncode != 0 and "ACCEL=rocm is unknown" in unknown.stderr


def test_profile_tabulates_the_stages_timings(tmp_path, capsys):
  for name, steps in (("fsq_2p6", 349), ("vq_2p6", 199)):
    for stage in ("stage1", "eval"):
      phases = ({"startup": 8.0, "setup": 2.0, "first_step": 3.0, "steps": 6.98}
                if stage == "stage1" else {"startup": 7.0, "sampling": 9.0})
      path = tmp_path / name / stage / "timings.json"
      path.parent.mkdir(parents=True)
      path.write_text(json.dumps({"total_s": 20.0, "phases_s": phases,
                                  "counts": {"first_step": 1, "steps": steps},
                                  "per_unit_s": {"steps": 6.98 / steps}}))
  assert sweep.main([f"--config={REPO}/configs/demo.py", f"--root={tmp_path}", "--profile",
                     "--only=*_2p6"]) == 0
  rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()]
  assert rows[0] == ["| run", "stage", "startup", "setup", "first_step", "steps", "sampling",
                     "other", "total |"]
  assert rows[2] == ["| fsq_2p6", "stage1", "8.0", "2.0", "3.0", "7.0 (349 x 20 ms)", "",
                     "0.0", "20.0 |"]
  assert rows[3][-3:] == ["9.0", "4.0", "20.0 |"]  # eval: 20 - 7 - 9 s elsewhere
  assert rows[6] == ["| all runs", "stage1", "16.0", "4.0", "6.0", "14.0", "", "0.0",
                     "40.0 |"]
  assert sweep.main([f"--config={REPO}/configs/demo.py", f"--root={tmp_path / 'none'}",
                     "--profile"]) == 2
  assert "no timings.json under" in capsys.readouterr().err


def test_tpu_needs_a_zone(capsys):
  with pytest.raises(SystemExit):
    sweep.main([f"--config={REPO}/configs/demo.py", "--tpu=pod-a"])
  assert "--zone" in capsys.readouterr().err


@pytest.mark.parametrize("config_file", CONFIG_FILES)
def test_every_sweep_entry_builds_a_valid_config_matching_its_name(config_file, tmp_path,
                                                                  monkeypatch):
  weights = tmp_path / "resnet50.msgpack"  # the paper configs' perceptual loss needs a file
  weights.write_bytes(b"")
  monkeypatch.setenv("FSQ_RESNET50_WEIGHTS", str(weights))
  module = load_config_module(config_file)
  runs = module.get_sweep()
  assert len({r["name"] for r in runs}) == len(runs)
  for run in runs:
    config = module.get_config(run["arg"])
    config_lib.validate(config, num_devices=1, stage="stage1")
    q = config.quantizer
    quantizer, size = run["name"].split("_", 1)
    assert q.kind == quantizer
    if size.startswith("2p"):
      bits = int(size[2:])
      if quantizer == "fsq":
        assert q.levels == levels_for_codebook_size(2**bits)
        assert round(math.log2(factory.codebook_size(q))) == bits
        assert q.codebook_size is None  # FSQ's size is prod(levels), stored nowhere else
      else:
        assert q.codebook_size == 2**bits
    else:  # explicit levels: "fsq_L4-4-4-4"
      assert size.startswith("L") and quantizer == "fsq"
      assert q.levels == config_lib.parse_levels(size[1:])
      assert factory.codebook_size(q) == math.prod(q.levels)


def test_figure_configs_follow_the_paper():
  tradeoff = load_config_module("configs/tradeoff_128.py")
  small = [tradeoff.get_config(r["arg"]).quantizer for r in tradeoff.get_sweep()
           if "levels=" in r["arg"]]
  assert sorted(factory.codebook_size(q) for q in small) == [2**8, 2**10, 2**12]
  assert all(min(q.levels) < 5 for q in small)
  vq = tradeoff.get_config("quantizer=vq,codebook_bits=12")
  assert vq.quantizer.entropy_loss_weight == 0.1
  assert (vq.dataset.image_size, vq.stage1.num_train_steps, vq.stage2.num_train_steps) == (
      128, 500_000, 1_000_000)

  maskgit = load_config_module("configs/maskgit_256.py")
  fsq, vq = maskgit.get_config("quantizer=fsq"), maskgit.get_config("quantizer=vq")
  assert fsq.quantizer.levels == (8, 5, 5, 5) and vq.quantizer.codebook_size == 1024
  assert (fsq.sample.cfg, vq.sample.cfg) == (0.2, 0.1)
  assert (fsq.dataset.image_size, fsq.stage1.num_train_steps, fsq.stage1.batch_size,
          fsq.stage2.num_train_steps, fsq.stage2.batch_size) == (256, 1_000_000, 512, 2_500_000, 256)
  assert min(fsq.eval.cfg_sweep) == 0.0 and max(fsq.eval.cfg_sweep) == 0.25


class FakeRunner:
  """Returns scripted exit statuses per stage command; records every call."""

  def __init__(self, statuses):
    self.statuses = {key: list(value) for key, value in statuses.items()}
    self.calls = []

  def __call__(self, argv):
    flags = parse_flags(argv)
    key = (os.path.basename(flags["--workdir"]), flags["--mode"])
    self.calls.append(key)
    queue = self.statuses.get(key)
    return queue.pop(0) if queue else 0


def demo_steps(tmp_path):
  runs = sweep.select_runs(sweep.load_sweep(os.path.join(REPO, "configs/demo.py")),
                           "fsq_2p6,vq_2p6")
  return sweep.sweep_steps(runs, "configs/demo.py", str(tmp_path), [])


def test_run_loop_reruns_a_preempted_stage_and_reports_progress(tmp_path):
  runner = FakeRunner({("fsq_2p6", "stage2"): [PREEMPTED_EXIT_CODE, PREEMPTED_EXIT_CODE, 0]})
  ticks = iter(range(0, 1000, 10))  # each clock reading advances 10 s
  messages = []
  sweep.run_steps(demo_steps(tmp_path), runner, max_preemptions=2, clock=lambda: next(ticks),
                  log=messages.append)
  assert runner.calls == [("fsq_2p6", "stage1"), ("fsq_2p6", "stage2"), ("fsq_2p6", "stage2"),
                          ("fsq_2p6", "stage2"), ("fsq_2p6", "eval"), ("vq_2p6", "stage1"),
                          ("vq_2p6", "stage2"), ("vq_2p6", "eval")]
  assert sum("preempted" in m for m in messages) == 2
  assert messages[0].startswith("[run 1/2 fsq_2p6, stage1] starting") and "ETA unknown" in messages[0]
  # Every stage took 10 s of fake clock (retries included); 3 stages are left at vq_2p6 stage1.
  vq_start = next(m for m in messages if m.startswith("[run 2/2 vq_2p6, stage1] starting"))
  assert "ETA 0:00:30" in vq_start
  assert messages[-1].startswith("sweep done: 2 runs")


def test_estimate_remaining_uses_per_stage_means():
  durations = {"stage1": [100.0, 300.0], "eval": [10.0]}
  assert sweep.estimate_remaining({}, ["stage1"]) is None
  # stage1 mean 200, stage2 unknown -> mean of all completed (410 / 3), eval 10.
  assert sweep.estimate_remaining(durations, ["stage1", "stage2", "eval"]) == pytest.approx(
      200 + 410 / 3 + 10)


def test_run_loop_stops_at_the_first_failure(tmp_path):
  runner = FakeRunner({("fsq_2p6", "stage2"): [1]})
  with pytest.raises(sweep.SweepError, match="run fsq_2p6, stage stage2 failed with exit status 1"):
    sweep.run_steps(demo_steps(tmp_path), runner, log=lambda m: None)
  assert runner.calls == [("fsq_2p6", "stage1"), ("fsq_2p6", "stage2")]


def test_run_loop_gives_up_after_bounded_preemptions(tmp_path):
  runner = FakeRunner({("fsq_2p6", "stage1"): [PREEMPTED_EXIT_CODE] * 10})
  with pytest.raises(sweep.SweepError, match="fsq_2p6, stage stage1 was preempted 4 times"):
    sweep.run_steps(demo_steps(tmp_path), runner, max_preemptions=3, log=lambda m: None)
  assert runner.calls == [("fsq_2p6", "stage1")] * 4


def all_demo_steps(tmp_path):
  runs = sweep.load_sweep(os.path.join(REPO, "configs/demo.py"))
  return sweep.sweep_steps(runs, "configs/demo.py", str(tmp_path), [])


class SlowRunner(FakeRunner):
  """A stage that takes a little time, so that both workers get runs."""

  def __call__(self, argv):
    time.sleep(0.02)
    return super().__call__(argv)


def test_side_by_side_runs_every_run_once_with_its_stages_in_order(tmp_path):
  preempted_once = {("fsq_2p8", "stage2"): [PREEMPTED_EXIT_CODE, 0]}  # on whichever worker
  runners = [SlowRunner(preempted_once), SlowRunner(preempted_once)]
  messages = []
  sweep.run_side_by_side(all_demo_steps(tmp_path), runners, log=messages.append)
  calls = runners[0].calls + runners[1].calls
  names = [f"{q}_2p{b}" for q in ("fsq", "vq") for b in (6, 8, 10, 12)]
  assert sorted(set(calls)) == sorted((n, s) for n in names for s in sweep.STAGES)
  assert len(calls) == 8 * 3 + 1  # and the preempted stage once more
  for runner in runners:  # a run stays on one worker, its stages in order
    for name in {n for n, _ in runner.calls}:
      stages = [s for n, s in runner.calls if n == name]
      assert [s for s in dict.fromkeys(stages)] == list(sweep.STAGES)
  assert runners[0].calls and runners[1].calls
  assert sum("preempted" in m for m in messages) == 1
  assert messages[-1].startswith("sweep done: 8 runs") and messages[-1].endswith("on 2 workers")


def test_side_by_side_order_starts_with_the_largest_codebooks():
  runs = sweep.load_sweep(os.path.join(REPO, "configs/demo.py"))
  ordered = sweep.longest_first(runs, os.path.join(REPO, "configs/demo.py"))
  # FSQ 2^12 has 4375 codes, VQ 4096; equal sizes keep get_sweep()'s order.
  assert [run["name"] for run in ordered] == ["fsq_2p12", "vq_2p12", "vq_2p10", "fsq_2p10",
                                               "vq_2p8", "fsq_2p8", "fsq_2p6", "vq_2p6"]
  # A run that names its config (as sweep.json entries do) is sized from it.
  named = [{**run, "config": os.path.join(REPO, "configs/demo.py")} for run in runs]
  assert [run["name"] for run in sweep.longest_first(named, None)] == [
      run["name"] for run in ordered]


def test_side_by_side_starts_no_run_after_a_failure(tmp_path):
  runners = [SlowRunner({("fsq_2p6", "stage1"): [1]}), SlowRunner({})]
  with pytest.raises(sweep.SweepError, match="run fsq_2p6, stage stage1 failed"):
    sweep.run_side_by_side(all_demo_steps(tmp_path), runners, log=lambda m: None)
  assert runners[0].calls == [("fsq_2p6", "stage1")]
  assert len({n for n, _ in runners[1].calls}) < 7  # the other worker stopped too


def test_pinned_runner_uses_one_core_one_thread_and_a_log_file(tmp_path):
  core = sorted(os.sched_getaffinity(0))[-1]
  run = sweep.pinned_runner(core, str(tmp_path / "logs"))
  probe = ("import os; print(sorted(os.sched_getaffinity(0)), os.environ['XLA_FLAGS'], "
           "os.environ['TF_NUM_INTRAOP_THREADS'])")
  assert run([sys.executable, "-c", probe, "--mode=stage1", "--workdir=/r/fsq_2p6"]) == 0
  out = (tmp_path / "logs" / "fsq_2p6-stage1.log").read_text().split()
  assert out[0] == f"[{core}]" and "--xla_cpu_multi_thread_eigen=false" in out
  assert out[-1] == "1"


def test_run_mode_runs_the_real_commands_with_this_interpreter(tmp_path, monkeypatch, capsys):
  seen = []
  monkeypatch.setattr(sweep, "run_command", lambda argv: seen.append(argv) or 0)
  assert sweep.main([f"--config={REPO}/configs/demo.py", f"--root={tmp_path}", "--run",
                     "--only=vq_2p8"]) == 0
  assert [parse_flags(a)["--mode"] for a in seen] == ["stage1", "stage2", "eval"]
  assert seen[0][0] == sweep.sys.executable
  assert "sweep done: 1 runs" in capsys.readouterr().out
