"""Chaos check: kill -9 or SIGTERM the demo runs at random moments; reruns must match bitwise.

  python scripts/chaos.py --trials 5 [--workdir /tmp/fsq_chaos] [--seed 0] [--scenarios ...] \
      [--set FIELD=VALUE ...]

Runs configs/demo.py (quantizer=fsq,codebook_bits=6) with shortened schedules (SHORT): once
uninterrupted as the reference (compiling), once more uninterrupted and warm to time its
phases (it must match the reference too). Then, per trial and scenario, it starts the same
command in a fresh workdir, interrupts it at a random moment drawn from those timings, reruns
the same command, and compares the final checkpoint (for Stage II also the extracted tokens)
bitwise with the reference. A moment that falls after the run's work is done is redrawn.

  stage1-kill9      SIGKILL at a uniformly random moment of the Stage I run (up to its last step)
  stage1-sigterm    SIGTERM at a random moment of Stage I training: exit 75 within
                    SIGTERM_BOUND_S with the current step saved; the rerun continues there
  extraction-kill9  SIGKILL between the first token shard and the last
  stage2-kill9      SIGKILL at a uniformly random moment of the Stage II run (up to its last step)
  stage2-sigterm    SIGTERM at a random moment of Stage II training, as for Stage I

Stage II runs train on the reference's Stage I (--config.stage1_workdir). All runs share one
JAX compilation cache under --workdir. Prints how many trials of each scenario survived with
identical results; exits 1 unless all did.
"""

import argparse
import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["JAX_PLATFORMS"] = "cpu"  # the runs and this process: bitwise checks are on the CPU
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
from fsq_repro import checkpoints
from fsq_repro import workdir as workdir_lib
from fsq_repro.data import tokens as tokens_lib

CONFIG = "--config=configs/demo.py:quantizer=fsq,codebook_bits=6"
SHORT = {"stage1.num_train_steps": 24, "stage1.checkpoint_every_steps": 6,
         "stage1.log_every_steps": 1, "stage1.image_every_steps": 12,
         "stage2.num_train_steps": 24, "stage2.checkpoint_every_steps": 6,
         "stage2.log_every_steps": 1, "stage2.batch_size": 16, "stage2.warmup_steps": 6}
STEPS = {"stage1": SHORT["stage1.num_train_steps"], "stage2": SHORT["stage2.num_train_steps"]}
SIGTERM_BOUND_S = 60  # a preempted run must have saved and exited within this
RUN_TIMEOUT_S = 1800
MARKER = "CHAOS_WORKDIR"  # marks a --workdir this script may empty
SCENARIOS = ("stage1-kill9", "stage1-sigterm", "extraction-kill9", "stage2-kill9",
             "stage2-sigterm")


class Run:
  """One CLI process (`program`, default `-m fsq_repro.main`), its log file and start time.

  It runs `mode` of `config` with the `overrides` {field: value} and the `extra` flags.
  """

  def __init__(self, mode, workdir, env, extra=(), *, config=CONFIG, overrides=None,
               program=("-m", "fsq_repro.main")):
    os.makedirs(workdir, exist_ok=True)
    self.mode, self.workdir = mode, workdir
    self.log = os.path.join(workdir, f"{mode}-{len(os.listdir(workdir))}.log")
    overrides = SHORT if overrides is None else overrides
    args = [sys.executable, *program, f"--mode={mode}", config,
            f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
    with open(self.log, "w") as out:
      self.process = subprocess.Popen(args + list(extra), cwd=ROOT, env=env, stdout=out,
                                      stderr=subprocess.STDOUT)
    self.started = time.time()

  def output(self) -> str:
    with open(self.log) as f:
      return f.read()

  def wait_until(self, condition, timeout=RUN_TIMEOUT_S) -> bool:
    """Polls `condition`; False if the process ends (or times out) first."""
    deadline = time.time() + timeout
    while not condition():
      if self.process.poll() is not None or time.time() > deadline:
        return False
      time.sleep(0.02)
    return True

  def wait(self, timeout=RUN_TIMEOUT_S) -> int:
    return self.process.wait(timeout=timeout)


def checkpoint_steps(workdir, mode) -> list[int]:
  return checkpoints.finished_steps(workdir_lib.checkpoint_dir(workdir, mode))


def first_shard_written(workdir) -> bool:
  return os.path.exists(tokens_lib.shard_path(workdir_lib.token_dir(workdir), 0, 0))


def tokens_complete(workdir) -> bool:
  return tokens_lib.is_complete(workdir_lib.token_dir(workdir))


def timed_run(mode, workdir, env, extra=(), events=None) -> dict:
  """Runs to the end, recording when each of `events` {name: condition} first held."""
  run, seen = Run(mode, workdir, env, extra), {}
  while run.process.poll() is None:
    for name, condition in (events or {}).items():
      if name not in seen and condition():
        seen[name] = time.time() - run.started
    time.sleep(0.05)
  if run.process.returncode != 0:
    sys.exit(f"uninterrupted {mode} run failed (rc {run.process.returncode}); see {run.log}")
  seen["end"] = time.time() - run.started
  return seen


def final_arrays(workdir, mode) -> dict:
  """{"g_params/encoder/...": numpy array} of the newest checkpoint of `mode` in `workdir`."""
  flat = {}

  def walk(tree, path):
    if isinstance(tree, (dict, list, tuple)):
      items = tree.items() if isinstance(tree, dict) else enumerate(tree)
      for key, value in items:
        walk(value, path + (str(key),))
    else:
      flat["/".join(path)] = np.asarray(tree)

  walk(checkpoints.restore_latest(workdir_lib.checkpoint_dir(workdir, mode)), ())
  return flat


def differences(reference, workdir, mode) -> str | None:
  """None when the final checkpoints (and Stage II's tokens) are equal bitwise."""
  expected, got = final_arrays(reference, mode), final_arrays(workdir, mode)
  if sorted(expected) != sorted(got):
    return "different checkpoint structure"
  if int(expected["step"]) != int(got["step"]):
    return f"final steps differ ({int(expected['step'])} and {int(got['step'])})"
  unequal = [k for k in expected if not np.array_equal(expected[k], got[k])]
  if unequal:
    return f"{len(unequal)} arrays differ, e.g. {unequal[0]}"
  if mode == "stage2" and os.path.isdir(workdir_lib.token_dir(reference)):  # MaskGIT's
    for a, b in zip(tokens_lib.load_all(workdir_lib.token_dir(reference)),
                    tokens_lib.load_all(workdir_lib.token_dir(workdir))):
      if not np.array_equal(a, b):
        return "extracted tokens differ"
  return None


def metrics_lines(workdir, mode) -> int:
  """Steps logged so far (log_every_steps=1, one fresh workdir per attempt)."""
  path = os.path.join(workdir, mode, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return len(f.readlines())


class Late(Exception):
  """The interruption came too late to test anything (the run had finished its work)."""


def interrupt_and_rerun(mode, workdir, env, extra, *, moment, sig, too_late) -> str:
  """Starts the run, sends `sig` once `moment(run)` holds, reruns, and describes what happened.

  Raises Late when the run was past the interesting part, AssertionError on a failure.
  """
  run = Run(mode, workdir, env, extra)
  if not moment(run) or too_late() or run.process.poll() is not None:
    run.wait()
    raise Late
  logged = metrics_lines(workdir, mode)
  run.process.send_signal(sig)
  sent = time.time() - run.started
  rc = run.wait()
  took = time.time() - run.started - sent
  steps = checkpoint_steps(workdir, mode)
  resume_step = steps[-1] if steps else 0
  note = f"{signal.Signals(sig).name} at {sent:.1f} s"
  if mode == "stage2" and not tokens_complete(workdir):
    note += f" with {len(glob.glob(os.path.join(workdir_lib.token_dir(workdir), '*-?????.npz')))} token shards"
  if sig == signal.SIGKILL:
    assert rc == -signal.SIGKILL, f"{note}: exit {rc}, not killed"
  else:
    said = f"preempted (SIGTERM); saved step {resume_step};"
    if said not in run.output() and logged >= STEPS[mode] - 1:
      # The signal reached the last step, which finishes instead, or the work after it,
      # where main's handler exits 75 without a save to report.
      raise Late
    assert rc == checkpoints.PREEMPTED_EXIT_CODE and said in run.output(), \
        f"{note} after step {logged}: exit {rc}; expected 75 and '{said}'; see {run.log}"
    assert took <= SIGTERM_BOUND_S, f"{note}: exit 75 only after {took:.1f} s"
    note += f" after step {logged}: exit 75 within {took:.1f} s"
  note += f", latest checkpoint {resume_step}"
  rerun = Run(mode, workdir, env, extra)
  assert rerun.wait() == 0, f"{note}; the rerun failed (rc {rerun.process.returncode}), see " \
      f"{rerun.log}"
  if sig == signal.SIGTERM:
    assert f"steps {resume_step} -> {STEPS[mode]}" in rerun.output(), \
        f"{note}; the rerun did not continue from step {resume_step}"
  unreadable = [n for n in os.listdir(os.path.join(workdir, mode, "checkpoints"))
                if "unreadable" in n]
  if unreadable:
    note += f"; set aside as unreadable: {unreadable}"
  return note


def scenario_run(name, reference, workdir, env, timings, rng) -> str:
  """One interruption of scenario `name` at a random moment of the warm run's `timings`."""
  stage2_extra = (f"--config.stage1_workdir={reference}",)
  t1, t2 = timings["stage1"], timings["stage2"]

  def after(seconds):
    return lambda run: run.wait_until(lambda: time.time() - run.started >= seconds)

  def after_event(condition, seconds):
    def moment(run):
      if not run.wait_until(condition):
        return False
      start = time.time()
      return run.wait_until(lambda: time.time() - start >= seconds)
    return moment

  never = lambda: False
  if name == "stage1-kill9":
    return interrupt_and_rerun("stage1", workdir, env, (), sig=signal.SIGKILL, too_late=never,
                               moment=after(rng.uniform(0, t1["last_step"])))
  if name == "stage1-sigterm":
    return interrupt_and_rerun(
        "stage1", workdir, env, (), sig=signal.SIGTERM, too_late=never,
        moment=after_event(lambda: metrics_lines(workdir, "stage1") > 0,
                           rng.uniform(0, t1["last_step"] - t1["training"])))
  if name == "extraction-kill9":
    return interrupt_and_rerun(
        "stage2", workdir, env, stage2_extra, sig=signal.SIGKILL,
        too_late=lambda: tokens_complete(workdir),
        moment=after_event(lambda: first_shard_written(workdir),
                           rng.uniform(0, t2["tokens_complete"] - t2["first_shard"])))
  if name == "stage2-kill9":
    return interrupt_and_rerun("stage2", workdir, env, stage2_extra, sig=signal.SIGKILL,
                               too_late=never, moment=after(rng.uniform(0, t2["last_step"])))
  if name == "stage2-sigterm":
    return interrupt_and_rerun(
        "stage2", workdir, env, stage2_extra, sig=signal.SIGTERM, too_late=never,
        moment=after_event(lambda: metrics_lines(workdir, "stage2") > 0,
                           rng.uniform(0, t2["last_step"] - t2["training"])))
  raise ValueError(f"scenario {name!r} is not one of {', '.join(SCENARIOS)}")


def trial(name, reference, workdir, env, timings, rng, attempts=4) -> tuple[bool, str]:
  """(survived with identical results, what happened); redraws a moment that came too late."""
  mode = "stage1" if name.startswith("stage1") else "stage2"
  for attempt in range(attempts):
    shutil.rmtree(workdir, ignore_errors=True)
    try:
      note = scenario_run(name, reference, workdir, env, timings, rng)
    except Late:
      continue
    except AssertionError as e:
      return False, str(e)
    diff = differences(reference, workdir, mode)
    if attempt:
      note += f"; {attempt} earlier draw(s) came after the run's work and were redrawn"
    return diff is None, note + ("; identical" if diff is None else f"; {diff}")
  return False, f"{attempts} draws all came too late to interrupt anything"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--trials", type=int, default=5, help="trials per scenario")
  parser.add_argument("--workdir", default="/tmp/fsq_chaos",
                      help="new, or one that an earlier chaos.py run made (it is emptied)")
  parser.add_argument("--seed", type=int, default=0, help="seeds the interruption moments")
  parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="a config override for every run, added to SHORT (e.g. smaller "
                      "models: --set model.filters=8)")
  args = parser.parse_args()
  if args.trials < 1:
    parser.error(f"--trials={args.trials} must be >= 1")
  for item in args.set:
    field, sep, value = item.partition("=")
    if not sep:
      parser.error(f"--set={item} must be FIELD=VALUE, e.g. --set model.filters=8")
    SHORT[field] = value
  STEPS.update(stage1=int(SHORT["stage1.num_train_steps"]),
               stage2=int(SHORT["stage2.num_train_steps"]))
  began = time.time()
  marker = os.path.join(args.workdir, MARKER)
  if os.path.exists(args.workdir) and os.listdir(args.workdir) and not os.path.exists(marker):
    parser.error(f"--workdir={args.workdir} holds files not written by chaos.py; give a new one")
  shutil.rmtree(args.workdir, ignore_errors=True)
  os.makedirs(args.workdir)
  open(marker, "w").close()
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.join(args.workdir, "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

  reference = os.path.join(args.workdir, "reference")
  print("reference runs (uninterrupted, compiling) ...", flush=True)
  timed_run("stage1", reference, env)
  timed_run("stage2", reference, env)
  # Interruption moments are drawn from an uninterrupted warm run, which compiles nothing; it
  # must also match the reference (a fresh process with cached executables).
  timing = os.path.join(args.workdir, "timing")
  print("timing runs (uninterrupted, warm) ...", flush=True)
  timings = {
      "stage1": timed_run("stage1", timing, env, events={
          "training": lambda: metrics_lines(timing, "stage1") > 0,
          "last_step": lambda: metrics_lines(timing, "stage1") >= STEPS["stage1"]}),
      "stage2": timed_run("stage2", timing, env, (f"--config.stage1_workdir={reference}",),
                          events={"first_shard": lambda: first_shard_written(timing),
                                  "tokens_complete": lambda: tokens_complete(timing),
                                  "training": lambda: metrics_lines(timing, "stage2") > 0,
                                  "last_step": lambda: metrics_lines(timing, "stage2") >= STEPS[
                                      "stage2"]})}
  for mode, seen in timings.items():
    diff = differences(reference, timing, mode)
    print(f"  {mode}: " + ", ".join(f"{k} at {v:.1f} s" for k, v in seen.items())
          + ("; identical to the reference" if diff is None else f"; DIFFERS: {diff}"), flush=True)
    if diff is not None:
      sys.exit("uninterrupted runs differ from each other; interruptions cannot be judged")

  rng = random.Random(args.seed)
  survived = {name: 0 for name in args.scenarios}
  for number in range(1, args.trials + 1):
    for name in args.scenarios:
      workdir = os.path.join(args.workdir, f"{name}-{number}")
      ok, note = trial(name, reference, workdir, env, timings, rng)
      survived[name] += ok
      print(f"trial {number} {name}: {'survived' if ok else 'FAILED'} ({note})", flush=True)
      if ok:
        shutil.rmtree(workdir)

  print(f"\n{'scenario':<18} survived with identical results")
  for name, count in survived.items():
    print(f"{name:<18} {count}/{args.trials}")
  print(f"total time {time.time() - began:.0f} s")
  sys.exit(0 if all(c == args.trials for c in survived.values()) else 1)


if __name__ == "__main__":
  main()
