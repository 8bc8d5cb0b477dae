"""Command-line entry: flags -> config -> the stage's train function.

  python -m fsq_repro.main --mode=stage1 --config=configs/demo.py:quantizer=fsq,codebook_bits=10 \
      --workdir=/tmp/w [--config.stage1.num_train_steps=200 ...]

Bad input ends with one "error: ..." line before anything is compiled.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from fsq_repro import config_lib
from fsq_repro.train import distributed

MODES = ("stage1",)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/demo.py:quantizer=fsq",
                                lock_config=True)
flags.DEFINE_enum("mode", None, MODES, "What to run.")
flags.DEFINE_string("workdir", None, "Run directory; each stage writes a subdirectory.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's id (multi-process runs).")
flags.mark_flags_as_required(["config", "mode", "workdir"])


def preflight(config, mode: str) -> None:
  """Every check that needs no compilation: config fields, dataset, earlier stages."""
  from fsq_repro.data import pipeline
  config_lib.validate(config, num_devices=jax.device_count(), stage=mode)
  pipeline.num_examples(config.dataset.name, config.dataset.train_split,
                        data_dir=config.dataset.data_dir)


def main(argv):
  del argv
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  config = FLAGS.config
  try:
    preflight(config, FLAGS.mode)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  logging.info("config:\n%s", config)
  if FLAGS.mode == "stage1":
    from fsq_repro.train import stage1
    stage1.train_and_evaluate(config, FLAGS.workdir)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
