"""UViM's config: its defaults, the arguments of configs/uvim_*.py, and its checks.

The defaults are big_vision's colorization recipe (configs/proj/uvim/
vqvae_imagenet2012_colorization.py and train_imagenet2012_colorization_pretrained.py) with
the FSQ paper's quantizer, FSQ [7, 5, 5, 5, 5]. `config.family = "uvim"` routes main.py to
UViM's jobs; the sections mirror MaskGIT's (dataset, quantizer, model = Stage I, stage1,
stage2, eval, mesh), so run directories, resumption and sweeps work alike. `validate` runs
before any compilation and raises ValueError with one line naming the field and the fix.
"""

import math
import os

import ml_collections

from fsq_repro import tasks
from fsq_repro.models import factory, uvim
from fsq_repro.quantizers import fsq as fsq_lib

FAMILY = "uvim"
QUANTIZER_KINDS = {"fsq": "fsq", "vq": "uvim_vq"}  # the `quantizer=` argument -> kind
FID_PROTOCOLS = ("coltran", "split")
IMAGENET_TRAIN = 1_281_167  # imagenet2012 train examples; UViM trains on train[4096:]


def steps(epochs: int, examples: int, batch_size: int) -> int:
  """Training steps of `epochs` over `examples` (each epoch's leftover batch dropped)."""
  return epochs * (examples // batch_size)


def recipe(c, examples: int, *, stage1: tuple, stage2: tuple) -> None:
  """Sets each stage's (epochs, learning rate, weight decay) over `examples` training images:
  a task config's schedule at the stages' batch sizes."""
  for s, (epochs, learning_rate, weight_decay) in ((c.stage1, stage1), (c.stage2, stage2)):
    s.num_train_steps = steps(epochs, examples, s.batch_size)
    s.learning_rate, s.weight_decay = learning_rate, weight_decay


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.family = FAMILY
  c.seed = 0  # Stage I's; stage2.seed is Stage II's (three per Table 2 row)
  c.task = ml_collections.ConfigDict()
  c.task.name = "colorization"  # tasks.names()

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "imagenet2012"
  c.dataset.image_size = 512
  c.dataset.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.dataset.train_split = "train[4096:]"  # big_vision holds out train[:4096] for minival
  c.dataset.eval_split = "validation"
  c.dataset.exclude_classes = ()  # class names left out of both splits
  c.dataset.train_crop = "inception"  # big_vision's inception crop (+ flip); pipeline.TRAIN_CROPS
  c.dataset.num_threads = 2
  c.dataset.num_workers = 0

  c.quantizer = ml_collections.ConfigDict()
  c.quantizer.kind = "fsq"  # "fsq", or "uvim_vq": UViM's EMA VQ (quantizer=vq)
  c.quantizer.levels = (7, 5, 5, 5, 5)  # FSQ, 4375 codes (the FSQ paper's UViM rows)
  c.quantizer.eps = 1e-3
  c.quantizer.variant = "paper"
  c.quantizer.codebook_size = ml_collections.FieldReference(None, field_type=int)  # VQ: 4096
  c.quantizer.codebook_dim = 768  # VQ's codeword size; FSQ's latent has len(levels) channels
  c.quantizer.momentum = 0.995  # VQ: EMA of the codewords' sums and counts
  c.quantizer.min_count = 0.1  # VQ: split codes whose EMA count falls below this
  c.quantizer.splitting = True  # VQ: codebook splitting (the "VQ without splitting" row: 0)

  c.model = ml_collections.ConfigDict()  # Stage I: the label autoencoder
  c.model.name = "uvim_vit"  # factory.LABEL_AUTOENCODERS
  c.model.patch_size = 16
  c.model.code_len = 256  # a 16 x 16 code grid
  c.model.width = 768
  c.model.enc_depth = 6
  c.model.dec_depth = 12
  c.model.mlp_dim = 3072
  c.model.num_heads = 12
  c.model.encoder_context = True  # the task image embedded into the encoder ("context=0": off)
  c.model.decoder_context = True  # and into the decoder
  c.model.code_dropout = True
  # What the decoder sees of a dropped code: "zero" (big_vision: the zero vector) or "flag"
  # (zero plus a channel marking it dropped). FSQ with odd levels has the zero vector as its
  # middle code, so "zero" would make a dropped code look like a real one; validate refuses it.
  c.model.dropped_code = "flag"

  c.stage1 = ml_collections.ConfigDict()
  c.stage1.batch_size = 1024
  c.stage1.num_train_steps = steps(100, IMAGENET_TRAIN - 4096, 1024)  # 100 epochs: 124,700
  c.stage1.learning_rate = 4e-4
  c.stage1.weight_decay = 4e-5  # decoupled, on kernels
  c.stage1.warmup_steps = 4000
  c.stage1.grad_clip_norm = 1.0
  c.stage1.beta2_cap = 0.95
  c.stage1.log_every_steps = 100
  c.stage1.checkpoint_every_steps = 5000
  c.stage1.keep_checkpoints = 3

  c.stage1_workdir = ml_collections.FieldReference(None, field_type=str)

  c.stage2 = ml_collections.ConfigDict()  # the task model (ViT-L/16 encoder, 24 decoder blocks)
  c.stage2.model = "uvim_vtt"  # factory.TASK_MODELS
  c.stage2.seed = 0
  c.stage2.patch_size = 16
  c.stage2.width = 1024
  c.stage2.mlp_dim = 4096
  c.stage2.num_heads = 16
  c.stage2.encoder_layers = 24
  c.stage2.decoder_layers = 24
  c.stage2.dropout = 0.0
  # An AugReg ViT-L/16 .npz (big_vision's `vit_l16` init, ImageNet-21k) for the encoder;
  # None trains it from scratch.
  c.stage2.encoder_init = ml_collections.FieldReference(None, field_type=str)
  c.stage2.batch_size = 512
  c.stage2.num_train_steps = steps(50, IMAGENET_TRAIN - 4096, 512)  # 50 epochs: 124,700
  c.stage2.learning_rate = 1e-3
  c.stage2.encoder_lr_multiplier = 0.1  # big_vision's lr_mults for the pretrained encoder
  c.stage2.weight_decay = 1e-6
  c.stage2.warmup_steps = 4000
  c.stage2.grad_clip_norm = 0.0  # none
  c.stage2.beta2_cap = 0.95
  c.stage2.log_every_steps = 100
  c.stage2.checkpoint_every_steps = 5000
  c.stage2.keep_checkpoints = 3

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 50
  c.eval.temperature = 1e-7  # big_vision's evaluators: greedy; its colorization colab: 1.0
  # "coltran": ColTran's FID-5k (the first eval.num_images validation images in TFDS read
  # order, against read-order images eval.reference_offset onwards at eval.fid_size px);
  # "split": every eval-split image against the split's own ground truth, at image_size.
  c.eval.fid_protocol = "coltran"
  c.eval.num_images = 5000
  c.eval.reference_offset = 10_000
  c.eval.fid_size = 256
  c.eval.feature_network = "auto"
  c.eval.inception_weights = ml_collections.FieldReference(None, field_type=str)
  c.eval.figure_images = 8  # predictions saved for figure6.png
  # Panoptic: COCO's panoptic_coco_categories.json, for COCO's category ids and thing/stuff
  # flags in the written predictions; None numbers the categories 1..133 as TFDS orders them.
  c.eval.panoptic_categories = ml_collections.FieldReference(None, field_type=str)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.fsdp = False
  c.mesh.fsdp_min_size = 2**18
  return c


ARGS = {"quantizer": "fsq", "splitting": 1, "context": 1, "seed": 0}


def from_args(arg: str | None, **extra_args):
  """(the defaults with the arguments applied, every parsed argument). Arguments:
  quantizer=fsq|vq (FSQ [7,5,5,5,5] or UViM's 4096-code EMA VQ), splitting=0|1 (VQ's),
  context=0|1 (the image in Stage I's encoder and decoder), seed=k (Stage II's seed)."""
  from fsq_repro import config_lib  # pylint: disable=g-import-not-at-top
  args = config_lib.parse_args(arg, {**ARGS, **extra_args})
  c = base_config()
  if args["quantizer"] not in QUANTIZER_KINDS:
    raise ValueError(f"quantizer={args['quantizer']!r} is unknown; use quantizer=fsq or "
                     "quantizer=vq")
  c.quantizer.kind = QUANTIZER_KINDS[args["quantizer"]]
  if c.quantizer.kind == "uvim_vq":
    c.quantizer.codebook_size = 4096
  c.quantizer.splitting = bool(args["splitting"])
  c.model.encoder_context = c.model.decoder_context = bool(args["context"])
  c.stage2.seed = args["seed"]
  return c, args


def seeded_sweep(rows, seeds=(0, 1, 2)) -> list[dict]:
  """Table 2's sweep: each row (name, arguments) once per Stage II seed; the first seed's run
  trains the row's Stage I, the others read it ("stage1_from", scripts/sweep.py)."""
  runs = []
  for name, arg in rows:
    for seed in seeds:
      run = {"name": f"{name}_seed{seed}", "arg": f"{arg},seed={seed}"}
      if seed != seeds[0]:
        run["stage1_from"] = f"{name}_seed{seeds[0]}"
      runs.append(run)
  return runs


def validate(config, *, num_devices: int, stage: str) -> None:
  """Raises ValueError with one line naming the field and the fix; runs before compilation."""
  task = tasks.get(config.task.name)
  q, m = config.quantizer, config.model
  if q.kind not in ("fsq", "uvim_vq"):
    raise ValueError(f"quantizer.kind={q.kind!r} is not one of UViM's; use 'fsq' or 'uvim_vq'")
  if q.kind == "fsq":
    fsq_lib.FSQ(q.levels, q.eps, q.variant)  # validates levels, eps and variant
    if m.dropped_code == "zero" and all(level % 2 for level in q.levels):
      raise ValueError(f"model.dropped_code='zero' with quantizer.levels={tuple(q.levels)}: all "
                       "levels are odd, so the zero vector is a real FSQ code and a dropped code "
                       "would look like one; use model.dropped_code='flag'")
  elif not (q.codebook_size and q.codebook_size >= 2 and q.codebook_dim >= 1
            and 0 < q.momentum < 1):
    raise ValueError(f"quantizer.codebook_size={q.codebook_size}, codebook_dim={q.codebook_dim} "
                     f"and momentum={q.momentum}: UViM's VQ needs >= 2 codes, dim >= 1 and a "
                     "momentum in (0, 1)")
  for field, registry in (("model.name", factory.LABEL_AUTOENCODERS),
                          ("stage2.model", factory.TASK_MODELS),
                          ("model.dropped_code", uvim.DROPPED_CODE_MARKERS),
                          ("eval.fid_protocol", FID_PROTOCOLS)):
    section, name = field.split(".")
    if config[section][name] not in registry:
      raise ValueError(f"{field}={config[section][name]!r} is unknown; use one of "
                       f"{sorted(registry)}")
  size, grid = config.dataset.image_size, config.dataset.image_size // m.patch_size
  side = math.isqrt(m.code_len)
  if size % m.patch_size or side * side != m.code_len or side > grid:
    raise ValueError(f"model.code_len={m.code_len} with dataset.image_size={size} and "
                     f"model.patch_size={m.patch_size}: the patch must divide the image and "
                     f"code_len be a square of at most {grid}x{grid} (the patch grid)")
  if size % config.stage2.patch_size:
    raise ValueError(f"stage2.patch_size={config.stage2.patch_size} must divide "
                     f"dataset.image_size={size}")
  if not task.labels:
    raise ValueError(f"task.name={config.task.name!r} has no labels")
  init = config.stage2.encoder_init
  if stage == "stage2" and init and not os.path.isfile(init):
    raise ValueError(f"stage2.encoder_init={init!r} is not a file; give an AugReg ViT .npz "
                     "(e.g. ViT-L/16 ImageNet-21k) or None to train the encoder from scratch")
  from fsq_repro.data import pipeline  # pylint: disable=g-import-not-at-top
  needs, carries = set(task.maps), set(pipeline.dense_maps(config.dataset.name))
  if not needs <= carries:
    datasets = [name for name, (_, maps) in pipeline.DENSE_LABELS.items() if needs <= set(maps)]
    raise ValueError(f"dataset.name={config.dataset.name!r} does not give task.name="
                     f"{config.task.name!r} its labels ({', '.join(sorted(needs))}); "
                     f"use {' or '.join(map(repr, datasets))}")
  if config.dataset.train_crop not in pipeline.TRAIN_CROPS:
    raise ValueError(f"dataset.train_crop={config.dataset.train_crop!r} is unknown; use one of "
                     f"{pipeline.TRAIN_CROPS}")
  if stage == "eval":
    categories = config.eval.panoptic_categories
    if categories and not os.path.isfile(categories):
      raise ValueError(f"eval.panoptic_categories={categories!r} is not a file; give COCO's "
                       "panoptic_coco_categories.json or None")
    if not config.eval.temperature > 0:
      raise ValueError(f"eval.temperature={config.eval.temperature} must be > 0 (1e-7 is greedy)")
    from fsq_repro.eval import features  # pylint: disable=g-import-not-at-top
    features.check_available(config.eval.feature_network, config.eval.inception_weights,
                             config.dataset.name)
  stage_config = config[stage] if stage in ("stage1", "stage2") else config.eval
  batch = stage_config.batch_size
  if batch < 1 or batch % num_devices:
    raise ValueError(f"{stage}.batch_size={batch} is not divisible by the {num_devices} "
                     f"devices; use a multiple of {num_devices}")
  if stage in ("stage1", "stage2") and stage_config.num_train_steps < 1:
    raise ValueError(f"{stage}.num_train_steps={stage_config.num_train_steps} must be >= 1")
