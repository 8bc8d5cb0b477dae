"""A run directory: where each stage writes, the config it ran with, and what is finished.

  <workdir>/stage1/{config.json, checkpoints/, metrics.jsonl, events}   Stage I
  <workdir>/stage2/{config.json, checkpoints/, tokens/, ...}            Stage II
  <workdir>/samples/cfg_<alpha>/                                        --mode=sample
  <workdir>/eval/{config.json, *.npz}, <workdir>/results.json           --mode=eval

Stage II, sampling and evaluation read Stage I from `config.stage1_workdir` when it is set.
Every stage saves its config; a later run in the same directory is compared with it before
anything else happens, so a finished run with a changed config is refused, not skipped.
"""

import json
import os

import ml_collections

from fsq_repro import checkpoints, files

STAGES = ("stage1", "stage2")
RESULTS_FILE = "results.json"

# Fields that never change a stage's numbers (beyond float round-off): where the data lives,
# how it is sharded, how often a run logs and saves, whether it recomputes activations to save
# memory, and which implementation computes Stage II's attention.
NEUTRAL_FIELDS = ("mesh", "dataset.data_dir", "log_every_steps", "image_every_steps",
                  "checkpoint_every_steps", "keep_checkpoints", "remat", "stage2.attention")
# What else a rerun of each mode may change: a training stage may be extended (or stopped
# early), and it does not read the fields of the stages after it; evaluation does not read
# what only --mode=sample reads.
IGNORED_BY_MODE = {
    "stage1": ("num_train_steps", "stage1_workdir", "stage2", "sample", "eval"),
    "stage2": ("stage2.num_train_steps", "sample", "eval"),
    "eval": ("sample.num_images", "sample.cfg", "sample.grid_images_per_class"),
}


def stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(workdir, stage)


def checkpoint_dir(workdir: str, stage: str) -> str:
  return os.path.join(workdir, stage, "checkpoints")


def token_dir(workdir: str) -> str:
  return os.path.join(workdir, "stage2", "tokens")


def results_path(workdir: str) -> str:
  return os.path.join(workdir, RESULTS_FILE)


def eval_dir(workdir: str) -> str:
  return os.path.join(workdir, "eval")


def stage1_workdir(config, workdir: str) -> str:
  """The workdir whose Stage I a run of `config` in `workdir` uses."""
  return config.stage1_workdir or workdir


def write_run_config(directory: str, config, **extra) -> None:
  """Saves `config` (and `extra` facts, e.g. the perceptual loss used) as directory/config.json."""
  with files.atomic_write(os.path.join(directory, "config.json")) as f:
    json.dump({"config": json.loads(config.to_json_best_effort()), **extra}, f, indent=1)


def read_run_config(directory: str) -> dict | None:
  """What `write_run_config` saved in `directory` ({"config": ..., **extra}), or None."""
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def saved_config(directory: str) -> ml_collections.ConfigDict:
  """The config a stage ran with, as a ConfigDict (tuples come back as lists)."""
  saved = read_run_config(directory)
  if saved is None:
    raise FileNotFoundError(f"{directory}/config.json is missing: that directory holds no "
                            "run of this project (or one from before configs were saved)")
  return ml_collections.ConfigDict(saved["config"])


def _ignored(path: str, mode: str) -> bool:
  """Whether the config field at `path` ("stage1.batch_size") is ignored for `mode`."""
  for field in NEUTRAL_FIELDS + IGNORED_BY_MODE.get(mode, ()):
    if path == field or path.startswith(field + ".") or path.endswith("." + field):
      return True
  return False


def changed_fields(saved: dict, config, mode: str) -> list[str]:
  """'field: saved -> now' for each field that differs and matters for `mode`."""
  current = json.loads(config.to_json_best_effort())
  changes = []

  def walk(a, b, path):
    if isinstance(a, dict) and isinstance(b, dict):
      for key in sorted(set(a) | set(b)):
        sub = f"{path}.{key}" if path else key
        if not _ignored(sub, mode):
          walk(a.get(key), b.get(key), sub)
    elif a != b:
      changes.append(f"{path}: {a!r} -> {b!r}")

  walk(saved, current, "")
  return changes


def _describe(changes: list[str]) -> str:
  return "; ".join(changes[:3]) + (" ..." if len(changes) > 3 else "")


def check_same_run(directory: str, config, mode: str) -> None:
  """Raises ValueError if `directory` holds a run of `mode` made with a different config."""
  saved = read_run_config(directory)
  if saved is None:
    return
  changes = changed_fields(saved["config"], config, mode)
  if changes:
    raise ValueError(f"{directory} holds a {mode} run with a different config "
                     f"({_describe(changes)}); use a new --workdir, or pass "
                     "--allow_config_change to continue it with this config")


def check_earlier_stage(config, workdir: str, stage: str, *, compare: bool = True) -> None:
  """Fails in one line unless `stage` (of `stage1_workdir` for Stage I) has a checkpoint and,
  with `compare`, a saved config that `config` matches."""
  source = stage1_workdir(config, workdir) if stage == "stage1" else workdir
  directory = stage_dir(source, stage)
  if not checkpoints.finished_steps(checkpoint_dir(source, stage)):
    hint = " first, or set --config.stage1_workdir" if stage == "stage1" else " first"
    raise FileNotFoundError(f"no {stage} checkpoint in {checkpoint_dir(source, stage)}; run "
                            f"--mode={stage} with --workdir={source}{hint}")
  if not compare:
    return
  saved = read_run_config(directory)
  if saved is None:
    raise FileNotFoundError(f"{directory}/config.json is missing, so that {stage} run's config "
                            f"is unknown; rerun --mode={stage} in that workdir")
  changes = changed_fields(saved["config"], config, stage)
  if changes:
    raise ValueError(f"the {stage} run in {directory} was made with a different config "
                     f"({_describe(changes)}); use that run's config arguments, or pass "
                     "--allow_config_change to use it anyway")


def check_compatible(config, mode: str, workdir: str, *, allow_config_change: bool) -> None:
  """Every run `mode` reads exists and matches `config`, and `mode`'s own earlier run (if any)
  was made with `config`. Runs before any compilation and before `is_complete`."""
  earlier = {"stage1": (), "stage2": ("stage1",)}.get(mode, STAGES)
  if not allow_config_change:
    if mode in STAGES:
      check_same_run(stage_dir(workdir, mode), config, mode)
    elif mode == "eval" and os.path.exists(results_path(workdir)):
      check_same_run(eval_dir(workdir), config, "eval")
  for stage in earlier:
    check_earlier_stage(config, workdir, stage, compare=not allow_config_change)
  source = config.stage2.get("init_from")  # MaskGIT's fine-tuning start (UViM has none)
  if mode == "stage2" and source and not checkpoints.finished_steps(
      checkpoint_dir(source, "stage2")):
    raise FileNotFoundError(f"stage2.init_from={source!r} holds no Stage II checkpoint in "
                            f"{checkpoint_dir(source, 'stage2')}; give a trained or converted "
                            "run directory")


def is_complete(config, mode: str, workdir: str) -> bool:
  """Whether rerunning `mode` would do nothing new (checked after `check_compatible`)."""
  if mode in STAGES:
    steps = checkpoints.finished_steps(checkpoint_dir(workdir, mode))
    return bool(steps) and steps[-1] >= config[mode].num_train_steps
  if mode == "eval":
    saved = read_run_config(eval_dir(workdir))
    return (os.path.exists(results_path(workdir)) and saved is not None
            and not changed_fields(saved["config"], config, "eval"))
  return False
