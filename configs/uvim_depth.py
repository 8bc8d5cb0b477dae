"""UViM depth on NYU Depth v2 at 512 px: Table 2's depth rows (FSQ paper, Sec. 4.4).

  python scripts/sweep.py --config=configs/uvim_depth.py --root=/data/runs/uvim_depth --print
  python -m fsq_repro.main --mode=stage1 --config=configs/uvim_depth.py:quantizer=fsq \
      --workdir=/data/runs/uvim_depth/fsq_seed0 --config.dataset.data_dir=$TFDS_DIR

Arguments: quantizer=fsq|vq, splitting=0|1 (VQ), context=0|1, seed=k (Stage II), as
configs/uvim_colorization.py. big_vision's recipe (configs/proj/uvim/vqvae_nyu_depth.py,
train_nyu_depth_pretrained.py): depth in 256 bins over (1e-3, 10) m, one-hot labels,
per-pixel cross-entropy without the no-depth bin 0; inception crops and flips applied alike to
the image and the depth map (nearest resize); Stage I 200 epochs of nyu_depth_v2 train
(47,584 images) at batch 1024, lr 1e-3, wd 1e-5; Stage II 50 epochs at batch 512, lr 1e-3
(encoder x0.1), wd 1e-6, from the AugReg ViT-L/16. Evaluation on the 654 validation
images: the 426 x 560 crop, prediction nearest-resized to it, RMSE per image averaged over
images, abs-rel, log10 and delta < 1.25^k (eval/depth.py), greedy sampling.

Sizes (`python scripts/param_counts.py --config=configs/uvim_depth.py:quantizer=vq`): Stage I
232,250,368 parameters with VQ, 231,077,637 with FSQ (big_vision: ~232M; the one-hot
256-bin label makes its patch embedding and head large); Stage II as colorization's.

Expected (Table 2): RMSE VQ 0.468 +- 0.012 (usage 99%), FSQ 0.473 +- 0.012 (99%), VQ without
splitting 0.490 +- 0.0037 (0.78%); the Stage I oracle 0.155. nyu_depth_v2 is prepared by TFDS
itself (it downloads the 32 GB archive: README, "Reproducing the paper").
"""

from fsq_repro import uvim_config

NYU_TRAIN = 47_584


def get_config(arg: str | None = None):
  c, _ = uvim_config.from_args(arg)
  c.task.name, c.dataset.name = "depth", "nyu_depth_v2"
  c.dataset.train_split, c.dataset.eval_split = "train", "validation"
  # (epochs, lr, wd): Stage I 9,200 steps, Stage II 4,600.
  uvim_config.recipe(c, NYU_TRAIN, stage1=(200, 1e-3, 1e-5), stage2=(50, 1e-3, 1e-6))
  c.eval.batch_size = 6  # divides the 654 validation images on 1, 2, 3 or 6 devices
  return c


def get_sweep() -> list[dict]:
  """Table 2's depth rows (VQ, FSQ, VQ without splitting), three Stage II seeds each."""
  return uvim_config.seeded_sweep((("vq", "quantizer=vq"), ("fsq", "quantizer=fsq"),
                                   ("vq_no_splitting", "quantizer=vq,splitting=0")))
