"""Stage-2 objective terms that the smoke runs leave at weight 0, and mixup, on tiny shapes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from flig_jax.model import FLIG, Frozen
from flig_jax.nn.adapter import Adapter
from flig_jax.nn.discriminator import Discriminator
from flig_jax.training import losses, steps

D = 4


@pytest.fixture(scope='module')
def parts():
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(6, 8, 8, 1)).astype(np.float32)
  adapter = Adapter.fit(rng.normal(size=(6, 5)).astype(np.float32), D)
  model = FLIG(image_shape=(8, 8, 1), feature_dim=D, cae_widths=(4,), flow_blocks=1,
               flow_hidden=8)
  frozen = Frozen(model.init_autoencoder(jax.random.key(0), images), jnp.zeros(D), jnp.ones(D),
                  adapter)
  variables = frozen.variables(model.init_flow(jax.random.key(1), jnp.asarray(
      rng.normal(size=(6, D)), jnp.float32)))
  disc = Discriminator(8)
  disc_params = {name: disc.init(jax.random.key(i), jnp.zeros((1, D)))['params']
                 for i, name in enumerate(('forward', 'inverse'))}
  batch = {'features': jnp.asarray(rng.normal(size=(6, D)), jnp.float32),
           'adapted': adapter.forward(jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)),
           'images': jnp.asarray(images)}
  return model, variables, disc, disc_params, batch, frozen


def test_every_flow_loss_term_is_finite_and_reaches_the_flow(parts):
  model, variables, disc, disc_params, batch, frozen = parts
  cfg = default.get_config().stage2
  cfg.adversarial_inverse, cfg.pixel = 0.5, 1.0
  noise = jnp.zeros_like(batch['adapted'])
  loss = functools.partial(losses.flow_loss, model=model, discriminator=disc, cfg=cfg)
  grads, terms = jax.jit(jax.grad(
      lambda p, d, f, b, n: loss(p, d, f, batch=b, noise=n), has_aux=True))(
          variables['params']['flow'], disc_params, frozen, batch, noise)
  for term in ('pixel', 'adv_inv'):
    assert np.isfinite(float(terms[term])) and float(terms[term]) > 0
  norm = sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads))
  assert np.isfinite(norm) and norm > 0


def test_discriminator_loss_trains_only_the_named_discriminators(parts):
  _, _, disc, disc_params, batch, _ = parts
  cfg = default.get_config().stage2
  real, fake = {'forward': batch['features']}, {'forward': -batch['features']}
  loss = functools.partial(losses.discriminator_loss, discriminator=disc, cfg=cfg)
  grads, terms = jax.jit(jax.grad(lambda p, r, f: loss(p, real=r, fake=f), has_aux=True))(
      disc_params, real, fake)
  assert set(terms) == {'disc_forward'}
  assert all(float(jnp.abs(g).sum()) == 0 for g in jax.tree.leaves(grads['inverse']))
  assert any(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads['forward']))


def test_mixup_makes_the_same_convex_combination_of_every_field():
  x = jnp.arange(8, dtype=jnp.float32)
  batch = {'features': jnp.stack([x, 2 * x], axis=1), 'adapted': x[:, None] * 3.0}
  mixed = steps._mixup(jax.random.key(1), batch, 0.4)  # pylint: disable=protected-access
  f, a = np.asarray(mixed['features']), np.asarray(mixed['adapted'])
  np.testing.assert_allclose(f[:, 1], 2 * f[:, 0], rtol=1e-6)
  np.testing.assert_allclose(a[:, 0], 3 * f[:, 0], rtol=1e-6)
  assert f[:, 0].min() >= 0 and f[:, 0].max() <= 7
  assert not np.allclose(f[:, 0], np.asarray(x))
