"""Command-line entry: flags -> config -> the stage's job.

  python -m fsq_repro.main --mode=stage1 --config=configs/demo.py:quantizer=fsq,codebook_bits=10 \
      --workdir=/tmp/w [--config.stage1.num_train_steps=200 ...]

Modes: stage1 (tokenizer), stage2 (transformer; extracts tokens first), sample (image grids
and an ADM .npz), eval (results.json). A finished stage is skipped on rerun; an interrupted
one resumes. Bad input ends with one "error: ..." line before anything is compiled.
"""

import json
import os
import signal
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from fsq_repro import config_lib
from fsq_repro.train import checkpointing, distributed

MODES = ("stage1", "stage2", "sample", "eval")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/demo.py:quantizer=fsq",
                                lock_config=True)
flags.DEFINE_enum("mode", None, MODES, "What to run.")
flags.DEFINE_string("workdir", None, "Run directory; each stage writes a subdirectory.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's id (multi-process runs).")
flags.DEFINE_bool("allow_config_change", False,
                  "Continue a run whose workdir was started with a different config.")
flags.mark_flags_as_required(["config", "mode", "workdir"])


def preflight(config, mode: str, workdir: str) -> None:
  """Every check that needs no compilation: config fields, dataset, earlier stages."""
  from fsq_repro.data import pipeline
  from fsq_repro.train import stage2
  config_lib.validate(config, num_devices=jax.device_count(), stage=mode)
  pipeline.num_examples(config.dataset.name, config.dataset.train_split,
                        data_dir=config.dataset.data_dir)
  if mode in ("stage1", "stage2") and not FLAGS.allow_config_change:
    config_lib.check_same_run(os.path.join(workdir, mode), config, mode)
  if mode != "stage1":
    stage2.check_stage1(config, workdir)
  if mode in ("sample", "eval"):
    directory = os.path.join(stage2.stage_dir(workdir), "checkpoints")
    if not checkpointing.finished_steps(directory):
      raise FileNotFoundError(f"no Stage II checkpoint in {directory}; run --mode=stage2 first")


def already_complete(config, mode: str, workdir: str) -> bool:
  if mode in ("stage1", "stage2"):
    steps = checkpointing.finished_steps(os.path.join(workdir, mode, "checkpoints"))
    return bool(steps) and steps[-1] >= config[mode].num_train_steps
  if mode == "eval":
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
      return False
    with open(path) as f:
      results = json.load(f)
    return (results.get("stage1_steps") == config.stage1.num_train_steps
            and results.get("stage2_steps") == config.stage2.num_train_steps)
  return False


def main(argv):
  del argv
  # Preemption before the training loop (start-up, compilation, token extraction) also
  # exits with the "rerun me" status; the loop installs its own handler that saves first.
  signal.signal(signal.SIGTERM,
                lambda *_: sys.exit(checkpointing.PREEMPTED_EXIT_CODE))
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and TFDS log every file at INFO
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  config, mode, workdir = FLAGS.config, FLAGS.mode, FLAGS.workdir
  if already_complete(config, mode, workdir):
    print(f"{mode}: already complete in {workdir}; nothing to do", flush=True)
    return
  try:
    preflight(config, mode, workdir)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  logging.info("config:\n%s", config)
  if mode == "stage1":
    from fsq_repro.train import stage1
    stage1.train_and_evaluate(config, workdir)
  elif mode == "stage2":
    from fsq_repro.train import stage2
    stage2.train_and_evaluate(config, workdir)
  elif mode == "sample":
    from fsq_repro.eval import generate
    generate.write_samples(config, workdir)
  elif mode == "eval":
    from fsq_repro.eval import evaluate
    evaluate.evaluate(config, workdir)


def parse_flags(argv):
  """absl's flag parsing, except that an override of an unknown config field ends in one line."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:  # how ml_collections reports an unknown field
    while isinstance(e, Exception) and e.args:  # ml_collections nests the message
      e = e.args[0]
    detail = " ".join(str(e).replace('"', "").replace("'", "").split())
    print(f"error: a --config.* override names no config field: {detail}; check its spelling",
          file=sys.stderr)
    sys.exit(2)


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
