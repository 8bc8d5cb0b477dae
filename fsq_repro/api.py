"""A small public API over a run directory: what a notebook, a script or an evaluation loads.

  tokenizer = api.Tokenizer.from_workdir("/tmp/fsq10")
  indices = tokenizer.encode(images)     # float32 [B, H, W, 3] in [0, 1] -> int32 [B, h, w]
  images = tokenizer.decode(indices)     # int32 [B, h, w] -> float32 [B, H, W, 3]

  generator = api.Generator.from_workdir("/tmp/fsq10")
  logits = generator.logits(tokens, labels)   # int32 [B, h*w] (mask_id where masked), [B]
                                              # -> float32 [B, h*w, |C|], no guidance
  images = generator.sample(labels, cfg=0.2, seed=0)

Each loads the newest checkpoint of its stage: the EMA tokenizer of <workdir>/stage1 (or of
`config.stage1_workdir`) and the transformer of <workdir>/stage2, built by the model factory
from the config the run saved (or the `config` given). Parameters are replicated on every
device; inputs may be numpy arrays or (sharded) jax arrays, and results are jax arrays.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fsq_repro import checkpoints, parallel, sampling
from fsq_repro import workdir as workdir_lib
from fsq_repro.models import factory
from fsq_repro.models import transformer as transformer_lib

# What a Stage I checkpoint holds for inference (train/stage1.Stage1State's fields): the EMA
# parameters, and the quantizer's other collections (VQ usage counts, if tracked).
TOKENIZER_PARAMS, TOKENIZER_STATE = "ema_params", "quantizer_state"
TRANSFORMER_PARAMS = "params"  # train/stage2.Stage2State's field


def _replicated(abstract, mesh):
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                      abstract)


class Tokenizer:
  """A trained Stage I autoencoder: images <-> code indices."""

  def __init__(self, config, model, variables):
    self.config, self.model, self.variables = config, model, variables
    self.codebook_size = factory.codebook_size(config.quantizer)
    self._encode = jax.jit(lambda v, x: model.apply(v, x, method="encode")[1].indices)
    self._decode = jax.jit(lambda v, i: model.apply(v, i, method="decode_indices"))
    self._reconstruct = jax.jit(lambda v, x: model.apply(v, x, train=False))

  @classmethod
  def from_workdir(cls, workdir: str, config=None, mesh=None, step=None) -> "Tokenizer":
    """The EMA tokenizer of `workdir`/stage1 (at its newest checkpoint, or at `step`);
    `config` defaults to the one it was trained with."""
    directory = workdir_lib.stage_dir(workdir, "stage1")
    config = config if config is not None else workdir_lib.saved_config(directory)
    model = factory.build_tokenizer(config)
    size = config.dataset.image_size
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                               jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    abstract = {TOKENIZER_PARAMS: variables["params"]}
    state = {k: v for k, v in variables.items() if k != "params"}
    if state:
      abstract[TOKENIZER_STATE] = state
    restored = checkpoints.restore_latest(workdir_lib.checkpoint_dir(workdir, "stage1"),
                                          _replicated(abstract, mesh or parallel.make_mesh()),
                                          step=step)
    return cls(config, model, {"params": restored[TOKENIZER_PARAMS],
                               **restored.get(TOKENIZER_STATE, {})})

  def encode(self, images) -> jax.Array:
    """float32 [B, H, W, 3] in [0, 1] -> int32 code indices [B, h, w]."""
    return self._encode(self.variables, images)

  def decode(self, indices) -> jax.Array:
    """int32 code indices [B, h, w] -> float32 images [B, H, W, 3]."""
    return self._decode(self.variables, indices)

  def reconstruct(self, images):
    """(float32 reconstructions, QuantizerOutput) of one forward pass, as evaluation scores it."""
    return self._reconstruct(self.variables, images)


class Generator:
  """A trained Stage II transformer with its tokenizer: class labels -> images."""

  def __init__(self, config, tokenizer: Tokenizer, model, params, layout, mesh):
    self.config, self.tokenizer, self.model = config, tokenizer, model
    self.params, self.layout, self.mesh = params, layout, mesh
    self.grid = factory.token_grid(config)
    self._logits = jax.jit(self._image_logits)
    self._sample = jax.jit(self._sample_images)
    # cfg = 0 compiled apart: conditional logits only, one transformer pass per step.
    self._sample_conditional = jax.jit(functools.partial(self._sample_images, cfg=0.0))

  @classmethod
  def from_workdir(cls, workdir: str, config=None, mesh=None) -> "Generator":
    """The transformer of `workdir`/stage2 and its Stage I tokenizer."""
    directory = workdir_lib.stage_dir(workdir, "stage2")
    saved = workdir_lib.read_run_config(directory)
    if saved is None:
      raise FileNotFoundError(f"{directory}/config.json is missing; run --mode=stage2 first")
    config = config if config is not None else workdir_lib.saved_config(directory)
    mesh = mesh or parallel.make_mesh()
    tokenizer = Tokenizer.from_workdir(workdir_lib.stage1_workdir(config, workdir), config, mesh)
    if "token_layout" not in saved:
      raise ValueError(f"{directory}/config.json has no token_layout (a run from before they "
                       "were saved); retrain Stage II in a new --workdir")
    layout = transformer_lib.TokenLayout(**saved["token_layout"])
    model = factory.build_transformer(config, layout)
    ids = jax.ShapeDtypeStruct((1, factory.tokens_per_image(config) + 1), jnp.int32)
    params = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                            ids)["params"]
    restored = checkpoints.restore_latest(workdir_lib.checkpoint_dir(workdir, "stage2"),
                                          _replicated({TRANSFORMER_PARAMS: params}, mesh))
    return cls(config, tokenizer, model, restored[TRANSFORMER_PARAMS], layout, mesh)

  @property
  def mask_id(self) -> int:
    return self.layout.mask_id

  def _model_logits(self, params, input_ids):
    return self.model.apply({"params": params}, input_ids, train=False)

  def _image_logits(self, params, tokens, labels):
    logits = self._model_logits(params, self.layout.build_input(tokens, labels))
    return transformer_lib.image_logits(logits, self.layout)

  def logits(self, tokens, labels) -> jax.Array:
    """int32 tokens [B, h*w] (mask_id where masked), int32 labels [B] -> float32 image-token
    logits [B, h*w, |C|], without guidance."""
    return self._logits(self.params, jnp.asarray(tokens, jnp.int32),
                        jnp.asarray(labels, jnp.int32))

  def _sample_images(self, params, tokenizer_variables, labels, rng, cfg):
    s = self.config.sample
    tokens = sampling.sample_tokens(
        functools.partial(self._model_logits, params), rng, labels,
        num_tokens=self.grid[0] * self.grid[1], layout=self.layout, num_steps=s.num_steps,
        cfg_alpha=cfg, choice_temperature=s.choice_temperature)
    return self.tokenizer.model.apply(tokenizer_variables, tokens.reshape(-1, *self.grid),
                                      method="decode_indices")

  def sample(self, labels, cfg: float = 0.0, seed=0) -> jax.Array:
    """float32 images [B, H, W, 3] for int class `labels` [B] (B divisible by the device
    count), by MaskGIT decoding (config.sample: steps, choice temperature) with guidance
    weight `cfg` (0: no unconditional pass). `seed`: an int, or a jax PRNG key.

    With several processes every process passes the same `labels` (the global batch); each
    decodes its devices' rows, and the result is the same as one process's."""
    rng = jax.random.key(seed) if isinstance(seed, (int, np.integer)) else seed
    labels = parallel.shard_global(np.asarray(labels, np.int32), self.mesh)
    if cfg == 0:
      return self._sample_conditional(self.params, self.tokenizer.variables, labels, rng)
    return self._sample(self.params, self.tokenizer.variables, labels, rng,
                        jnp.asarray(cfg, jnp.float32))


# What UViM's Stage I and Stage II checkpoints hold (train/uvim_stage{1,2}'s states' fields).
UVIM_PARAMS, UVIM_VQ_STATE = "params", "vq_state"


class LabelCoder:
  """UViM's trained Stage I: a task's labels (with their context image) <-> code indices."""

  def __init__(self, config, task, model, variables):
    self.config, self.task, self.model, self.variables = config, task, model, variables
    self.codebook_size = factory.codebook_size(config.quantizer)
    self._encode = jax.jit(lambda v, labels, context: model.apply(
        v, labels, context, method="encode")[1].indices)
    self._decode = jax.jit(lambda v, indices, context: model.apply(
        v, indices, context, method="decode_indices"))

  @classmethod
  def from_workdir(cls, workdir: str, config=None, mesh=None, step=None) -> "LabelCoder":
    """The label autoencoder of `workdir`/stage1 (newest checkpoint, or `step`)."""
    from fsq_repro import tasks  # pylint: disable=g-import-not-at-top
    directory = workdir_lib.stage_dir(workdir, "stage1")
    config = config if config is not None else workdir_lib.saved_config(directory)
    task = tasks.get(config.task.name)
    model = factory.build_label_autoencoder(config, task.labels)
    example = task.prepare(tasks.zeros_batch(task, config.dataset.image_size))
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                               example["labels"], example["context"])
    abstract = {UVIM_PARAMS: variables["params"],
                UVIM_VQ_STATE: {k: v for k, v in variables.items() if k != "params"}}
    restored = checkpoints.restore_latest(workdir_lib.checkpoint_dir(workdir, "stage1"),
                                          _replicated(abstract, mesh or parallel.make_mesh()),
                                          step=step)
    return cls(config, task, model, {"params": restored[UVIM_PARAMS],
                                     **restored.get(UVIM_VQ_STATE, {})})

  def encode(self, labels: dict, context) -> jax.Array:
    """labels {key: [B, H, W, C]} and context [B, H, W, 3] -> int32 codes [B, code_len]."""
    return self._encode(self.variables, labels, context)

  def decode(self, indices, context) -> dict:
    """int32 codes [B, code_len] and context -> decoded labels {key: [B, H, W, C]}."""
    return self._decode(self.variables, indices, context)


class TaskPredictor:
  """UViM's trained Stage II with its frozen Stage I: image -> sampled codes -> prediction."""

  def __init__(self, config, coder: LabelCoder, model, params):
    from fsq_repro import uvim_sampling  # pylint: disable=g-import-not-at-top
    self.config, self.coder, self.model, self.params = config, coder, model, params
    self._sample = jax.jit(functools.partial(uvim_sampling.sample_codes, model),
                           static_argnames="temperature")

  @classmethod
  def from_workdir(cls, workdir: str, config=None, mesh=None) -> "TaskPredictor":
    """The task model of `workdir`/stage2 and the Stage I it was trained on."""
    directory = workdir_lib.stage_dir(workdir, "stage2")
    config = config if config is not None else workdir_lib.saved_config(directory)
    mesh = mesh or parallel.make_mesh()
    coder = LabelCoder.from_workdir(workdir_lib.stage1_workdir(config, workdir), config, mesh)
    model = factory.build_task_model(config)
    size = config.dataset.image_size
    abstract = jax.eval_shape(model.init, jax.random.key(0),
                              jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
                              jax.ShapeDtypeStruct((1, model.seq_len), jnp.int32))["params"]
    restored = checkpoints.restore_latest(workdir_lib.checkpoint_dir(workdir, "stage2"),
                                          {UVIM_PARAMS: _replicated(abstract, mesh)})
    return cls(config, coder, model, restored[UVIM_PARAMS])

  def sample_codes(self, image, rng, temperature: float) -> jax.Array:
    """The task model's input images [B, H, W, 3] -> int32 codes [B, code_len]."""
    return self._sample(self.params, image, rng, temperature=temperature)

  def predict(self, example: dict, rng, temperature: float) -> dict:
    """A prepared example (task.prepare) -> the task's prediction from sampled codes."""
    codes = self.sample_codes(example["image"], rng, temperature)
    return self.coder.task.predict(self.coder.decode(codes, example["context"]))
