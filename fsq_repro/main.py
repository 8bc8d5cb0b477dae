"""Command-line entry: flags -> config -> the stage's job.

  python -m fsq_repro.main --mode=stage1 --config=configs/demo.py:quantizer=fsq,codebook_bits=10 \
      --workdir=/tmp/w [--config.stage1.num_train_steps=200 ...]

Modes: stage1 (tokenizer), stage2 (transformer; extracts tokens first), sample (image grids
and an ADM .npz), eval (results.json). UViM's configs (configs/uvim_*.py, config.family
"uvim") have stage1 (label autoencoder), stage2 (task model) and eval. A finished stage is skipped on rerun; an interrupted
one resumes. Bad input ends with one "error: ..." line before anything is compiled.
"""

if __name__ == "__main__":  # before JAX allocates anything: see fsq_repro/hugepages.py
  from fsq_repro import hugepages  # pylint: disable=g-import-not-at-top
  hugepages.reexec()

import os  # pylint: disable=g-import-not-at-top,wrong-import-position
import signal  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys  # pylint: disable=g-import-not-at-top,wrong-import-position
import traceback  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags, logging
from ml_collections import config_flags

from fsq_repro import checkpoints, config_lib, parallel, timing, uvim_config
from fsq_repro import workdir as workdir_lib
from fsq_repro.data import pipeline

MODES = ("stage1", "stage2", "sample", "eval")
UVIM_MODES = ("stage1", "stage2", "eval")

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


def family(config) -> str:
  """"maskgit" (configs/demo.py, tradeoff_128.py, ...) or "uvim" (configs/uvim_*.py)."""
  return config.get("family", "maskgit")


def preflight(config, mode: str, workdir: str) -> None:
  """Every check that needs no compilation: config fields, dataset, earlier stages, and that
  this workdir's runs were made with this config."""
  d = config.dataset
  if family(config) == "uvim":
    if mode not in UVIM_MODES:
      raise ValueError(f"--mode={mode} is not one of UViM's; use one of {UVIM_MODES}")
    uvim_config.validate(config, num_devices=jax.device_count(), stage=mode)
    pipeline.label_ids(d.name, tuple(d.exclude_classes), data_dir=d.data_dir)
  else:
    config_lib.validate(config, num_devices=jax.device_count(), stage=mode)
  pipeline.num_examples(d.name, d.train_split, data_dir=d.data_dir)
  workdir_lib.check_compatible(config, mode, workdir,
                               allow_config_change=FLAGS.allow_config_change)


def run_job(config, mode: str, workdir: str) -> None:
  """Dispatches to the job of `mode`; the only place that imports a trainer."""
  if family(config) == "uvim":
    if mode == "stage1":
      from fsq_repro.train import uvim_stage1
      uvim_stage1.train_and_evaluate(config, workdir)
    elif mode == "stage2":
      from fsq_repro.train import uvim_stage2
      uvim_stage2.train_and_evaluate(config, workdir)
    else:
      from fsq_repro.eval import uvim_evaluate
      uvim_evaluate.evaluate(config, workdir)
  elif mode == "stage1":
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


def job_dir(mode: str, workdir: str) -> str:
  """Where the job of `mode` writes (and its timings.json goes)."""
  if mode == "sample":
    return os.path.join(workdir, "samples")
  return workdir_lib.eval_dir(workdir) if mode == "eval" else workdir_lib.stage_dir(workdir, mode)


def main(argv):
  del argv
  # Preemption before the training loop (start-up, compilation, token extraction) also
  # exits with the "rerun me" status; the loop installs its own handler that saves first.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(checkpoints.PREEMPTED_EXIT_CODE))
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and TFDS log every file at INFO
  parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  config, mode, workdir = FLAGS.config, FLAGS.mode, FLAGS.workdir
  try:
    preflight(config, mode, workdir)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if workdir_lib.is_complete(config, mode, workdir):
    print(f"{mode}: already complete in {workdir}; nothing to do", flush=True)
    return
  logging.info("config:\n%s", config)
  timing.mark("startup")  # interpreter, imports, flags, config checks, dataset preparation
  run_job(config, mode, workdir)
  if jax.process_index() == 0:
    timing.write(job_dir(mode, workdir))


def _is_unknown_field(error: Exception) -> bool:
  """Whether ml_collections raised `error` for a --config.* override of a missing field.

  It does so from its config_path module; the same exception types raised while the config
  file itself runs are bugs in that file, shown with their traceback.
  """
  where = os.path.join("config_flags", "config_path.py")
  return any(frame.filename.endswith(where) for frame in traceback.extract_tb(error.__traceback__))


def parse_flags(argv):
  """absl's flag parsing, except that an override of an unknown config field ends in one line."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:  # how ml_collections reports an unknown field
    if not _is_unknown_field(e):
      raise
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
