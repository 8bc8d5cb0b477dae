"""UViM panoptic segmentation on COCO at 512 px: Table 2's panoptic rows (FSQ paper, Sec. 4.4).

  python scripts/sweep.py --config=configs/uvim_panoptic.py --root=/data/runs/uvim_pan --print
  python -m fsq_repro.main --mode=stage1 --config=configs/uvim_panoptic.py:quantizer=fsq \
      --workdir=/data/runs/uvim_pan/fsq_seed0 --config.dataset.data_dir=$TFDS_DIR \
      --config.eval.panoptic_categories=/data/coco/panoptic_coco_categories.json

Arguments: quantizer=fsq|vq, splitting=0|1 (VQ), context=0|1, seed=k (Stage II), as
configs/uvim_colorization.py. big_vision's recipe (configs/proj/uvim/vqvae_coco_panoptic.py,
train_coco_panoptic_pretrained.py): two label maps, semantics (134: void + 133 categories) and
canonically ordered instances (100 slots), two cross-entropies (tasks/panoptic.py); inception
crops and flips applied alike to the image and the maps (nearest resize); Stage I 1000 epochs
of coco/2017_panoptic train[4096:] (114,191 images) at batch 1024, lr 4e-4, wd 4e-5; Stage II
200 epochs at batch 512, lr 1e-3 (encoder x0.1), wd 1e-6, from the AugReg ViT-L/16.
Evaluation on the 5,000 validation images, each stretched whole to 512 x 512 (big_vision's
`resize(512)`), greedy sampling, every instance labelled by its summed semantic logits,
predictions resized back to the image's size and scored with panopticapi's PQ
(eval/panoptic.py; written as COCO panoptic PNG + JSON under <workdir>/eval/panoptic).

Sizes (`python scripts/param_counts.py --config=configs/uvim_panoptic.py:quantizer=vq`):
Stage I 223,594,752 parameters with VQ, 222,422,021 with FSQ (big_vision: ~224M); Stage II
as colorization's.

Expected (Table 2, PQ): VQ 43.4 (usage 100%), FSQ 43.2 (100%), VQ without context 39.0 (99%),
FSQ without context 40.2 (99%); the Stage I oracle 75.8. coco/2017_panoptic is prepared by
TFDS itself from COCO's archives (README, "Reproducing the paper"); COCO's category ids need
`eval.panoptic_categories` (panoptic_coco_categories.json from cocodataset/panopticapi).
"""

from fsq_repro import uvim_config

COCO_TRAIN = 118_287 - 4096  # big_vision trains on train[4096:] (train[:4096] is its holdout)


def get_config(arg: str | None = None):
  c, _ = uvim_config.from_args(arg)
  c.task.name, c.dataset.name = "panoptic", "coco/2017_panoptic"
  c.dataset.train_split, c.dataset.eval_split = "train[4096:]", "validation"
  # (epochs, lr, wd): Stage I 111,000 steps, Stage II 44,600.
  uvim_config.recipe(c, COCO_TRAIN, stage1=(1000, 4e-4, 4e-5), stage2=(200, 1e-3, 1e-6))
  c.eval.batch_size = 40  # 125 batches of the 5,000 validation images, on 1, 2, 4 or 8 devices
  return c


def get_sweep() -> list[dict]:
  """Table 2's panoptic rows (VQ, FSQ, and both without context), three Stage II seeds each."""
  return uvim_config.seeded_sweep((("vq", "quantizer=vq"), ("fsq", "quantizer=fsq"),
                                   ("vq_no_context", "quantizer=vq,context=0"),
                                   ("fsq_no_context", "quantizer=fsq,context=0")))
