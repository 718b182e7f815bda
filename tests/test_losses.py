"""Stage-2 objective: every term's value and gradient against an independent reference (scipy's
Gaussian log-density, the Jacobian's log-determinant), the terms the smoke runs leave at weight 0,
the discriminator loss and mixup, on tiny shapes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from flig_jax.nn.adapter import Adapter
from flig_jax.nn.discriminator import Discriminator
from flig_jax.nn.flig import FLIG, Frozen
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
      lambda p, d, f, b, n: loss(p, d, f, batch=b, noise=n, feature_noise=b['features']),
      has_aux=True))(
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


# --- every stage-2 term against a reference computed independently of losses.py ---

TERMS = ('local_forward', 'local_inverse', 'likelihood', 'adversarial', 'adversarial_inverse',
         'pixel')


@pytest.fixture(scope='module', params=['plain', 'augmented'])
def case(request):
  """A flow with padding (k = 3 < D = 4), perturbed away from its start, and a noisy batch."""
  rng = np.random.default_rng(1)
  images = rng.uniform(size=(6, 8, 8, 1)).astype(np.float32)
  adapter = Adapter.fit(rng.normal(size=(6, 3)).astype(np.float32), D)
  assert adapter.k == 3
  model = FLIG(image_shape=(8, 8, 1), feature_dim=D, cae_widths=(4,), flow_blocks=2,
               flow_hidden=8, flow_type=request.param)
  frozen = Frozen(model.init_autoencoder(jax.random.key(0), images),
                  jnp.asarray(rng.normal(size=D), jnp.float32),
                  jnp.asarray(rng.uniform(0.5, 2.0, size=D), jnp.float32), adapter)
  flow = model.init_flow(jax.random.key(1), jnp.asarray(rng.normal(size=(6, D)), jnp.float32))
  flow = jax.tree.map(lambda p: p + 0.1 * jnp.asarray(rng.normal(size=p.shape), p.dtype), flow)
  disc = Discriminator(8)
  disc_params = {name: disc.init(jax.random.key(i + 2), jnp.zeros((1, D)))['params']
                 for i, name in enumerate(('forward', 'inverse'))}
  batch = {'features': jnp.asarray(rng.normal(size=(6, D)), jnp.float32),
           'adapted': adapter.forward(jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)),
           'images': jnp.asarray(images)}
  noise = jnp.asarray(rng.normal(size=(6, D)), jnp.float32)
  feature_noise = jnp.asarray(rng.normal(size=(6, D)), jnp.float32)
  return model, frozen, flow, disc, disc_params, batch, noise, feature_noise


def _reference_terms(flow, case, weighting='variance'):
  """Each term from the module's pieces and textbook formulas (numpy / jax.scipy), not losses.py;
  the log-determinant is that of the Jacobian, not the flow's own. Augmented: the local terms and
  the decoder read the first D coordinates with zero noise, the likelihood and the adversary
  f([h, e_h]) with the drawn e_h."""
  model, frozen, _, disc, disc_params, batch, noise, e_h = case
  variables = frozen.variables(flow)
  h, a, x = batch['features'], batch['adapted'], batch['images']
  k = frozen.adapter.k
  a_noisy = a + noise
  f = lambda v: model.apply(variables, v, method=FLIG.flow_forward)[0]
  f_inv = lambda v: model.apply(variables, v, method=FLIG.flow_inverse)[0]
  if model.flow_type == 'augmented':
    full = jnp.concatenate([h, e_h], axis=1)
    y, z = f(full), f(jnp.concatenate([h, 0 * h], axis=1))[:, :D]
    h_back = f_inv(jnp.concatenate([a_noisy, 0 * a_noisy], axis=1))[:, :D]
    sample = y[:, :D]
  else:
    full, y = h, f(h)
    z = sample = y
    h_back = f_inv(a_noisy)
  size = full.shape[1]
  logdet = jnp.linalg.slogdet(jax.vmap(jax.jacfwd(lambda row: f(row[None])[0]))(full))[1]
  log_p = jax.scipy.stats.multivariate_normal.logpdf(y, jnp.zeros(size), jnp.eye(size)) + logdet
  logit = lambda name, v: disc.apply({'params': disc_params[name]}, v)
  images = model.apply(variables, model.apply(variables, h_back, method=FLIG.unstandardise),
                       method=FLIG.decode_features)
  # variance: each principal component by its variance, normalised to mean 1 over the k
  eig = np.asarray(frozen.adapter.sqrt_eig) ** 2
  weight = eig / eig.mean() if weighting == 'variance' else np.ones(k)
  return {'local_forward': jnp.mean(jnp.sum(weight * (z[:, :k] - a[:, :k]) ** 2, axis=1)) / k,
          'local_inverse': jnp.mean((h_back - h) ** 2),
          'likelihood': -jnp.mean(log_p) / size,
          'adversarial': -jnp.mean(jax.nn.log_sigmoid(logit('forward', sample))),
          'adversarial_inverse': -jnp.mean(jax.nn.log_sigmoid(logit('inverse', h_back))),
          'pixel': jnp.mean((images - x) ** 2)}


def _only(term: str, weighting: str = 'variance'):
  cfg = default.get_config().stage2
  for name in TERMS:
    setattr(cfg, name, 1.0 if name == term else 0.0)
  cfg.local_forward_weighting = weighting
  return cfg


def test_whitened_local_forward_weighs_every_coordinate_alike(case):
  model, frozen, flow, disc, disc_params, batch, noise, feature_noise = case
  got = losses.flow_loss(flow, disc_params, frozen, model, disc, batch, noise, feature_noise,
                         _only('local_forward', 'whitened'))[0]
  want = _reference_terms(flow, case, 'whitened')['local_forward']
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert abs(float(want) - float(_reference_terms(flow, case)['local_forward'])) > 1e-4


@pytest.mark.parametrize('term', TERMS)
def test_each_term_and_its_gradient_match_the_reference(case, term):
  model, frozen, flow, disc, disc_params, batch, noise, feature_noise = case
  cfg = _only(term)

  def ours(p):
    return losses.flow_loss(p, disc_params, frozen, model, disc, batch, noise, feature_noise,
                            cfg)[0]

  value, grads = jax.jit(jax.value_and_grad(ours))(flow)
  ref_value, ref_grads = jax.jit(jax.value_and_grad(
      lambda p: _reference_terms(p, case)[term]))(flow)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  # The term's whole gradient reaches the flow (a stop_gradient anywhere in it fails here).
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(grads)) > 0


def _constant_discriminator(params, logit: float):
  """Discriminator parameters whose output is `logit` for every input: all weights zero, the
  last layer's bias `logit`."""
  params = jax.tree.map(jnp.zeros_like, params)
  last = max(params, key=lambda name: int(name.split('_')[-1]))
  params[last] = {**params[last], 'bias': jnp.full_like(params[last]['bias'], logit)}
  return params


def test_adversarial_terms_of_a_constant_discriminator_in_closed_form(case):
  """A discriminator that says logit c to everything makes the non-saturating generator term
  -log(sigmoid(c)) = log(1 + exp(-c)) whatever the flow does (c = 1 forward, -2 inverse)."""
  model, frozen, flow, disc, disc_params, batch, noise, feature_noise = case
  constant = {'forward': _constant_discriminator(disc_params['forward'], 1.0),
              'inverse': _constant_discriminator(disc_params['inverse'], -2.0)}
  cfg = _only('adversarial')
  cfg.adversarial, cfg.adversarial_inverse = 2.0, 3.0
  loss, terms = losses.flow_loss(flow, constant, frozen, model, disc, batch, noise,
                                 feature_noise, cfg)
  forward, inverse = np.log1p(np.exp(-1.0)), np.log1p(np.exp(2.0))
  assert float(terms['adv']) == pytest.approx(forward, rel=1e-6)
  assert float(terms['adv_inv']) == pytest.approx(inverse, rel=1e-6)
  assert float(loss) == pytest.approx(2.0 * forward + 3.0 * inverse, rel=1e-6)
