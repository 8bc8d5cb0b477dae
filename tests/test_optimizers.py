"""UViM's optimizer against a numpy transcription of big_vision's update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_repro.train import optimizers


def reference_updates(params, grads_per_step, *, lr, wd, total, warmup, clip, cap=0.95,
                      bf16=True):
  """big_vision's chain, written out: clip -> factored RMS -> bf16 momentum -> lr -> wd on
  kernels -> cosine schedule -> negate. Returns the update of each step."""
  v, m, out = {}, {}, []
  for t, grads in enumerate(grads_per_step):
    norm = np.sqrt(sum(np.sum(g.astype(np.float64)**2) for g in grads.values()))
    scale = min(1.0, clip / norm)
    beta2 = min(cap, 1.0 - (t + 1.0)**-0.8)
    progress = np.clip((t - warmup) / (total - warmup), 0, 1)
    schedule = 0.5 * (1 + np.cos(np.pi * progress)) * min(1.0, t / warmup)
    step = {}
    for name, g in grads.items():
      g = g * scale
      g2 = g**2 + 1e-30
      if g.ndim == 2 and min(g.shape) >= 32:
        row, col = v.get(name, (np.zeros(g.shape[0]), np.zeros(g.shape[1])))
        row = beta2 * row + (1 - beta2) * g2.mean(axis=1)
        col = beta2 * col + (1 - beta2) * g2.mean(axis=0)
        v[name] = (row, col)
        u = g * (row / row.mean())[:, None]**-0.5 * col[None, :]**-0.5
      else:
        acc = beta2 * v.get(name, np.zeros(g.shape)) + (1 - beta2) * g2
        v[name] = acc
        u = g * acc**-0.5
      m[name] = 0.9 * m.get(name, 0.0) + 0.1 * u
      if bf16:
        m[name] = np.asarray(jnp.asarray(m[name], jnp.bfloat16), np.float64)
      update = lr * m[name]
      if name.endswith("kernel"):
        update = update + wd * params[name]
      step[name] = -schedule * update
    out.append(step)
  return out


@pytest.mark.parametrize("momentum_dtype,steps", [(jnp.float32, 50), (jnp.bfloat16, 4)])
def test_uvim_optimizer_is_big_visions_update(momentum_dtype, steps):
  # 50 steps reach the beta2 cap (1 - t^-0.8 > 0.95 from t = 43); bfloat16 momentum is
  # compared over a few steps, to its rounding.
  rng = np.random.default_rng(0)
  params = {"kernel": rng.normal(size=(40, 36)), "bias": rng.normal(size=36),
            "small_kernel": rng.normal(size=(8, 36))}
  grads = [{k: rng.normal(size=p.shape) * 2 for k, p in params.items()} for _ in range(steps)]
  kw = dict(lr=4e-4, wd=4e-5, total=60, warmup=5, clip=1.0)
  bf16 = momentum_dtype == jnp.bfloat16
  expected = reference_updates(params, grads, **kw, bf16=bf16)
  # nested like a flax tree: the mask looks at the leaf's own name
  tree = lambda d: {"layer": {"kernel": d["kernel"], "bias": d["bias"]},
                    "small": {"kernel": d["small_kernel"]}}
  tx = optimizers.uvim_optimizer(learning_rate=kw["lr"], weight_decay=kw["wd"],
                                 total_steps=kw["total"], warmup_steps=kw["warmup"],
                                 grad_clip_norm=kw["clip"], momentum_dtype=momentum_dtype)
  p32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree(params))
  state = tx.init(p32)
  for step, (g, want) in enumerate(zip(grads, expected)):
    updates, state = tx.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree(g)),
                               state, p32)
    for got, ref in zip(jax.tree.leaves(updates), jax.tree.leaves(tree(want))):
      tolerance = dict(rtol=0, atol=(2e-2 if bf16 else 1e-5) * np.abs(ref).max())
      np.testing.assert_allclose(got, ref, **tolerance, err_msg=f"step {step}")
  moments = [x for x in jax.tree.leaves(state) if getattr(x, "dtype", None) == jnp.bfloat16]
  assert bool(moments) == bf16  # the momentum is kept in bfloat16 unless asked otherwise


def test_schedule_warms_up_then_decays_to_zero():
  schedule = optimizers.warmup_cosine(100, 10)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10), schedule(55),
                              schedule(100)], [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
  with pytest.raises(ValueError, match="warmup_steps"):
    optimizers.warmup_cosine(10, 10)
