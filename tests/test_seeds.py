"""Many models in one program: the step of S stacked states is S separate steps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from flig_jax.nn.adapter import Adapter
from flig_jax.nn.flig import FLIG, Frozen
from flig_jax.training import parallel, seeds, steps, train_state

S, B, D, UNITS = 2, 4, 4, 5


def _module() -> FLIG:
  return FLIG(image_shape=(8, 8, 1), feature_dim=D, cae_widths=(4,), flow_blocks=1, flow_hidden=8)


def _images(rng: np.random.Generator) -> np.ndarray:
  return rng.uniform(size=(B, 8, 8, 1)).astype(np.float32)


def _config():
  config = default.get_config()  # stage-1 augmentation on: per-seed RNG matters
  config.stage1.learning_rate, config.stage1.weight_decay, config.stage1.steps = 1e-2, 1e-4, 10
  config.stage2.learning_rate, config.stage2.weight_decay, config.stage2.steps = 1e-2, 1e-4, 10
  config.stage2.mixup = 0.4  # per-seed permutation and Beta draws
  config.model.disc_hidden = 8
  return config


def _stage1(seed: int):
  """A fresh stage-1 state of its own seed, the step, and two batches of its own."""
  module, config, rng = _module(), _config(), np.random.default_rng(seed)
  state = train_state.create_stage1_state(jax.random.key(seed), config, module,
                                          jnp.zeros((1, 8, 8, 1)))
  step = functools.partial(steps.stage1_step, model=module, cfg=config.stage1)
  return state, step, [{'images': _images(rng)} for _ in range(2)]


def _stage2(seed: int):
  """A fresh stage-2 state of its own seed (own frozen parts too), the step, and two batches."""
  module, config, rng = _module(), _config(), np.random.default_rng(seed)
  adapter = Adapter.fit(rng.normal(size=(8, UNITS)).astype(np.float32), D)
  frozen = Frozen(module.init_autoencoder(jax.random.key(seed), jnp.zeros((1, 8, 8, 1))),
                  jnp.zeros(D), jnp.ones(D), adapter)
  h = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
  state = train_state.create_stage2_state(jax.random.key(10 + seed), config, module, frozen,
                                          {'features': h}, val_size=3)
  step = functools.partial(steps.stage2_step, model=module, cfg=config.stage2)
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
