"""Parameter counts of a config's networks, from their shapes alone (nothing is allocated).

  python scripts/param_counts.py --config=configs/maskgit_256.py:quantizer=vq

Prints one JSON object: the Stage I tokenizer (and its quantizer's share), the discriminator,
and the Stage II transformer for the config's dataset (its class count sets the vocabulary);
for a UViM config (configs/uvim_*.py) the label autoencoder and the task model.
The counts in the model docstrings and the README come from here (tests/test_vqgan.py and
tests/test_transformer.py check them).
"""

import argparse
import functools
import json
import sys

import jax
import jax.numpy as jnp

from fsq_repro import config_lib
from fsq_repro.data import pipeline
from fsq_repro.models import factory


def counts(config, num_classes: int) -> dict[str, int]:
  """{network: parameters} of `config`'s networks for a dataset of `num_classes` classes."""
  key = jax.random.key(0)
  size = config.dataset.image_size
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  tokenizer = factory.build_tokenizer(config)
  tokenizer_params = jax.eval_shape(functools.partial(tokenizer.init, train=False), key,
                                    images)["params"]
  discriminator = factory.build_discriminator(config)
  layout = factory.token_layout(config, num_classes)
  transformer = factory.build_transformer(config, layout)
  ids = jax.ShapeDtypeStruct((1, factory.tokens_per_image(config) + 1), jnp.int32)
  return {
      "tokenizer": factory.count_params(tokenizer_params),
      "tokenizer_quantizer": factory.count_params(tokenizer_params.get("quantizer", {})),
      "discriminator": factory.count_params(jax.eval_shape(discriminator.init, key, images)),
      "transformer": factory.count_params(jax.eval_shape(
          functools.partial(transformer.init, train=False), key, ids)),
  }


def uvim_counts(config) -> dict[str, int]:
  """{network: parameters} of a UViM config: the label autoencoder and the task model."""
  from fsq_repro import tasks  # pylint: disable=g-import-not-at-top
  key, task = jax.random.key(0), tasks.get(config.task.name)
  example = jax.eval_shape(task.prepare, tasks.zeros_batch(task, config.dataset.image_size))
  autoencoder = factory.build_label_autoencoder(config, task.labels)
  variables = jax.eval_shape(functools.partial(autoencoder.init, train=False), key,
                             example["labels"], example["context"])
  task_model = factory.build_task_model(config)
  return {
      "label_autoencoder": factory.count_params(variables["params"]),
      "task_model": factory.count_params(jax.eval_shape(
          task_model.init, key, example["image"],
          jax.ShapeDtypeStruct((1, task_model.seq_len), jnp.int32))["params"]),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="config file[:arguments]")
  args = parser.parse_args(argv)
  config = config_lib.load_config(args.config)
  if config.get("family") == "uvim":
    print(json.dumps({"config": args.config, "image_size": config.dataset.image_size,
                      "codebook_size": factory.codebook_size(config.quantizer),
                      **uvim_counts(config)}, indent=1))
    return 0
  num_classes = pipeline.num_classes(config.dataset.name, data_dir=config.dataset.data_dir)
  print(json.dumps({"config": args.config, "image_size": config.dataset.image_size,
                    "codebook_size": factory.codebook_size(config.quantizer),
                    "num_classes": num_classes, **counts(config, num_classes)}, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
