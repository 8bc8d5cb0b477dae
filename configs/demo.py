"""The embedded demo: photo crops from scikit-image at 32 px, CPU-sized models.

  python -m fsq_repro.main --mode=stage1 \
      --config=configs/demo.py:quantizer=fsq,codebook_bits=10 --workdir=/tmp/demo_fsq10

Arguments: quantizer=fsq|vq; codebook_bits=k (FSQ: the paper's levels for 2^k, App. A.4.1;
VQ: 2^k codes); levels=8-5-5-5 (explicit FSQ levels, overrides codebook_bits).
Runs on one CPU in minutes; numbers are not comparable with the paper's ImageNet ones.
"""

from fsq_repro import config_lib


def get_config(arg: str | None = None):
  c, _ = config_lib.from_args(arg)
  c.dataset.name = "fsq_photo_crops"
  c.dataset.image_size = 32
  c.quantizer.codebook_dim = 32

  c.model.filters = 16
  c.model.channel_multipliers = (1, 2, 2)  # 32 px -> 8 x 8 tokens
  c.model.num_res_blocks = 1
  c.model.num_groups = 8
  c.model.disc_max_filters = 32

  s = c.stage1
  # Two CPU cores: no GAN (the discriminator and its R1 penalty would double the step
  # time) and no perceptual loss (its ResNet-50 weights are not downloadable here). The
  # paper's recipe, with both, is configs/tradeoff_128.py.
  s.generator_weight = 0.0
  s.perceptual_loss = "none"
  # As many steps as `make demo` (8 runs, two side by side, with Stage II and eval) fits in
  # 30 minutes on 2 cores (README); the same for both quantizers and every codebook size.
  s.num_train_steps = 1000
  s.batch_size = 32
  s.learning_rate = 3e-4
  s.log_every_steps = 50
  s.image_every_steps = 500
  s.checkpoint_every_steps = 200
  s.keep_checkpoints = 5  # all of them: `make study` scores each (a few MB apiece)

  s = c.stage2
  s.tokens = "precomputed"  # one pass of the 4,096 crops, reused for every step: cheaper here
  s.num_train_steps = 200
  s.batch_size = 32
  s.hidden_size = 128
  s.num_layers = 2
  s.num_heads = 4
  s.mlp_dim = 256
  s.learning_rate = 1e-3
  s.warmup_steps = 50
  s.log_every_steps = 50
  s.checkpoint_every_steps = 200
  s.keep_checkpoints = 2

  c.sample.num_images = 256
  c.sample.batch_size = 128
  c.sample.cfg = 0.2
  c.sample.grid_images_per_class = 8

  c.eval.num_images = 1024  # the whole validation split
  c.eval.batch_size = 128
  c.eval.cfg_sweep = (0.0, 0.1, 0.2)
  c.eval.num_sample_images = 256  # per CFG value; sampling dominates the eval time
  c.eval.num_reference_images = 1024
  c.eval.compression_num_images = 256
  c.eval.range_coding_images = 256  # all the maps of the compression cost
  return c


def get_sweep() -> list[dict]:
  """A CPU-sized Figure 3: FSQ (App. A.4.1 levels) and VQ at 2^6, 2^8, 2^10 and 2^12 codes."""
  return [{"name": f"{quantizer}_2p{bits}", "arg": f"quantizer={quantizer},codebook_bits={bits}"}
          for quantizer in ("fsq", "vq") for bits in (6, 8, 10, 12)]
