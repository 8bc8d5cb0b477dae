"""google-research/maskgit's checkpoints -> our tokenizer and transformer parameters.

The official files (`tokenizer_imagenet{256,512}_checkpoint`, `maskgit_imagenet{256,512}_
checkpoint`) are `flax.serialization.to_bytes` of a variables dict, read back as
`inference.py` reads them (`utils.restore_from_path`: `from_bytes(None, ...)`). Their Flax
names come from module order (MaskGIT's `vqgan_tokenizer.py` and `maskgit_transformer.py`):

  tokenizer   encoder: Conv_0 stem, ResBlock_{B l + i} (level l, block i), ResBlock_{L B + i}
              (middle), GroupNorm_0 + Conv_1 (output); decoder: Conv_0 stem, ResBlock_i
              (middle), ResBlock_{B + B (L-1-l) + i} (level l), Conv_{L-l} (level l's upsample
              conv), GroupNorm_0 + Conv_L (output); in a ResBlock GroupNorm_0, Conv_0,
              GroupNorm_1, Conv_1 and Conv_2 (the 1x1 conv of the output); quantizer/codebook.
  transformer Embed_0/{word_embeddings, position_embeddings, embeddings_ln},
              TransformerLayer_i/{Attention_0/{self_attention, attention_output_ln},
              Mlp_0/{intermediate_output, layer_output, layer_output_ln}},
              MlmLayer_0/{mlm_dense, mlm_ln, mlm_bias}.

Their mask token is id -1, which an embedding lookup wraps to the last row (vocab - 1): our
TokenLayout's mask_id. Class c is token |C| + c in both.
"""

import flax.serialization
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from fsq_repro import checkpoints
from fsq_repro import workdir as workdir_lib
from fsq_repro.models import factory


def read_official_checkpoint(path: str) -> dict:
  """The variables dict of an official checkpoint file, as numpy arrays."""
  with open(path, "rb") as f:
    state = flax.serialization.from_bytes(None, f.read())
  return _numpy(state)


def _numpy(tree):
  if isinstance(tree, dict):
    return {k: _numpy(v) for k, v in tree.items()}
  return np.asarray(tree)


def _take(tree: dict, path: str):
  """tree["a"]["b"] for path "a/b", with an error naming the path when it is missing."""
  node = tree
  for key in path.split("/"):
    if not isinstance(node, dict) or key not in node:
      raise ValueError(f"the official checkpoint has no {path!r}; is it a MaskGIT "
                       f"{'tokenizer' if path.startswith(('encoder', 'decoder')) else 'file'}?")
    node = node[key]
  return node


def _res_block(official: dict) -> dict:
  block = {name: official[name] for name in ("GroupNorm_0", "Conv_0", "GroupNorm_1", "Conv_1")}
  if "Conv_2" in official:
    block["skip"] = official["Conv_2"]
  return block


def _count(tree: dict, prefix: str) -> int:
  return sum(1 for key in tree if key.startswith(prefix + "_"))


def tokenizer_params(variables: dict, num_levels: int, num_res_blocks: int) -> dict:
  """Official VQVAE variables -> our Autoencoder's params (the `VQ` quantizer)."""
  params = variables.get("params", variables)
  encoder, decoder = _take(params, "encoder"), _take(params, "decoder")
  levels, blocks = num_levels, num_res_blocks
  expected = levels * blocks + blocks
  for name, tree in (("encoder", encoder), ("decoder", decoder)):
    if _count(tree, "ResBlock") != expected:
      raise ValueError(f"the official {name} has {_count(tree, 'ResBlock')} ResBlocks; "
                       f"model.channel_multipliers ({levels} levels) and model.num_res_blocks "
                       f"({blocks}) want {expected}")
  ours_encoder = {"conv_in": encoder["Conv_0"], "norm_out": encoder["GroupNorm_0"],
                  "conv_out": encoder["Conv_1"]}
  for level in range(levels):
    for i in range(blocks):
      ours_encoder[f"level{level}_block{i}"] = _res_block(encoder[f"ResBlock_{blocks * level + i}"])
  for i in range(blocks):
    ours_encoder[f"mid_block{i}"] = _res_block(encoder[f"ResBlock_{levels * blocks + i}"])
  ours_decoder = {"conv_in": decoder["Conv_0"], "norm_out": decoder["GroupNorm_0"],
                  "conv_out": decoder[f"Conv_{levels}"]}
  for i in range(blocks):
    ours_decoder[f"mid_block{i}"] = _res_block(decoder[f"ResBlock_{i}"])
  for level in range(levels):
    for i in range(blocks):
      index = blocks + blocks * (levels - 1 - level) + i
      ours_decoder[f"level{level}_block{i}"] = _res_block(decoder[f"ResBlock_{index}"])
    if level > 0:
      ours_decoder[f"level{level}_upsample_conv"] = decoder[f"Conv_{levels - level}"]
  return {"encoder": ours_encoder, "decoder": ours_decoder,
          "quantizer": {"codebook": _take(params, "quantizer/codebook")}}


def transformer_params(variables: dict) -> dict:
  """Official Transformer variables -> our MaskGITTransformer's params."""
  params = variables.get("params", variables)
  embed = _take(params, "Embed_0")
  ours = {"token_embedding": {"embedding": embed["word_embeddings"]["embedding"]},
          "position_embedding": embed["position_embeddings"]["embedding"],
          "embedding_norm": embed["embeddings_ln"]}
  for i in range(_count(params, "TransformerLayer")):
    layer = params[f"TransformerLayer_{i}"]
    attention, mlp = layer["Attention_0"], layer["Mlp_0"]
    ours[f"layer_{i}"] = {"attention": attention["self_attention"],
                          "attention_norm": attention["attention_output_ln"],
                          "mlp_in": mlp["intermediate_output"],
                          "mlp_out": mlp["layer_output"], "mlp_norm": mlp["layer_output_ln"]}
  head = _take(params, "MlmLayer_0")
  ours.update(head_dense=head["mlm_dense"], head_norm=head["mlm_ln"],
              logits_bias=head["mlm_bias"]["bias"])
  return ours


def transformer_sizes(variables: dict) -> dict:
  """(layers, width, heads, MLP width, vocabulary, positions) of an official transformer."""
  params = variables.get("params", variables)
  embedding = _take(params, "Embed_0/word_embeddings/embedding")
  query = _take(params, "TransformerLayer_0/Attention_0/self_attention/query/kernel")
  mlp = _take(params, "TransformerLayer_0/Mlp_0/intermediate_output/kernel")
  positions = _take(params, "Embed_0/position_embeddings/embedding")
  return {"num_layers": _count(params, "TransformerLayer"), "hidden_size": embedding.shape[1],
          "num_heads": query.shape[1], "mlp_dim": mlp.shape[1], "vocab_size": embedding.shape[0],
          "positions": positions.shape[0]}


def _check_shapes(converted: dict, abstract: dict, what: str) -> None:
  """Raises ValueError naming the first leaf whose name or shape differs from our model's."""
  flat_converted = flax.traverse_util.flatten_dict(converted, sep="/")
  flat_abstract = flax.traverse_util.flatten_dict(abstract, sep="/")
  for path in sorted(set(flat_converted) | set(flat_abstract)):
    theirs = getattr(flat_converted.get(path), "shape", "absent")
    ours = getattr(flat_abstract.get(path), "shape", "absent")
    if theirs == "absent" or ours == "absent" or tuple(theirs) != tuple(ours):
      raise ValueError(f"the official {what} does not fit the config's network at {path} "
                       f"({theirs} converted, {ours} expected); pass the config of the "
                       "checkpoint (configs/maskgit_official.py:image_size=...)")


def write_workdir(out: str, config, tokenizer_variables: dict, transformer_variables: dict,
                  sources: dict) -> dict:
  """Writes a run directory of the converted official networks; returns its token layout.

  Stage I holds the tokenizer as a trained run's EMA parameters, Stage II the transformer,
  each at step num_train_steps of `config` (a finished run), with config.json, so that
  fsq_repro.api and --mode=sample / --mode=eval read them as any run of ours.
  """
  m = config.model
  tokenizer = tokenizer_params(tokenizer_variables, len(m.channel_multipliers),
                               m.num_res_blocks)
  size = config.dataset.image_size
  model = factory.build_tokenizer(config)
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                            jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))["params"]
  _check_shapes(tokenizer, abstract, "tokenizer")

  sizes = transformer_sizes(transformer_variables)
  codebook_size = factory.codebook_size(config.quantizer)
  layout = factory.token_layout(config, sizes["vocab_size"] - codebook_size - 1)
  s = config.stage2
  for field in ("num_layers", "hidden_size", "num_heads", "mlp_dim"):
    if sizes[field] != s[field]:
      raise ValueError(f"the official transformer has {field}={sizes[field]}, the config "
                       f"stage2.{field}={s[field]}; pass the checkpoint's config")
  if sizes["positions"] != factory.tokens_per_image(config) + 1:
    raise ValueError(f"the official transformer has {sizes['positions']} positions, the "
                     f"config's {size} px images {factory.tokens_per_image(config) + 1}; pass "
                     "configs/maskgit_official.py:image_size=512 for the 512 px checkpoint")
  transformer = transformer_params(transformer_variables)
  model = factory.build_transformer(config, layout)
  ids = jax.ShapeDtypeStruct((1, sizes["positions"]), jnp.int32)
  _check_shapes(transformer, jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), ids)["params"], "transformer")

  for stage, state, extra in (
      ("stage1", {"ema_params": tokenizer}, {}),
      ("stage2", {"params": transformer}, {"token_layout": {
          "codebook_size": layout.codebook_size, "num_classes": layout.num_classes}})):
    step = int(config[stage].num_train_steps)
    checkpointer = checkpoints.Checkpointer(workdir_lib.checkpoint_dir(out, stage),
                                            every_steps=1, keep=1)
    checkpointer.save(step, {"step": np.int32(step), **state}, force=True)
    checkpointer.close()
    workdir_lib.write_run_config(workdir_lib.stage_dir(out, stage), config,
                                 converted_from=sources[stage], **extra)
  return {"codebook_size": layout.codebook_size, "num_classes": layout.num_classes}
