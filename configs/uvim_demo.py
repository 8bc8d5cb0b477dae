"""UViM on the embedded photo crops: colorization at 32 px with CPU-sized models.

  make demo-uvim        # the four runs below, then demo_out/uvim/{table2.md, figure6.png}
  python -m fsq_repro.main --mode=stage1 --config=configs/uvim_demo.py:quantizer=fsq \
      --workdir=/tmp/uvim_fsq

Arguments as configs/uvim_colorization.py: quantizer=fsq|vq, splitting=0|1, context=0|1,
seed=k. The gray source photo (`camera`) is left out of both splits: its colour is its gray.
Train and validation crops come from disjoint columns of each photo (data/embedded.py).
FIDs use the offline network of the embedded dataset, not Inception: they are not
comparable with the paper's FID-5k.
"""

from fsq_repro import uvim_config
from fsq_repro.data import embedded


def get_config(arg: str | None = None):
  c, _ = uvim_config.from_args(arg)
  c.dataset.name = "fsq_photo_crops"
  c.dataset.image_size = 32
  c.dataset.train_split = "train"
  c.dataset.eval_split = "validation"
  c.dataset.exclude_classes = embedded.GRAY_PHOTOS
  # 40 px crops: an inception crop of 5% of one is 9 px; random short-side squares instead.
  c.dataset.train_crop = "square"

  if c.quantizer.kind == "uvim_vq":
    c.quantizer.codebook_dim = 32
  # UViM's momentum 0.995 lets a never-used code's EMA count (1 at the start) reach the
  # splitting threshold 0.1 only after 460 steps; 0.98 reaches it after 114, so splitting
  # acts within the demo's short Stage I. The same for both VQ runs.
  c.quantizer.momentum = 0.98

  m = c.model
  m.patch_size = 4  # 8 x 8 patches
  m.code_len = 16  # resized to a 4 x 4 code grid, as UViM's 32 x 32 -> 16 x 16
  m.width = 64
  m.enc_depth = 2
  m.dec_depth = 2
  m.mlp_dim = 128
  m.num_heads = 4

  s = c.stage1
  s.batch_size = 32
  s.num_train_steps = 1200
  s.learning_rate = 1e-3
  s.weight_decay = 1e-4
  s.warmup_steps = 100
  s.log_every_steps = 100
  s.checkpoint_every_steps = 400
  s.keep_checkpoints = 2

  s = c.stage2
  s.patch_size = 4
  s.width = 64
  s.mlp_dim = 128
  s.num_heads = 4
  s.encoder_layers = 2
  s.decoder_layers = 2
  s.batch_size = 32
  s.num_train_steps = 1200
  s.learning_rate = 1e-3
  s.weight_decay = 1e-5
  s.warmup_steps = 100
  s.log_every_steps = 100
  s.checkpoint_every_steps = 400
  s.keep_checkpoints = 2

  e = c.eval
  e.fid_protocol = "split"  # every validation crop against its own ground truth
  e.batch_size = 128
  e.feature_network = "auto"  # the offline network on the embedded dataset
  return c


def get_sweep() -> list[dict]:
  """Table 2's colorization rows and both ablations, at CPU size, one Stage II seed each."""
  return [{"name": "fsq", "arg": "quantizer=fsq"},
          {"name": "vq", "arg": "quantizer=vq"},
          {"name": "vq_no_splitting", "arg": "quantizer=vq,splitting=0"},
          {"name": "fsq_no_context", "arg": "quantizer=fsq,context=0"}]
