"""Memory and speed options: FSDP (on 8 fake CPU devices), remat, CPU kernel gradients.

FSDP changes where parameters and optimizer moments live, not what is computed: two
steps of Stage I and Stage II with FSDP must match data-parallel training with replicated
parameters up to float32 round-off, while each device holds a fraction of the state.
Remat changes what the backward pass stores, not the parameters or the gradients. The
VQGAN's convolutions compute kernel gradients by matmuls on CPU: the same values up to
float32 round-off.
"""

import functools
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from fsq_repro.models import cpu_conv, transformer, vqgan
from fsq_repro.quantizers import FiniteScalarQuantizer
from fsq_repro import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EIGHT_DEVICE_RUN = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    sys.path[:0] = [sys.argv[2], sys.argv[2] + "/tests"]
    import numpy as np
    from tiny_configs import tiny_config, tiny_uvim_config
    from fsq_repro import api, parallel, tasks
    from fsq_repro.data import tokens as tokens_lib
    from fsq_repro.models import factory
    from fsq_repro.train import loop, stage1, stage2, uvim_stage1, uvim_stage2

    mesh = parallel.make_mesh()
    data = np.random.default_rng(0)
    images = data.random((2, 8, 16, 16, 3), np.float32)
    tokens = data.integers(0, 64, (2, 8, 64))
    labels = data.integers(0, 8, (2, 8))
    results, initial = {}, {}

    def train(name, setup, mesh_config, batches):
      abstract, shardings = parallel.abstract_state(setup.init, setup.init_rng, mesh,
                                                    mesh_config)
      # One initialisation (compiling random init is slow on CPU), placed both ways, from
      # host copies so that each run gets its own buffers to donate.
      if "state" not in initial:
        initial["state"] = jax.device_get(jax.jit(setup.init)(jax.random.key(0)))
      state = jax.device_put(initial["state"], shardings)
      per_device = {}
      for leaf in jax.tree.leaves(state):
        for shard in leaf.addressable_shards:
          per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
      results[name + "/bytes_per_device"] = list(per_device.values())
      results[name + "/abstract_bytes"] = parallel.abstract_bytes_per_device(abstract)
      results[name + "/sharded_leaves"] = sum(
          s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(shardings))
      step = loop.make_train_step(setup.train_step, shardings, mesh)
      for i, batch in enumerate(batches):
        state, metrics = step(state, parallel.global_batch(batch, mesh),
                              jax.random.key(i + 1), setup.frozen)
        for key, value in metrics.items():
          results[f"{name}/step{i}/{key}"] = np.asarray(value)
      for i, leaf in enumerate(jax.tree.leaves(state)):  # float32: npz has no bfloat16
        results[f"{name}/state{i}"] = np.asarray(leaf.astype(np.float32))

    def uvim_coder(config):  # a freshly initialised Stage I, frozen under Stage II
      task = tasks.get(config.task.name)
      model = factory.build_label_autoencoder(config, task.labels)
      example = uvim_stage1.example_shapes(config, task)
      variables = model.init(jax.random.key(0), example["labels"], example["context"])
      return api.LabelCoder(config, task, model, variables)

    for fsdp in (False, True):
      config = tiny_config("quantizer=vq,codebook_bits=6")
      config.mesh.fsdp, config.mesh.fsdp_min_size = fsdp, 256
      if sys.argv[3].startswith("uvim"):
        config = tiny_uvim_config("quantizer=vq")
        config.mesh.fsdp, config.mesh.fsdp_min_size = fsdp, 256
        setup = (uvim_stage1.setup(config) if sys.argv[3] == "uvim_stage1" else
                 uvim_stage2.setup(config, uvim_coder(config)))
        train(f"{sys.argv[3]}/{fsdp}", setup, config.mesh, [{"image": x} for x in images])
      elif sys.argv[3] == "stage1":
        train(f"stage1/{fsdp}", stage1.setup(config), config.mesh,
              [{"image": x} for x in images])
      else:
        s = config.stage2
        s.hidden_size, s.num_layers, s.num_heads, s.mlp_dim = 32, 2, 2, 64
        s.warmup_steps = 1
        layout = factory.token_layout(config, num_classes=8)
        token_batches = tokens_lib.TokenBatches(tokens.reshape(16, 64), labels.reshape(16),
                                                global_batch_size=8, seed=0)
        train(f"stage2/{fsdp}", stage2.setup(config, layout, token_batches=token_batches),
              config.mesh,
              [{"tokens": t, "label": l} for t, l in zip(tokens, labels)])
    np.savez(sys.argv[1], **results)
""")


@pytest.mark.parametrize("shape,min_size,expected", [
    ((3, 3, 64, 128), 1, P(None, None, None, "data")),  # the largest divisible axis
    ((2025, 768), 1, P(None, "data")),  # 2025 is not divisible by 8: the next axis
    ((1000, 10), 1, P("data", None)),
    ((9, 7), 1, P()),  # nothing divisible: replicated
    ((256, 64), 2**18, P()),  # too small to shard
    ((), 1, P()),
])
def test_fsdp_spec_shards_the_largest_divisible_axis(shape, min_size, expected):
  assert parallel.fsdp_spec(shape, 8, min_size) == expected
  assert parallel.fsdp_spec(shape, 1, 1) == P()


@pytest.mark.slow  # a fresh process with 8 CPU devices
@pytest.mark.parametrize("stage", ["stage1", "stage2", "uvim_stage1", "uvim_stage2"])
def test_fsdp_trains_like_replication_with_less_memory_per_device(tmp_path, stage):
  out = tmp_path / "results.npz"
  run = subprocess.run([sys.executable, "-c", EIGHT_DEVICE_RUN, str(out), ROOT, stage],
                       cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert run.returncode == 0, run.stderr[-4000:]
  r = np.load(out)
  replicated, sharded = f"{stage}/False", f"{stage}/True"
  assert r[f"{replicated}/sharded_leaves"] == 0 and r[f"{sharded}/sharded_leaves"] > 10
  full = r[f"{replicated}/bytes_per_device"]
  per_device = r[f"{sharded}/bytes_per_device"]
  assert len(full) == len(per_device) == 8
  assert set(full) == {int(r[f"{replicated}/abstract_bytes"])}  # each device holds it all
  assert set(per_device) == {int(r[f"{sharded}/abstract_bytes"])}
  assert per_device[0] < 0.3 * full[0], (per_device[0], full[0])

  metric_keys = [k for k in r.files if k.startswith(replicated + "/step")]
  assert len(metric_keys) >= 6  # two steps of at least three metrics
  for key in metric_keys:
    np.testing.assert_allclose(r[key.replace(replicated, sharded)], r[key], rtol=1e-4,
                               atol=1e-6, err_msg=key)
  state_keys = [k for k in r.files if k.startswith(replicated + "/state")]
  assert len(state_keys) > 10
  for key in state_keys:
    np.testing.assert_allclose(r[key.replace(replicated, sharded)], r[key], rtol=1e-4,
                               atol=1e-5, err_msg=key)


# --- remat: the other memory option ---------------------------------------------------------


def loss_and_gradients(model, variables, inputs, **kwargs):
  """(value and gradients of a scalar loss with respect to the params, lowered program text)."""

  def loss(params):
    out = model.apply({**variables, "params": params}, inputs, **kwargs)
    out = out[0] if isinstance(out, tuple) else out
    return jnp.mean(jnp.square(out))

  grad = jax.jit(jax.value_and_grad(loss))
  return grad(variables["params"]), grad.lower(variables["params"]).as_text()


def check_remat_matches(plain, rematted, variables, inputs, **kwargs):
  """Same loss and gradients; only the rematted program marks recomputation.

  The memory saving itself shows on GPU and TPU; XLA:CPU drops the optimization barriers
  that keep the recomputation apart and merges it back into the forward pass.
  """
  (value, grads), program = loss_and_gradients(plain, variables, inputs, **kwargs)
  (remat_value, remat_grads), remat_program = loss_and_gradients(
      rematted, variables, inputs, **kwargs)
  assert "optimization_barrier" in remat_program and "optimization_barrier" not in program
  np.testing.assert_allclose(remat_value, value, rtol=1e-6)
  assert jax.tree.structure(remat_grads) == jax.tree.structure(grads)
  for a, b in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def rbg_key(seed):
  # The "rbg" generator compiles far faster than threefry on CPU; these need no particular draws.
  return jax.random.key(seed, impl="rbg")


@pytest.mark.slow  # compiles four gradient programs
def test_transformer_remat_keeps_params_and_gradients():
  model = transformer.MaskGITTransformer(vocab_size=40, hidden_size=16, num_layers=2,
                                         num_heads=2, mlp_dim=32, max_len=17)
  ids = jax.random.randint(rbg_key(0), (4, 17), 0, 40)
  variables = jax.jit(functools.partial(model.init, train=False))(rbg_key(1), ids)
  rematted = model.clone(remat=True)
  abstract = jax.eval_shape(functools.partial(rematted.init, train=False), rbg_key(1), ids)
  assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(jnp.shape, variables)
  # Dropout on: the recomputed forward pass must draw the same masks.
  check_remat_matches(model, rematted, variables, ids, train=True,
                      rngs={"dropout": rbg_key(2)})


@pytest.mark.slow  # compiles four gradient programs
def test_autoencoder_remat_keeps_params_and_gradients():
  model = vqgan.Autoencoder(quantizer=FiniteScalarQuantizer(levels=(5, 5, 5)), filters=8,
                            channel_multipliers=(1, 2), num_res_blocks=1, num_groups=4)
  images = jax.random.uniform(rbg_key(0), (2, 16, 16, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(rbg_key(1), images)
  check_remat_matches(model, model.clone(remat=True), variables, images, train=True)


# --- the CPU kernel gradient of the VQGAN's convolutions -------------------------------------


@pytest.mark.parametrize("kernel,dtype,rtol", [(3, jnp.float32, 1e-5), (1, jnp.float32, 1e-5),
                                               (3, jnp.bfloat16, 2e-2)])
def test_conv_kernel_gradient_by_matmuls_matches_xla(kernel, dtype, rtol):
  fast = nn.Conv(6, (kernel, kernel), dtype=dtype,
                 conv_general_dilated=cpu_conv.conv_general_dilated)
  plain = nn.Conv(6, (kernel, kernel), dtype=dtype)
  x = jax.random.normal(jax.random.key(0), (2, 8, 6, 4))
  params = plain.init(jax.random.key(1), x)

  def gradients(model):
    loss = lambda p, x: jnp.sum(jnp.sin(model.apply(p, x).astype(jnp.float32)))
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)

  np.testing.assert_array_equal(fast.apply(params, x), plain.apply(params, x))
  (fast_params, fast_x), (plain_params, plain_x) = gradients(fast), gradients(plain)
  np.testing.assert_array_equal(fast_x, plain_x)  # the input gradient is XLA's own
  np.testing.assert_array_equal(fast_params["params"]["bias"], plain_params["params"]["bias"])
  expected = np.asarray(plain_params["params"]["kernel"], np.float32)
  # Sums over B*H*W in another order: round-off relative to the gradient's scale.
  np.testing.assert_allclose(np.asarray(fast_params["params"]["kernel"], np.float32), expected,
                             rtol=rtol, atol=rtol * np.abs(expected).max())


def test_conv_keeps_xla_for_strided_convolutions():
  strided = nn.Conv(4, (3, 3), strides=2, conv_general_dilated=cpu_conv.conv_general_dilated)
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 2))
  params = strided.init(jax.random.key(1), x)
  program = jax.jit(jax.grad(lambda p: jnp.sum(strided.apply(p, x)))).lower(params).as_text()
  assert "custom_vjp" not in program and "dot_general" not in program


def test_model_field_chooses_the_kernel_gradient():
  """kernel_gradient="auto" gives the autoencoder's convolutions the per-tap loop on CPU (the
  test above checks its values), "xla" leaves them to XLA, as bench.py's FLOP count needs."""
  images = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
  programs = {}
  for name in ("auto", "xla"):
    model = vqgan.Autoencoder(quantizer=FiniteScalarQuantizer(levels=(5, 5, 5)), filters=8,
                              channel_multipliers=(1, 2), num_res_blocks=1, num_groups=4,
                              kernel_gradient=name)
    params = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(1),
                            images)["params"]
    loss = lambda p, x: jnp.mean(model.apply({"params": p}, x, train=True)[0] ** 2)
    programs[name] = jax.jit(jax.grad(loss)).lower(params, images).as_text()
  assert programs["auto"].count("stablehlo.while") >= 8  # one loop per 'SAME' conv
  assert "stablehlo.while" not in programs["xla"]
