"""Every bijector in the flow registry, and the whole Flow: invertibility and log-determinants
against the Jacobian, in float64; identity at initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flig_jax.nn import flow

D = 4
CASES = sorted(flow.BIJECTORS) + ['flow_affine', 'flow_spline', 'flow_augmented']


@pytest.fixture(autouse=True)
def _fast_prng():
  """Threefry's partitionable mode compiles very slowly on small CPUs; these tests do not need it
  (scoped to each test, so no leak into other files)."""
  with jax.threefry_partitionable(False):
    yield


@pytest.fixture
def x64():
  """float64 inside the test only (no leak into other test files)."""
  with jax.enable_x64(True):
    yield


def _build(name: str):
  """(module, forward(params, x), inverse(params, y)) for a registry entry or a whole Flow."""
  if name == 'flow_augmented':  # on [h, e] of size D: K blocks, then the LinearPair
    module = flow.Flow(D // 2, num_blocks=2, hidden=16, augmented=True)
  elif name.startswith('flow_'):
    module = flow.Flow(D, num_blocks=2, hidden=16, coupling=name[len('flow_'):], num_bins=4,
                       spline_range=3.0)
  if name.startswith('flow_'):
    fwd = lambda p, x: module.apply(p, x, method=flow.Flow.forward)
    inv = lambda p, y: module.apply(p, y, method=flow.Flow.inverse)
  else:
    module = flow.BIJECTORS[name](hidden=16, num_bins=4, spline_range=3.0)
    fwd = lambda p, x: module.apply(p, x)
    inv = lambda p, y: module.apply(p, y, inverse=True)
  return module, fwd, inv


def _perturbed(params, key, scale=0.3):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  noisy = [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, noisy)


def _checks(fwd, inv, params, x, z):
  """Everything the test compares: round trips, log-dets, and log|det| of the Jacobian of single
  events (the reference)."""
  y, ld_fwd = fwd(params, x)
  x_back, ld_inv = inv(params, y)
  z_back = fwd(params, inv(params, z)[0])[0]
  jac_fwd = jax.vmap(jax.jacfwd(lambda e: fwd(params, e[None])[0][0]))(x)
  jac_inv = jax.vmap(jax.jacfwd(lambda e: inv(params, e[None])[0][0]))(y)
  sign_fwd, ref_fwd = jnp.linalg.slogdet(jac_fwd)
  return {'y': y, 'ld_fwd': ld_fwd, 'x_back': x_back, 'ld_inv': ld_inv, 'z_back': z_back,
          'sign_fwd': sign_fwd, 'ref_fwd': ref_fwd, 'ref_inv': jnp.linalg.slogdet(jac_inv)[1]}


@pytest.mark.parametrize('name', CASES)
def test_bijector_inverse_and_logdet(name, x64):
  module, fwd, inv = _build(name)
  key_x, key_init, key_p, key_z = jax.random.split(jax.random.key(0), 4)
  x = 1.5 * jax.random.normal(key_x, (6, D), jnp.float64) + 0.3
  z = jax.random.normal(key_z, (6, D), jnp.float64)
  method = flow.Flow.forward if name.startswith('flow_') else None
  params = jax.jit(lambda k, v: module.init(k, v, method=method))(key_init, x)
  params = _perturbed(params, key_p)

  jitted = jax.jit(lambda p, a, b: _checks(fwd, inv, p, a, b))(params, x, z)
  y, ld_fwd = fwd(params, x)                  # not jitted
  x_back, ld_inv = inv(params, y)
  eager = {'y': y, 'ld_fwd': ld_fwd, 'x_back': x_back, 'ld_inv': ld_inv,
           'z_back': fwd(params, inv(params, z)[0])[0]}
  assert np.all(jitted['sign_fwd'] != 0)
  for mode, out in (('jit', jitted), ('eager', eager)):
    assert out['y'].dtype == jnp.float64, mode
    assert out['y'].shape == x.shape and out['ld_fwd'].shape == (6,), mode
    assert float(jnp.max(jnp.abs(out['y'] - x))) > 1e-3, f'{mode}: perturbed, not identity'
    np.testing.assert_allclose(out['x_back'], x, atol=1e-6, err_msg=mode)
    np.testing.assert_allclose(out['z_back'], z, atol=1e-6, err_msg=mode)
    np.testing.assert_allclose(out['ld_fwd'], -out['ld_inv'], atol=1e-6, err_msg=mode)
    np.testing.assert_allclose(out['ld_fwd'], jitted['ref_fwd'], atol=1e-6, err_msg=mode)
    np.testing.assert_allclose(out['ld_inv'], jitted['ref_inv'], atol=1e-6, err_msg=mode)


@pytest.mark.parametrize('name', ['affine_coupling', 'spline_coupling'])
def test_coupling_is_identity_at_init(name):
  module, fwd, inv = _build(name)
  x = 2.0 * jax.random.normal(jax.random.key(1), (7, D))
  params = jax.jit(module.init)(jax.random.key(2), x)
  y, ld = fwd(params, x)
  np.testing.assert_allclose(y, x, atol=1e-6)
  np.testing.assert_allclose(ld, 0.0, atol=1e-6)
  x_back, ld_inv = inv(params, x)
  np.testing.assert_allclose(x_back, x, atol=1e-6)
  np.testing.assert_allclose(ld_inv, 0.0, atol=1e-6)


def test_actnorm_data_dependent_init():
  x = 3.0 * jax.random.normal(jax.random.key(4), (64, D)) - 2.0
  module = flow.ActNorm()
  params = jax.jit(module.init)(jax.random.key(0), x)
  y, _ = module.apply(params, x)
  np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.std(axis=0), 1.0, atol=1e-4)


def test_lu_linear_starts_orthogonal_with_positive_diagonal_or_at_identity():
  x = jax.random.normal(jax.random.key(6), (3, D))
  params = jax.jit(flow.LULinear().init)(jax.random.key(5), x)['params']
  assert jax.tree.map(jnp.shape, params) == {'lu': (D, D)}     # one matrix, every entry used
  bij = flow.lu_bijector(params['lu'])
  np.testing.assert_allclose(bij.matrix @ bij.matrix.T, np.eye(D), atol=1e-5)
  assert np.all(np.diag(np.asarray(bij.upper)) > 0)
  identity = flow.LULinear(identity_init=True)
  params = jax.jit(identity.init)(jax.random.key(5), x)
  y, logdet = identity.apply(params, x)
  np.testing.assert_array_equal(y, x)
  np.testing.assert_array_equal(logdet, np.zeros(3))


def test_flow_rejects_wrong_width_and_unknown_coupling():
  module = flow.Flow(D, 1, 8)
  with pytest.raises(ValueError, match='expects'):
    module.init(jax.random.key(0), jnp.zeros((2, D + 1)), method=flow.Flow.forward)
  with pytest.raises(ValueError, match='unknown coupling'):
    flow.Flow(D, 1, 8, coupling='nope').init(
        jax.random.key(0), jnp.zeros((2, D)), method=flow.Flow.forward)


def test_conditioner_dropout_acts_only_with_a_dropout_rng_and_keeps_the_bijection(x64):
  """With `dropout`, the conditioners drop hidden units when a 'dropout' RNG is given (training)
  and never without one (inference); for one RNG, the inverse undoes the forward exactly."""
  module = flow.Flow(D // 2, num_blocks=1, hidden=32, augmented=True, dropout=0.5)
  x = jax.random.normal(jax.random.key(0), (6, D), jnp.float64)
  params = _perturbed(module.init(jax.random.key(1), x, method=flow.Flow.forward),
                      jax.random.key(2))
  plain = flow.Flow(D // 2, num_blocks=1, hidden=32, augmented=True)
  fwd = lambda m, p, v, **kw: m.apply(p, v, method=flow.Flow.forward, **kw)
  inv = lambda m, p, v, **kw: m.apply(p, v, method=flow.Flow.inverse, **kw)
  y_plain, ld_plain = fwd(plain, params, x)
  y_eval, ld_eval = fwd(module, params, x)
  np.testing.assert_allclose(y_eval, y_plain, atol=1e-6)
  np.testing.assert_allclose(ld_eval, ld_plain, atol=1e-6)
  rngs = {'dropout': jax.random.key(3)}
  y_train, ld_train = fwd(module, params, x, rngs=rngs)
  assert float(jnp.max(jnp.abs(y_train - y_plain))) > 1e-3, 'no unit was dropped'
  x_back, ld_back = inv(module, params, y_train, rngs=rngs)
  np.testing.assert_allclose(x_back, x, atol=1e-6)
  np.testing.assert_allclose(ld_back, -ld_train, atol=1e-6)
  other = fwd(module, params, x, rngs={'dropout': jax.random.key(4)})[0]
  assert float(jnp.max(jnp.abs(other - y_train))) > 1e-3, 'the mask ignores the RNG'
