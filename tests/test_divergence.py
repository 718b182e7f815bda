"""The divergence flag of a train step: an update that breaks the parameters is caught at the step
that made it (its loss, computed before the update, is still finite)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import default
from flig_jax.model import FLIG, Frozen
from flig_jax.nn.adapter import Adapter
from flig_jax.nn.discriminator import Discriminator
from flig_jax.training import steps

D = 4


def _module():
  return FLIG(image_shape=(8, 8, 1), feature_dim=D, cae_widths=(4,), flow_blocks=1, flow_hidden=8)


def _images(n=4):
  return jnp.asarray(np.random.default_rng(0).uniform(size=(n, 8, 8, 1)), jnp.float32)


def _stage1(lr: float):
  module, images = _module(), _images()
  params = module.init_autoencoder(jax.random.key(0), images)
  tx = optax.sgd(lr)
  state = steps.Stage1State(step=jnp.zeros((), jnp.int32), params=params,
                            opt_state=tx.init(params), rng=jax.random.key(1),
                            nonfinite_step=jnp.full((), -1, jnp.int32))
  cfg = default.get_config().stage1
  cfg.augment, cfg.ssim_weight = False, 0.0
  return jax.jit(lambda s: steps.stage1_step(s, {'images': images}, model=module, tx=tx,
                                              cfg=cfg))(state)


def test_stage1_flags_an_update_that_breaks_the_parameters():
  state, metrics = _stage1(1e-3)
  assert int(state.nonfinite_step) == -1
  state, metrics = _stage1(float('inf'))          # finite loss, Inf * gradient = broken params
  assert np.isfinite(float(metrics['loss']))
  assert int(state.nonfinite_step) == 0


def _stage2(lr: float):
  module, images, rng = _module(), _images(6), np.random.default_rng(1)
  adapter = Adapter.fit(rng.normal(size=(6, 5)).astype(np.float32), D)
  frozen = Frozen(module.init_autoencoder(jax.random.key(0), images), jnp.zeros(D), jnp.ones(D),
                  adapter)
  h = jnp.asarray(rng.normal(size=(6, D)), jnp.float32)
  flow = module.init_flow(jax.random.key(1), h)
  disc = Discriminator(8)
  disc_params = {k: disc.init(jax.random.key(i), h)['params']
                 for i, k in enumerate(('forward', 'inverse'))}
  flow_tx, disc_tx = optax.sgd(lr), optax.sgd(1e-3)
  state = steps.Stage2State(
      step=jnp.zeros((), jnp.int32), flow_params=flow, disc_params=disc_params,
      flow_opt_state=flow_tx.init(flow), disc_opt_state=disc_tx.init(disc_params),
      rng=jax.random.key(2), nonfinite_step=jnp.full((), -1, jnp.int32), frozen=frozen,
      **steps.Stage2State.no_selection(flow, groups=2, val_size=3))
  batch = {'features': h, 'adapted': adapter.forward(jnp.asarray(rng.normal(size=(6, 5)),
                                                                 jnp.float32)),
           'images': images}
  cfg = default.get_config().stage2
  return jax.jit(lambda s: steps.stage2_step(s, batch, model=module, discriminator=disc,
                                              flow_tx=flow_tx, disc_tx=disc_tx, cfg=cfg))(state)


def test_stage2_flags_an_update_that_breaks_the_flow():
  state, _ = _stage2(1e-3)
  assert int(state.nonfinite_step) == -1
  state, metrics = _stage2(float('inf'))
  assert np.isfinite(float(metrics['loss']))
  assert int(state.nonfinite_step) == 0
