"""The augmented flow's closed-form start: at step 0 its encoder and decoder are the ridge maps
(`cae_ridge`), and the augmented round trip stays exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flig_jax import ridge
from flig_jax.nn import flow
from flig_jax.nn.adapter import Adapter
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


SPREAD = np.array([3.0, 1.5, 0.4, 0.05])  # the adapter's sqrt_eig of the K signal coordinates


@pytest.mark.parametrize('blocks', [0, 2])
def test_step0_equals_ridge_both_ways(blocks):
  h_tr, a_tr, h_va, a_va = _data()
  mean, std = h_tr.mean(0), h_tr.std(0)
  module = flow.Flow(D, num_blocks=blocks, hidden=8, augmented=True)
  params = module.init(jax.random.key(0), jnp.zeros((2, 2 * D)), method=flow.Flow.forward)
  params = jax.tree.map(np.asarray, params)
  params['params']['linear_pair'] = closed_form.linear_pair_params(h_tr, a_tr, SPREAD, h_va, a_va,
                                                                   mean, std, D)
  maps = closed_form.fit_maps(h_tr, a_tr, SPREAD, h_va, a_va)

  h_std = ((h_va - mean) / std).astype(np.float32)
  y = module.apply(params, jnp.concatenate([h_std, 0 * h_std], 1), method=flow.Flow.forward)[0]
  np.testing.assert_allclose(y[:, :K], maps.encoder.predict(h_va) / SPREAD, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(y[:, K:D], 0.0, atol=1e-6)  # the padding carries the noise, here 0

  a = np.concatenate([a_va, np.zeros((len(a_va), D - K))], 1).astype(np.float32)
  x = module.apply(params, jnp.concatenate([a, 0 * a], 1), method=flow.Flow.inverse)[0]
  np.testing.assert_allclose(x[:, :D] * std + mean, maps.decoder.predict(a_va * SPREAD), rtol=1e-4,
                             atol=1e-4)

  # The whole augmented vector comes back exactly.
  noise = np.random.default_rng(1).standard_normal(h_std.shape).astype(np.float32)
  v = jnp.concatenate([h_std, noise], 1)
  back = module.apply(params, module.apply(params, v, method=flow.Flow.forward)[0],
                      method=flow.Flow.inverse)[0]
  np.testing.assert_allclose(back, v, rtol=1e-5, atol=1e-5)


def test_maps_are_the_ridge_maps_of_the_z_scored_responses():
  """With every principal component kept, the start's maps are ridge between the features and
  the z-scored responses themselves, penalties included (the ridge baselines' estimator): the
  encoder's penalty chosen on the z-scored responses' error, the decoder's shrinking each
  direction of the responses by its own spread. Whitened coordinates would change both."""
  rng = np.random.default_rng(3)
  h_raw = rng.standard_normal((N, D)) * rng.uniform(0.5, 3.0, D)
  units = 5
  loadings = rng.standard_normal((D, units)) * np.array([1.0, 0.5, 0.2, 0.05, 0.01])
  responses = h_raw @ loadings + rng.standard_normal((N, units)) * rng.uniform(0.2, 2.0, units)
  adapter = Adapter.fit(responses, dim=D)
  assert adapter.k == units
  signal = np.asarray(adapter.forward(jnp.asarray(responses, jnp.float32)))[:, :units]
  z = (responses - np.asarray(adapter.mean)) / np.asarray(adapter.scale)
  folds = np.arange(N) % 4
  spread = np.asarray(adapter.sqrt_eig, np.float64)
  maps = closed_form.fit_maps(h_raw, signal, spread, fold_ids=folds)
  to_scores = np.asarray(adapter.components, np.float64)  # z @ components = signal * spread

  enc = ridge.fit_ridge(h_raw, z, refit_on_val=False, fold_ids=folds, target_scale=1.0)
  assert maps.encoder.alpha == enc.alpha
  np.testing.assert_allclose(maps.encoder.predict(h_raw), enc.predict(h_raw) @ to_scores,
                             rtol=1e-3, atol=1e-3)
  dec = ridge.fit_ridge(z, h_raw, refit_on_val=False, fold_ids=folds, scale_inputs=False)
  assert maps.decoder.alpha == dec.alpha
  np.testing.assert_allclose(maps.decoder.predict(signal * spread), dec.predict(z), rtol=1e-3,
                             atol=1e-3)
  # On the whitened coordinates the decoder's fit would differ.
  whitened = ridge.fit_ridge(signal, h_raw, refit_on_val=False, fold_ids=folds)
  assert not np.allclose(whitened.predict(signal), dec.predict(z), atol=1e-2)


def test_whitened_encoder_error_weighs_each_coordinate_alike():
  """'whitened' chooses the encoder's penalty by the whitened coordinates' error, each alike: the
  penalty and the map that ridge fitted on those coordinates themselves gives."""
  h_tr, a_tr, _, _ = _data()
  folds = np.arange(len(h_tr)) % 4
  maps = closed_form.fit_maps(h_tr, a_tr, SPREAD, fold_ids=folds, encoder_error='whitened')
  alike = ridge.fit_ridge(h_tr, a_tr, refit_on_val=False, fold_ids=folds,
                          target_scale=np.ones(K))
  assert maps.encoder.alpha == alike.alpha
  np.testing.assert_allclose(maps.encoder.predict(h_tr), alike.predict(h_tr) * SPREAD, rtol=1e-6,
                             atol=1e-6)
  with pytest.raises(ValueError, match='start_encoder_error'):
    closed_form.fit_maps(h_tr, a_tr, SPREAD, fold_ids=folds, encoder_error='pixels')


def test_noise_scales_match_the_residuals():
  """Samples f([h, e]) with e ~ N(0, I) spread like the data around the encoder's prediction."""
  h_tr, a_tr, h_va, a_va = _data()
  mean, std = h_tr.mean(0), h_tr.std(0)
  pair = closed_form.linear_pair_params(h_tr, a_tr, SPREAD, h_va, a_va, mean, std, D)
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
