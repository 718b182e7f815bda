"""The augmented flow's closed-form start: at step 0 its encoder and decoder are the ridge maps
(`cae_ridge`), and the augmented round trip stays exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flig_jax import ridge
from flig_jax.nn import flow
from flig_jax.training import closed_form

D, K, N = 6, 4, 80


@pytest.fixture(autouse=True)
def _fast_prng():
  with jax.threefry_partitionable(False):
    yield


def _data(seed=0):
  """Raw features with their own offsets and scales, and k signal coordinates linear in them."""
  rng = np.random.default_rng(seed)
  h_raw = rng.standard_normal((N, D)) * rng.uniform(0.5, 3.0, D) + rng.standard_normal(D)
  signal = h_raw @ rng.standard_normal((D, K)) * 0.3 + 0.5 * rng.standard_normal((N, K))
  return h_raw[:60], signal[:60], h_raw[60:], signal[60:]


@pytest.mark.parametrize('blocks', [0, 2])
def test_step0_equals_ridge_both_ways(blocks):
  h_tr, a_tr, h_va, a_va = _data()
  mean, std = h_tr.mean(0), h_tr.std(0)
  module = flow.Flow(D, num_blocks=blocks, hidden=8, augmented=True)
  params = module.init(jax.random.key(0), jnp.zeros((2, 2 * D)), method=flow.Flow.forward)
  params = jax.tree.map(np.asarray, params)
  params['params']['linear_pair'] = closed_form.linear_pair_params(h_tr, a_tr, h_va, a_va, mean,
                                                                   std, D)
  enc = ridge.fit_ridge(h_tr, a_tr, h_va, a_va, refit_on_val=False)
  dec = ridge.fit_ridge(a_tr, h_tr, a_va, h_va, refit_on_val=False)

  h_std = ((h_va - mean) / std).astype(np.float32)
  y = module.apply(params, jnp.concatenate([h_std, 0 * h_std], 1), method=flow.Flow.forward)[0]
  np.testing.assert_allclose(y[:, :K], enc.predict(h_va), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(y[:, K:D], 0.0, atol=1e-6)  # the padding carries the noise, here 0

  a = np.concatenate([a_va, np.zeros((len(a_va), D - K))], 1).astype(np.float32)
  x = module.apply(params, jnp.concatenate([a, 0 * a], 1), method=flow.Flow.inverse)[0]
  np.testing.assert_allclose(x[:, :D] * std + mean, dec.predict(a_va), rtol=1e-4, atol=1e-4)

  # The whole augmented vector comes back exactly.
  noise = np.random.default_rng(1).standard_normal(h_std.shape).astype(np.float32)
  v = jnp.concatenate([h_std, noise], 1)
  back = module.apply(params, module.apply(params, v, method=flow.Flow.forward)[0],
                      method=flow.Flow.inverse)[0]
  np.testing.assert_allclose(back, v, rtol=1e-5, atol=1e-5)


def test_noise_scales_match_the_residuals():
  """Samples f([h, e]) with e ~ N(0, I) spread like the data around the encoder's prediction."""
  h_tr, a_tr, h_va, a_va = _data()
  mean, std = h_tr.mean(0), h_tr.std(0)
  pair = closed_form.linear_pair_params(h_tr, a_tr, h_va, a_va, mean, std, D)
  h = (h_tr - mean) / std
  residual = a_tr - (h @ pair['enc_kernel'][:, :K] + pair['enc_bias'][:K])
  np.testing.assert_allclose(np.exp(pair['enc_log_scale'][:K]), residual.std(0), rtol=1e-5)
  assert np.all(pair['enc_log_scale'][K:] == 0) and np.all(pair['enc_kernel'][:, K:] == 0)
  assert np.all(pair['dec_kernel'][K:] == 0)  # the decoder ignores the padding


def test_encoding_grows_at_most_linearly_far_from_the_training_features():
  """The encoder is the linear map plus an MLP residual (no compounded exponential scales), so
  features far outside the training range (V4 190927 once sent the plain flow to |z| = 376) give
  predictions that grow linearly with the features, not faster."""
  module = flow.Flow(D, num_blocks=0, hidden=16, augmented=True)
  params = module.init(jax.random.key(0), jnp.zeros((2, 2 * D)), method=flow.Flow.forward)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [p + jax.random.normal(k, p.shape) for p, k in
                                     zip(leaves, keys, strict=True)])
  direction = jax.random.normal(jax.random.key(2), (16, D))

  def encoded_norm(scale):
    h = scale * direction
    y = module.apply(params, jnp.concatenate([h, 0 * h], 1), method=flow.Flow.forward)[0]
    return jnp.linalg.norm(y[:, :D], axis=1)

  growth = jnp.log(encoded_norm(1e4) / encoded_norm(1e2)) / jnp.log(100.0)
  assert bool(jnp.all(jnp.isfinite(growth)))
  assert float(jnp.max(growth)) < 1.02, growth
