"""Enumerates a config's sweep (its get_sweep()) and prints, runs, or prints pod/cluster recipes.

  python scripts/sweep.py --config=configs/tradeoff_128.py --root=/data/runs/tradeoff_128 --print
  python scripts/sweep.py --config=configs/demo.py --root=/tmp/demo_sweep --run --only='fsq_*' \
      -- --config.stage1.num_train_steps=100
  python scripts/sweep.py --config=configs/maskgit_256.py --root=/mnt/shared/maskgit_256 \
      --tpu=my-v4-64 --zone=us-central2-b --accelerator_type=v4-64
  python scripts/sweep.py --config=configs/maskgit_256.py --root=/shared/runs/maskgit_256 \
      --slurm --nodes=4 --gpus_per_node=8 > maskgit_256.sbatch && sbatch maskgit_256.sbatch

Every run gets the workdir <root>/<name> and three stages, stage1, stage2 and eval, each a
`python -m fsq_repro.main` command from the repository root; arguments after `--` go to every
command. main.py skips a stage that is already complete and resumes one from its checkpoints,
so rerunning a sweep continues it. --run reruns a stage that exits with the preemption status
(75). <root>/sweep.json lists the runs (merged with any earlier listing) for plot_figures.py.

--tpu prints the whole pod recipe, to run from this checkout's root: create the TPU VM unless
it exists, copy this checkout's commit (git archive) to every worker at --repo (default
~/fsq_repro), install there with `make install ACCEL=tpu`, then one line per stage run on every
worker with that environment's Python (jax.distributed finds its peers from the TPU
environment). --slurm prints a batch script for a GPU cluster whose nodes share the checkout
at --repo: one process per node (srun), installed with `make install ACCEL=cuda12`.
"""

import argparse
import collections
import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from typing import Callable, NamedTuple

from fsq_repro import config_lib, files, timing
from fsq_repro.checkpoints import PREEMPTED_EXIT_CODE
from fsq_repro.models import factory

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("stage1", "stage2", "eval")
TPU_REPO = "~/fsq_repro"  # where --tpu puts the code on the workers
VENV_PYTHON = ".venv/bin/python"  # what `make install` creates, relative to the checkout
# TPU VM images carry Python 3.10; the pins are tested on 3.11 (deadsnakes' build on Ubuntu).
TPU_PYTHON_SETUP = ("command -v python3.11 > /dev/null || (sudo add-apt-repository -y "
                    "ppa:deadsnakes/ppa && sudo apt-get update -q && sudo apt-get install -y -q "
                    "python3.11 python3.11-venv make)")


class SweepError(Exception):
  """A run failed or the sweep is misconfigured; the message names what and where."""


class Step(NamedTuple):
  run: str  # the run's name
  stage: str
  argv: list[str]
  group: str = ""  # runs of one group run in order on one worker (they share a Stage I)


def load_sweep(config_file: str) -> list[dict]:
  """The config file's get_sweep(): [{"name": ..., "arg": ...}], checked for unique, safe names."""
  if not os.path.isfile(config_file):
    raise ValueError(f"--config={config_file} is not a file; pass a config such as "
                     "configs/tradeoff_128.py")
  module = config_lib.config_module(config_file)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"--config={config_file} has no get_sweep(); use a config that defines one")
  runs = module.get_sweep()
  names = [run["name"] for run in runs]
  for name in names:
    if not name or "/" in name or name != name.strip() or names.count(name) > 1:
      raise ValueError(f"get_sweep() of {config_file} has a bad or repeated run name {name!r}; "
                       "names must be unique and usable as directory names")
  for i, run in enumerate(runs):
    if "stage1_from" in run and run["stage1_from"] not in names[:i]:
      raise ValueError(f"get_sweep() of {config_file}: run {run['name']!r} has stage1_from="
                       f"{run['stage1_from']!r}, which must name an earlier run")
  return runs


def select_runs(runs: list[dict], only: str | None) -> list[dict]:
  """The runs whose names match any comma-separated name or glob in `only` (all if None)."""
  if not only:
    return runs
  names = [run["name"] for run in runs]
  chosen = set()
  for pattern in filter(None, only.split(",")):
    matches = fnmatch.filter(names, pattern)
    if not matches:
      raise ValueError(f"--only={pattern!r} matches no run; valid names: {', '.join(names)}")
    chosen.update(matches)
  return [run for run in runs if run["name"] in chosen]


def longest_first(runs: list[dict], config_file: str) -> list[dict]:
  """The runs, largest codebook first (stable): every stage's cost grows with |C| (VQ's
  distances and entropy loss, Stage II's output layer, the compression cost's softmax), so
  side-by-side workers start the longest runs and end on short ones, not on one long run
  alone (the demo's vq_2p12 ran its last 9 minutes alone in sweep.json order). A run's
  config is its own "config" (sweep.json entries name one), else `config_file`."""
  size = {run["name"]: factory.codebook_size(config_lib.config_module(
      run.get("config", config_file)).get_config(run["arg"]).quantizer) for run in runs}
  return sorted(runs, key=lambda run: -size[run["name"]])


def repo_relative(path: str) -> str:
  """A path inside the repository relative to its root (commands run there), else absolute."""
  path = os.path.abspath(path)
  relative = os.path.relpath(path, REPO_ROOT)
  return path if relative.startswith("..") else relative


def sweep_steps(runs, config_file: str, root: str, overrides, python: str = "python") -> list[Step]:
  """One Step per (run, stage), in order: every stage of a run before the next run. A run
  with "stage1_from" (another run's name: UViM's Stage II seeds) trains no Stage I of its own
  but reads that run's (--config.stage1_workdir), and runs after it, in its group."""
  steps = []
  for run in runs:
    workdir = os.path.join(root, run["name"])
    source = run.get("stage1_from")
    shared = [f"--config.stage1_workdir={os.path.join(root, source)}"] if source else []
    for stage in STAGES[1:] if source else STAGES:
      argv = [python, "-m", "fsq_repro.main", f"--mode={stage}",
              f"--config={config_file}:{run['arg']}", f"--workdir={workdir}", *shared,
              *overrides]
      steps.append(Step(run["name"], stage, argv, source or run["name"]))
  return steps


def write_manifest(root: str, runs, config_file: str, overrides) -> str:
  """Writes <root>/sweep.json; entries of earlier sweeps into the same root are kept."""
  path = os.path.join(root, "sweep.json")
  listed = []
  if os.path.exists(path):
    with open(path) as f:
      listed = json.load(f)["runs"]
  new = {run["name"]: {"name": run["name"], "arg": run["arg"],
                       "workdir": os.path.join(root, run["name"]), "config": config_file,
                       "overrides": list(overrides)} for run in runs}
  merged = [new.pop(entry["name"], entry) for entry in listed] + list(new.values())
  with files.atomic_write(path) as f:
    json.dump({"runs": merged}, f, indent=1)
  return path


def remote_cd(repo: str) -> str:
  """`cd repo`, with a leading ~/ left for the remote shell to expand."""
  return "cd ~/" + shlex.quote(repo[2:]) if repo.startswith("~/") else "cd " + shlex.quote(repo)


def gcloud_line(command: str, tpu: str, zone: str, repo: str, worker: str = "all") -> str:
  """A gcloud ssh line running the shell `command` from `repo` on the TPU VM's workers."""
  return (f"gcloud compute tpus tpu-vm ssh {shlex.quote(tpu)} --zone={shlex.quote(zone)} "
          f"--worker={worker} --command={shlex.quote(remote_cd(repo) + ' && ' + command)}")


def checkout_commit() -> tuple[str, bool]:
  """(this checkout's HEAD commit, whether tracked files differ from it)."""
  def git(*args):
    return subprocess.run(["git", "-C", REPO_ROOT, *args], capture_output=True, text=True,
                          check=True).stdout.strip()
  return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))


def tpu_setup_lines(tpu: str, zone: str, repo: str, commit: str, accelerator_type: str,
                    runtime_version: str) -> list[str]:
  """Create-unless-present, code at `commit` onto every worker at `repo`, install there."""
  archive = f"fsq_repro-{commit[:12]}.tar.gz"
  tpu_q, zone_q = shlex.quote(tpu), shlex.quote(zone)
  unpack = (f"{TPU_PYTHON_SETUP} && mkdir -p {repo} && tar -xzf ~/{archive} -C {repo} && "
            f"{remote_cd(repo)} && make install ACCEL=tpu PYTHON=python3.11")
  return [
      f"gcloud compute tpus tpu-vm describe {tpu_q} --zone={zone_q} > /dev/null 2>&1 || "
      f"gcloud compute tpus tpu-vm create {tpu_q} --zone={zone_q} "
      f"--accelerator-type={shlex.quote(accelerator_type)} "
      f"--version={shlex.quote(runtime_version)}",
      f"git archive --format=tar.gz --output=/tmp/{archive} {commit}",
      f"gcloud compute tpus tpu-vm scp /tmp/{archive} {tpu_q}:{archive} --zone={zone_q} "
      "--worker=all",
      f"gcloud compute tpus tpu-vm ssh {tpu_q} --zone={zone_q} --worker=all "
      f"--command={shlex.quote(unpack)}",
  ]


def tpu_lines(runs, config_file: str, root: str, overrides, tpu: str, zone: str,
              repo: str) -> list[str]:
  """A line for worker 0 that writes sweep.json, then one per stage for every worker.

  On a pod every host runs the same command; jax.distributed finds its peers from the TPU
  environment.
  """
  manifest = [VENV_PYTHON, "scripts/sweep.py", f"--config={config_file}", f"--root={root}",
              f"--only={','.join(run['name'] for run in runs)}", "--print", "--", *overrides]
  lines = [gcloud_line(shlex.join(manifest) + " > /dev/null", tpu, zone, repo, worker="0")]
  for step in sweep_steps(runs, config_file, root, overrides, python=VENV_PYTHON):
    lines.append(gcloud_line(shlex.join(step.argv), tpu, zone, repo))
  return lines


def slurm_script(runs, config_file: str, root: str, overrides, *, repo: str, nodes: int,
                 gpus_per_node: int, time_limit: str, job_name: str) -> str:
  """An sbatch script: every stage of every run as one srun of one process per node."""
  manifest = [VENV_PYTHON, "scripts/sweep.py", f"--config={config_file}", f"--root={root}",
              f"--only={','.join(run['name'] for run in runs)}", "--print", "--", *overrides]
  lines = [
      "#!/bin/bash",
      f"#SBATCH --job-name={job_name}",
      f"#SBATCH --nodes={nodes}",
      "#SBATCH --ntasks-per-node=1",
      f"#SBATCH --gpus-per-node={gpus_per_node}",
      f"#SBATCH --time={time_limit}",
      "#SBATCH --requeue",
      f"# Install once, on a node that shares {repo}: cd {repo} && make install ACCEL=cuda12",
      "# One process per node sees all of its GPUs; jax.distributed finds its peers from",
      "# SLURM's variables. A requeued job skips finished stages and resumes the current one.",
      "set -uo pipefail",
      remote_cd(repo),
      "stage() {  # reruns a stage that exits 75 (preempted); stops on any other failure",
      "  while true; do",
      f'    srun --nodes={nodes} --ntasks-per-node=1 "$@"; status=$?',
      '    [ "$status" -eq 0 ] && return 0',
      '    [ "$status" -eq 75 ] || exit "$status"',
      "  done",
      "}",
      shlex.join(manifest) + " > /dev/null",
  ]
  lines += ["stage " + shlex.join(step.argv)
            for step in sweep_steps(runs, config_file, root, overrides, python=VENV_PYTHON)]
  return "\n".join(lines) + "\n"


def read_timings(root: str, runs) -> list[tuple[str, str, dict]]:
  """(run, stage, timings.json) of every stage of `runs` under `root` that wrote one."""
  found = []
  for run in runs:
    for stage in STAGES:
      path = os.path.join(root, run["name"], stage, timing.FILENAME)
      if os.path.exists(path):
        with open(path) as f:
          found.append((run["name"], stage, json.load(f)))
  return found


def profile_table(timings: list[tuple[str, str, dict]]) -> str:
  """A markdown table: per run and stage, seconds in each phase (steps also per step), the
  rest ("other": tear-down, writing results) and the total; then each stage's sum."""
  phases = list(dict.fromkeys(p for _, _, t in timings for p in t["phases_s"]))
  header = ["run", "stage", *phases, "other", "total"]
  rows, sums = [], {}

  def cells(t):
    out = []
    for p in phases:
      seconds = t["phases_s"].get(p)
      per = t.get("per_unit_s", {}).get(p)
      cell = "" if seconds is None else f"{seconds:.1f}"
      if seconds is not None and p == "steps" and per is not None:
        cell += f" ({t['counts'][p]} x {per * 1000:.0f} ms)"
      out.append(cell)
    other = t["total_s"] - sum(t["phases_s"].values())
    return out + [f"{other:.1f}", f"{t['total_s']:.1f}"]

  for name, stage, t in timings:
    rows.append([name, stage, *cells(t)])
    total = sums.setdefault(stage, {"phases_s": {}, "total_s": 0.0})
    total["total_s"] += t["total_s"]
    for p, seconds in t["phases_s"].items():
      total["phases_s"][p] = total["phases_s"].get(p, 0.0) + seconds
  for stage, total in sums.items():
    rows.append(["all runs", stage, *cells(total)])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def estimate_remaining(durations: dict, remaining_stages: list[str]) -> float | None:
  """Seconds left: each stage takes the mean of completed stages of its kind (else of all)."""
  completed = [d for stage_durations in durations.values() for d in stage_durations]
  if not completed:
    return None
  overall = sum(completed) / len(completed)
  return sum(sum(durations[s]) / len(durations[s]) if durations.get(s) else overall
             for s in remaining_stages)


def run_command(argv: list[str]) -> int:
  """Runs one stage from the repository root; its output streams to this terminal."""
  return subprocess.run(argv, cwd=REPO_ROOT, check=False).returncode


def pinned_runner(core: int, log_dir: str) -> Callable[[list[str]], int]:
  """Runs stages on CPU core `core` alone (taskset) with one XLA, TF and BLAS thread, output
  into <log_dir>/<run>-<mode>.log: two such runners keep two cores busy with two runs,
  overlapping what one run cannot spread over cores (start-up, compilation, Python)."""
  # On one core (taskset) XLA:CPU's thread pool has one thread; Eigen's must be told.
  xla_flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false"
  env = dict(os.environ, XLA_FLAGS=xla_flags.strip(), TF_NUM_INTRAOP_THREADS="1",
             TF_NUM_INTEROP_THREADS="1", OPENBLAS_NUM_THREADS="1")

  def run(argv: list[str]) -> int:
    flags = dict(a.split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    name = f"{os.path.basename(flags['--workdir'])}-{flags['--mode']}.log"
    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, name), "a") as out:
      return subprocess.run(["taskset", "-c", str(core), *argv], cwd=REPO_ROOT, env=env,
                            stdout=out, stderr=subprocess.STDOUT, check=False).returncode
  return run


def run_stage(step: Step, runner: Callable[[list[str]], int], *, max_preemptions: int,
              log: Callable[[str], None], where: str) -> None:
  """Runs one stage; reruns it while it exits preempted (75); raises SweepError if it fails."""
  status = runner(step.argv)
  preemptions = 0
  while status == PREEMPTED_EXIT_CODE and preemptions < max_preemptions:
    preemptions += 1
    log(f"[{where}] preempted (exit status {status}); resuming, retry "
        f"{preemptions}/{max_preemptions}")
    status = runner(step.argv)
  if status == PREEMPTED_EXIT_CODE:
    raise SweepError(f"run {step.run}, stage {step.stage} was preempted {preemptions + 1} times; "
                     "rerun the sweep to resume it")
  if status != 0:
    raise SweepError(f"run {step.run}, stage {step.stage} failed with exit status {status}; "
                     f"command: {shlex.join(step.argv)}")


def run_steps(steps: list[Step], runner: Callable[[list[str]], int] = run_command, *,
              max_preemptions: int = 10, clock: Callable[[], float] = time.monotonic,
              log: Callable[[str], None] = print) -> None:
  """Runs the steps in order; reruns a preempted stage, raises SweepError on the first failure."""
  run_names = list(dict.fromkeys(step.run for step in steps))
  start = clock()
  durations = {}
  for i, step in enumerate(steps):
    where = f"run {run_names.index(step.run) + 1}/{len(run_names)} {step.run}, {step.stage}"
    eta = estimate_remaining(durations, [s.stage for s in steps[i:]])
    log(f"[{where}] starting; elapsed {format_seconds(clock() - start)}, "
        f"ETA {'unknown' if eta is None else format_seconds(eta)}")
    stage_start = clock()
    run_stage(step, runner, max_preemptions=max_preemptions, log=log, where=where)
    durations.setdefault(step.stage, []).append(clock() - stage_start)
    log(f"[{where}] done in {format_seconds(durations[step.stage][-1])}")
  log(f"sweep done: {len(run_names)} runs in {format_seconds(clock() - start)}")


def run_side_by_side(steps: list[Step], runners: list[Callable[[list[str]], int]], *,
                     max_preemptions: int = 10, clock: Callable[[], float] = time.monotonic,
                     log: Callable[[str], None] = print) -> None:
  """Runs whole runs on len(runners) workers at once, each run's stages in order on one
  worker (worker i runs its stages with runners[i]); raises the first SweepError once every
  worker has stopped, and starts no run after a failure."""
  runs = collections.deque(
      [step for step in steps if (step.group or step.run) == name]
      for name in dict.fromkeys(s.group or s.run for s in steps))
  total, start, lock, errors = len(runs), clock(), threading.Lock(), []
  durations, left = {}, [step.stage for step in steps]  # finished stages' seconds, unstarted

  def locked_log(message: str) -> None:
    with lock:
      log(message)

  def worker(index: int) -> None:
    while True:
      with lock:
        if errors or not runs:
          return
        run_steps_ = runs.popleft()
        number = total - len(runs)
      for step in run_steps_:
        where = f"run {number}/{total} {step.run}, {step.stage}, worker {index}"
        with lock:
          left.remove(step.stage)
          eta = estimate_remaining(durations, left + [step.stage])
          log(f"[{where}] starting; elapsed {format_seconds(clock() - start)}, ETA "
              f"{'unknown' if eta is None else format_seconds(eta / len(runners))}")
        stage_start = clock()
        try:
          run_stage(step, runners[index], max_preemptions=max_preemptions, log=locked_log,
                    where=where)
        except SweepError as e:
          with lock:
            errors.append(e)
          return
        with lock:
          durations.setdefault(step.stage, []).append(clock() - stage_start)
        locked_log(f"[{where}] done in {format_seconds(clock() - stage_start)}")

  threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(runners))]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  if errors:
    raise errors[0]
  log(f"sweep done: {total} runs in {format_seconds(clock() - start)} on {len(runners)} "
      "workers")


def parse_args(argv: list[str]):
  """Flags before `--`; everything after it is passed to every main.py command."""
  overrides = []
  if "--" in argv:
    split = argv.index("--")
    argv, overrides = argv[:split], argv[split + 1:]
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="config file with get_sweep()")
  parser.add_argument("--only", help="comma-separated run names or globs, e.g. 'fsq_*,vq_2p10'")
  parser.add_argument("--root", help="sweep root; run workdirs are <root>/<name> "
                      "(default: runs/<config name>)")
  mode = parser.add_mutually_exclusive_group(required=True)
  mode.add_argument("--print", action="store_true", help="print the commands")
  mode.add_argument("--run", action="store_true", help="run the commands here, in order")
  mode.add_argument("--tpu", help="TPU VM name: print the pod recipe (create, copy, install, "
                    "run every stage on every worker)")
  mode.add_argument("--slurm", action="store_true",
                    help="print an sbatch script for a multi-node GPU cluster")
  mode.add_argument("--profile", action="store_true",
                    help="print where the runs' wall time went (their timings.json files)")
  parser.add_argument("--zone", help="the TPU's zone (with --tpu)")
  parser.add_argument("--accelerator_type", default="v4-32",
                      help="TPU type to create if the VM does not exist (with --tpu)")
  parser.add_argument("--runtime_version", default="tpu-ubuntu2204-base",
                      help="TPU VM software version to create it with (with --tpu)")
  parser.add_argument("--repo", help=f"checkout path on the workers (--tpu: default "
                      f"{TPU_REPO}; --slurm: default this checkout, shared with the nodes)")
  parser.add_argument("--nodes", type=int, default=1, help="nodes (with --slurm)")
  parser.add_argument("--gpus_per_node", type=int, default=8, help="with --slurm")
  parser.add_argument("--time", default="7-00:00:00", help="job time limit (with --slurm)")
  parser.add_argument("--jobs", type=int, default=1,
                      help="with --run: runs side by side, largest codebook first, each pinned "
                      "to one CPU core with one XLA thread, its output in <root>/logs/ "
                      "(default 1: one run at a time, in get_sweep() order, on every core)")
  parser.add_argument("--max_preemptions", type=int, default=10,
                      help="reruns of a stage that exits with status 75 (with --run)")
  args = parser.parse_args(argv)
  if args.tpu and not args.zone:
    parser.error("--tpu needs --zone, e.g. --zone=us-central2-b")
  if args.jobs < 1 or (args.jobs > 1 and not args.run):
    parser.error(f"--jobs={args.jobs}: give a positive number of side-by-side runs, with --run")
  if args.jobs > 1 and not shutil.which("taskset"):
    parser.error("--jobs > 1 pins each run to a core with taskset (util-linux), which is "
                 "missing here; use --jobs=1")
  if args.repo is None:
    args.repo = TPU_REPO if args.tpu else REPO_ROOT
  return args, overrides


def main(argv: list[str] | None = None) -> int:
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    runs = select_runs(load_sweep(args.config), args.only)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  config_file = repo_relative(args.config)
  root = args.root or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
  if args.tpu:  # the root is a path on the TPU VMs (a relative one: relative to --repo)
    commit, dirty = checkout_commit()
    print(f"# {len(runs)} runs on TPU {args.tpu}: run these lines in order from this checkout's "
          "root; a stage that exits 75 (preempted) resumes when its line is rerun. --root "
          f"({root}) must be a directory every worker shares (a Filestore or gcsfuse mount).")
    if dirty:
      print(f"# warning: uncommitted changes are not in commit {commit[:12]}, which the "
            "workers get; commit them first")
    for line in tpu_setup_lines(args.tpu, args.zone, args.repo, commit,
                                args.accelerator_type, args.runtime_version):
      print(line)
    for line in tpu_lines(runs, config_file, root, overrides, args.tpu, args.zone, args.repo):
      print(line)
    return 0
  if args.slurm:
    job_name = "fsq_" + os.path.splitext(os.path.basename(args.config))[0]
    print(slurm_script(runs, config_file, root, overrides, repo=args.repo, nodes=args.nodes,
                       gpus_per_node=args.gpus_per_node, time_limit=args.time,
                       job_name=job_name), end="")
    return 0
  root = os.path.abspath(root)
  if args.profile:
    timings = read_timings(root, runs)
    if not timings:
      print(f"error: no {timing.FILENAME} under {root}; run the sweep first", file=sys.stderr)
      return 2
    print(profile_table(timings))
    return 0
  write_manifest(root, runs, config_file, overrides)
  if args.print:
    print(f"# {len(runs)} runs, from the repository root {REPO_ROOT}:")
    for step in sweep_steps(runs, config_file, root, overrides):
      print(shlex.join(step.argv))
    return 0
  if args.jobs > 1:
    runs = longest_first(runs, config_file)
  steps = sweep_steps(runs, config_file, root, overrides, python=sys.executable)
  try:
    if args.jobs > 1:
      cores = sorted(os.sched_getaffinity(0))
      runners = [pinned_runner(cores[i % len(cores)], os.path.join(root, "logs"))
                 for i in range(args.jobs)]
      run_side_by_side(steps, runners, max_preemptions=args.max_preemptions)
    else:
      run_steps(steps, run_command, max_preemptions=args.max_preemptions)
  except SweepError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
