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
  s.batch_size = 8
  s.num_train_steps = 6
  s.log_every_steps = 1
  s.image_every_steps = 3
  s.checkpoint_every_steps = 3
  return c
