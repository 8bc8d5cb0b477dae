"""Configs small enough for a training step to compile and run in seconds on a CPU."""

from configs import demo


def tiny_config(arg="quantizer=fsq,codebook_bits=6"):
  c = demo.get_config(arg)
  c.dataset.image_size = 16
  c.quantizer.codebook_dim = 8
  c.model.filters = 8
  c.model.channel_multipliers = (1, 2)
  c.model.num_groups = 4
  c.model.disc_max_filters = 8
  s = c.stage1
  s.generator_weight = 0.1  # exercise the GAN path, which the demo turns off
  s.batch_size = 8
  s.num_train_steps = 6
  s.log_every_steps = 1
  s.image_every_steps = 3
  s.checkpoint_every_steps = 3
  return c


def tiny_pipeline_config(arg="quantizer=fsq,codebook_bits=6"):
  """Stage I, Stage II, sampling and evaluation, each a few seconds."""
  c = tiny_config(arg)
  s = c.stage2
  s.num_train_steps = 30
  s.batch_size = 16
  s.hidden_size = 32
  s.num_layers = 1
  s.num_heads = 2
  s.mlp_dim = 64
  s.learning_rate = 3e-3
  s.warmup_steps = 5
  s.log_every_steps = 5
  s.checkpoint_every_steps = 15
  c.sample.num_images = 16
  c.sample.batch_size = 16
  c.eval.num_images = 96
  c.eval.batch_size = 32
  c.eval.cfg_sweep = (0.0, 0.5)
  c.eval.num_sample_images = 32
  c.eval.num_reference_images = 64
  c.eval.compression_num_images = 32
  c.eval.range_coding_images = 2
  return c
