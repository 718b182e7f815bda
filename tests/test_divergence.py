"""The divergence flag of a train step: an update that breaks the parameters is caught at the step
that made it (its loss, computed before the update, is still finite)."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from flig_jax.nn.adapter import Adapter
from flig_jax.nn.flig import FLIG, Frozen
from flig_jax.training import steps, train_state

D = 4


def _module():
  return FLIG(image_shape=(8, 8, 1), feature_dim=D, cae_widths=(4,), flow_blocks=1, flow_hidden=8)


def _images(n=4):
  return jnp.asarray(np.random.default_rng(0).uniform(size=(n, 8, 8, 1)), jnp.float32)


def _stage1(lr: float):
  """One stage-1 step from a fresh state whose optimiser has learning rate `lr`."""
  module, images, config = _module(), _images(), default.get_config()
  config.stage1.learning_rate, config.stage1.steps = lr, 10
  config.stage1.augment, config.stage1.ssim_weight = False, 0.0
  state = train_state.create_stage1_state(jax.random.key(0), config, module, images)
  return jax.jit(lambda s: steps.stage1_step(s, {'images': images}, model=module,
                                              cfg=config.stage1))(state)


def test_stage1_flags_an_update_that_breaks_the_parameters():
  state, metrics = _stage1(1e-3)
  assert int(state.nonfinite_step) == -1
  state, metrics = _stage1(float('inf'))          # finite loss, Inf * gradient = broken params
  assert np.isfinite(float(metrics['loss']))
  assert int(state.nonfinite_step) == 0


def _stage2(lr: float):
  """One stage-2 step from a fresh state whose flow optimiser has learning rate `lr`."""
  module, images, rng = _module(), _images(6), np.random.default_rng(1)
  adapter = Adapter.fit(rng.normal(size=(6, 5)).astype(np.float32), D)
  frozen = Frozen(module.init_autoencoder(jax.random.key(0), images), jnp.zeros(D), jnp.ones(D),
                  adapter)
  h = jnp.asarray(rng.normal(size=(6, D)), jnp.float32)
  config = default.get_config()
  config.model.disc_hidden, config.stage2.learning_rate, config.stage2.steps = 8, lr, 10
  state = train_state.create_stage2_state(jax.random.key(1), config, module, frozen,
                                          {'features': h}, val_size=3)
  batch = {'features': h, 'adapted': adapter.forward(jnp.asarray(rng.normal(size=(6, 5)),
                                                                 jnp.float32)),
           'images': images}
  return jax.jit(lambda s: steps.stage2_step(s, batch, model=module, cfg=config.stage2))(state)


def test_stage2_flags_an_update_that_breaks_the_flow():
  state, _ = _stage2(1e-3)
  assert int(state.nonfinite_step) == -1
  state, metrics = _stage2(float('inf'))
  assert np.isfinite(float(metrics['loss']))
  assert int(state.nonfinite_step) == 0
