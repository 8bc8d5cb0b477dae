"""Configs small enough for a training step to compile and run in seconds on a CPU."""

from configs import demo, uvim_demo


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


def tiny_uvim_config(arg="quantizer=fsq", base=None):
  """configs/uvim_demo.py (or `base`) with one-block 16-wide models at 16 px, 3 steps each."""
  base = base or uvim_demo.get_config
  c = base(arg)
  c.dataset.image_size = 16
  m = c.model
  m.patch_size, m.code_len, m.width, m.mlp_dim, m.num_heads = 4, 4, 16, 32, 2
  m.enc_depth = m.dec_depth = 1
  c.quantizer.codebook_dim = 8 if c.quantizer.kind == "uvim_vq" else c.quantizer.codebook_dim
  c.quantizer.codebook_size = 64 if c.quantizer.kind == "uvim_vq" else None
  c.quantizer.levels = (3, 3, 3) if c.quantizer.kind == "fsq" else c.quantizer.levels
  for s in (c.stage1, c.stage2):
    s.batch_size, s.num_train_steps, s.warmup_steps = 8, 3, 1
    s.log_every_steps = s.checkpoint_every_steps = 3
  s = c.stage2
  s.patch_size, s.width, s.mlp_dim, s.num_heads = 4, 16, 32, 2
  s.encoder_layers = s.decoder_layers = 1
  c.eval.batch_size, c.eval.figure_images = 64, 3
  return c
