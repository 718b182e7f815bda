"""Many models in one program: the step of S stacked states is S separate steps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from flig_jax.model import FLIG, Frozen
from flig_jax.nn.adapter import Adapter
from flig_jax.nn.discriminator import Discriminator
from flig_jax.training import parallel, seeds, steps

S, B, D, UNITS = 2, 4, 4, 5


def _module() -> FLIG:
  return FLIG(image_shape=(8, 8, 1), feature_dim=D, cae_widths=(4,), flow_blocks=1, flow_hidden=8)


def _images(rng: np.random.Generator) -> np.ndarray:
  return rng.uniform(size=(B, 8, 8, 1)).astype(np.float32)


def _stage1(seed: int):
  """A fresh stage-1 state of its own seed, the step, and two batches of its own."""
  module, cfg = _module(), default.get_config().stage1  # augmentation on: per-seed RNG matters
  tx = steps.optimizer(1e-2, 1e-4, 10)
  rng = np.random.default_rng(seed)
  params = module.init_autoencoder(jax.random.key(seed), jnp.zeros((1, 8, 8, 1)))
  state = steps.Stage1State(step=jnp.zeros((), jnp.int32), params=params,
                            opt_state=tx.init(params), rng=jax.random.key(100 + seed),
                            nonfinite_step=jnp.full((), -1, jnp.int32))
  step = functools.partial(steps.stage1_step, model=module, tx=tx, cfg=cfg)
  return state, step, [{'images': _images(rng)} for _ in range(2)]


def _stage2(seed: int):
  """A fresh stage-2 state of its own seed (own frozen parts too), the step, and two batches."""
  module, rng = _module(), np.random.default_rng(seed)
  cfg = default.get_config().stage2
  cfg.mixup = 0.4  # per-seed permutation and Beta draws
  adapter = Adapter.fit(rng.normal(size=(8, UNITS)).astype(np.float32), D)
  frozen = Frozen(module.init_autoencoder(jax.random.key(seed), jnp.zeros((1, 8, 8, 1))),
                  jnp.zeros(D), jnp.ones(D), adapter)
  h = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
  flow = module.init_flow(jax.random.key(10 + seed), h)
  disc = Discriminator(8)
  disc_params = {k: disc.init(jax.random.key(20 + 2 * seed + i), h)['params']
                 for i, k in enumerate(('forward', 'inverse'))}
  flow_tx, disc_tx = steps.optimizer(1e-2, 1e-4, 10), optax.adam(1e-3)
  state = steps.Stage2State(
      step=jnp.zeros((), jnp.int32), flow_params=flow, disc_params=disc_params,
      flow_opt_state=flow_tx.init(flow), disc_opt_state=disc_tx.init(disc_params),
      rng=jax.random.key(100 + seed), nonfinite_step=jnp.full((), -1, jnp.int32), frozen=frozen,
      **steps.Stage2State.no_selection(flow, groups=2, val_size=3))
  step = functools.partial(steps.stage2_step, model=module, discriminator=disc, flow_tx=flow_tx,
                           disc_tx=disc_tx, cfg=cfg)
  batches = [{'features': rng.normal(size=(B, D)).astype(np.float32),
              'adapted': np.asarray(adapter.forward(rng.normal(size=(B, UNITS)))),
              'images': _images(rng)} for _ in range(2)]
  return state, step, batches


def _leaves(tree) -> list[np.ndarray]:
  return [np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
                     else x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize(('make', 'vectorize'),
                         [(_stage1, True), (_stage2, True), (_stage1, False)],
                         ids=['stage1-vmap', 'stage2-vmap', 'stage1-unrolled'])
def test_step_of_many_models_equals_separate_steps(make, vectorize):
  mesh = parallel.make_mesh()
  runs = [make(seed) for seed in range(S)]
  step = runs[0][1]
  separate = []
  for state, _, batches in runs:
    one = jax.jit(step)
    for batch in batches:
      state, metrics = one(state, batch)
    separate.append((state, metrics))

  states = seeds.stack([state for state, _, _ in runs], mesh)
  many = seeds.jit_step(step, mesh, vectorize)
  for i in range(2):
    states, metrics = many(states, seeds.global_batch([b[i] for _, _, b in runs], mesh))
  together = list(zip(seeds.unstack(states), seeds.unstack(metrics)))

  assert len(together) == S
  for (want_state, want_metrics), (got_state, got_metrics) in zip(separate, together):
    assert jax.tree.structure(got_state) == jax.tree.structure(want_state)
    for want, got in zip(_leaves((want_state, want_metrics)), _leaves((got_state, got_metrics))):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # The seeds really differ, so equality above is not one model copied S times.
  losses = [float(m['loss']) for _, m in separate]
  assert len(set(losses)) == S
