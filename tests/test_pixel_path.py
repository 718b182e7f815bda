"""The pixel paths: the linear maps, the candidate scores and the choice of the blend weights,
and FLIG's decoding and encoding through them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flig_jax import pixel_path, ridge
from flig_jax.evaluation import metrics
from flig_jax.nn.adapter import Adapter
from flig_jax.nn.flig import FLIG, Frozen

SHAPE = (12, 12, 1)


def _images(rng, n):
  return rng.uniform(0.2, 0.8, size=(n,) + SHAPE).astype(np.float32)


def test_fit_is_the_pixel_ridge_baseline_written_as_a_map_from_the_adapted_responses():
  """On the adapter's signal coordinates the map predicts what ridge on the responses predicts
  (the `ridge` baseline, same folds), recovers a linear map, and ignores the padding."""
  rng = np.random.default_rng(0)
  n, units, dim, p = 300, 6, 9, int(np.prod(SHAPE))
  # Correlated units: principal components of very different variances, as in recordings.
  mixing = np.linalg.qr(rng.normal(size=(units, units)))[0] * np.geomspace(3.0, 0.03, units)
  responses = rng.normal(size=(n + 50, units)) @ mixing.T + 3.0
  true = rng.normal(size=(units, p)) * 0.01
  noise = 0.02 * rng.normal(size=(n + 50, p))
  images = (0.5 + (responses - 3.0) @ true + noise).reshape((n + 50,) + SHAPE)
  folds = np.arange(n) % 5
  adapter = Adapter.fit(responses[:n], dim)
  k = adapter.k
  adapted = np.asarray(adapter.forward(jnp.asarray(responses, jnp.float32)), np.float64)
  kernel, bias = pixel_path.fit(adapted[:n, :k], images[:n], np.asarray(adapter.sqrt_eig), dim,
                                folds)
  assert kernel.shape == (dim, p) and bias.shape == (p,)
  assert not np.any(kernel[k:])                      # the padding rows are zero
  padded = np.concatenate([adapted[n:, :k], rng.normal(size=(50, dim - k))], axis=1)
  mapped = padded @ kernel + bias
  np.testing.assert_allclose(mapped, images[n:].reshape(50, -1), atol=0.1)
  baseline = ridge.fit_ridge(responses[:n], images[:n], fold_ids=folds)
  np.testing.assert_allclose(mapped, baseline.predict(responses[n:]).reshape(50, -1), atol=2e-4)


def test_candidate_scores_are_the_per_image_scores_of_each_blend():
  rng = np.random.default_rng(1)
  images = _images(rng, 7)
  good = np.clip(images + 0.05 * rng.normal(size=images.shape), 0, 1).astype(np.float32)
  bad = _images(rng, 7)
  weights = (0.0, 0.5, 1.0)
  scores = pixel_path.candidate_scores(bad, good, images, weights)
  assert scores.shape == (3, 7)
  expected = metrics.per_image_pcc(bad, images) + metrics.per_image_ssim(bad, images)
  np.testing.assert_allclose(scores[0], expected, rtol=1e-5)
  np.testing.assert_allclose(scores[2], pixel_path.image_scores(good, images), rtol=1e-5)
  assert pixel_path.choose(scores, weights) == 1.0   # the pixel path decodes better
  assert pixel_path.choose(pixel_path.candidate_scores(good, bad, images, weights),
                           weights) == 0.0


def test_choose_takes_the_smallest_weight_on_a_tie():
  assert pixel_path.choose(np.ones((5, 4))) == 0.0
  assert pixel_path.choose(np.array([[0.1, 0.2], [0.3, 0.3], [0.3, 0.3]]),
                           (0.0, 0.5, 1.0)) == 0.5


def test_scores_of_images_smaller_than_the_ssim_window_are_the_metrics_too():
  rng = np.random.default_rng(2)
  small = rng.uniform(size=(4, 8, 8, 1)).astype(np.float32)
  decoded = rng.uniform(size=(4, 8, 8, 1)).astype(np.float32)
  np.testing.assert_allclose(pixel_path.image_scores(decoded, small),
                             metrics.per_image_pcc(decoded, small)
                             + metrics.per_image_ssim(decoded, small), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('weight', [0.0, 0.25, 1.0])
def test_flig_decodes_through_the_blend(weight):
  rng = np.random.default_rng(3)
  d, n, units = 4, 16, 5
  module = FLIG(image_shape=SHAPE, feature_dim=d, cae_widths=(4, 8), flow_hidden=8,
                flow_type='augmented')
  x = jnp.asarray(_images(rng, n))
  r = rng.normal(size=(n, units)).astype(np.float32)
  adapter = Adapter.fit(r, d)
  ae = module.init_autoencoder(jax.random.key(0), x)
  plain = Frozen(ae, jnp.zeros(d), jnp.ones(d), adapter)
  flow = module.init_flow(jax.random.key(1), jnp.asarray(rng.normal(size=(n, d)), jnp.float32))
  kernel = jnp.asarray(rng.normal(size=(d, int(np.prod(SHAPE)))) * 0.1, jnp.float32)
  bias = jnp.full((int(np.prod(SHAPE)),), 0.5)
  blended = plain.replace(pixel_kernel=kernel, pixel_bias=bias, pixel_weight=jnp.asarray(weight))
  through_g = module.apply(plain.variables(flow), r, method=FLIG.decode)
  a = adapter.forward(jnp.asarray(r))
  pixels = np.clip(np.asarray(a @ kernel + bias), 0, 1).reshape((n,) + SHAPE)
  got = module.apply(blended.variables(flow), r, method=FLIG.decode)
  np.testing.assert_allclose(got, (1 - weight) * through_g + weight * pixels, atol=1e-5)


def _recording(rng, n, units, p):
  """Responses with principal components of very different variances and a shared linear code
  of the images in them, as in recordings."""
  mixing = np.linalg.qr(rng.normal(size=(units, units)))[0] * np.geomspace(3.0, 0.03, units)
  responses = rng.normal(size=(n, units)) @ mixing.T + 3.0
  images = 0.5 + (responses - 3.0) @ (rng.normal(size=(units, p)) * 0.01)
  images = images + 0.02 * rng.normal(size=images.shape)
  return responses, images.reshape((n,) + SHAPE)


@pytest.mark.parametrize('units', [6, 40])  # fewer units than pairs, and more (rank N - 1)
def test_maps_are_the_ridge_baselines_in_both_directions(units):
  """With every principal component of the responses (m = rank > D, unlike the flow's adapter),
  the maps predict what the `ridge` baselines predict: responses -> pixels and pixels ->
  responses, the same folds choosing each penalty."""
  rng = np.random.default_rng(units)
  n, p = 30, int(np.prod(SHAPE))
  responses, images = _recording(rng, n + 10, units, p)
  folds = np.arange(n) % 5
  maps = pixel_path.fit_maps(responses[:n], images[:n], folds)
  assert maps.adapter.k == pixel_path.components(units, n) == min(units, n - 1)
  decoder = ridge.fit_ridge(responses[:n], images[:n], fold_ids=folds)
  np.testing.assert_allclose(maps.decode(responses[n:], SHAPE), decoder.predict(responses[n:]),
                             atol=2e-4)
  encoder = ridge.fit_ridge(images[:n], responses[:n], fold_ids=folds)
  np.testing.assert_allclose(maps.encode(images[n:]), encoder.predict(images[n:]), atol=2e-3)


@pytest.mark.parametrize('weights', [(0.0, 0.0), (0.25, 0.5), (1.0, 1.0)])
def test_flig_decodes_and_encodes_through_both_blends(weights):
  """decode(r) = (1 - w) G(f^-1(A(r))) + w clip(P(r) K + b); encode(x) = (1 - v) A^-1(f(h)) +
  v P^-1(x Q + c), P the maps' own adapter."""
  w, v = weights
  rng = np.random.default_rng(4)
  d, n, units = 4, 16, 7
  module = FLIG(image_shape=SHAPE, feature_dim=d, cae_widths=(4, 8), flow_hidden=8,
                flow_type='augmented')
  responses, images = _recording(rng, n, units, int(np.prod(SHAPE)))
  x, r = jnp.asarray(images, jnp.float32), jnp.asarray(responses, jnp.float32)
  adapter = Adapter.fit(responses, d)
  plain = Frozen(module.init_autoencoder(jax.random.key(0), x), jnp.zeros(d), jnp.ones(d),
                 adapter)
  flow = module.init_flow(jax.random.key(1), jnp.asarray(rng.normal(size=(n, d)), jnp.float32))
  maps = pixel_path.fit_maps(responses, images)
  assert maps.adapter.k == units > d
  both = plain.replace(pixel_kernel=jnp.asarray(maps.kernel), pixel_bias=jnp.asarray(maps.bias),
                       pixel_weight=jnp.asarray(w), pixel_enc_kernel=jnp.asarray(maps.enc_kernel),
                       pixel_enc_bias=jnp.asarray(maps.enc_bias), pixel_enc_weight=jnp.asarray(v),
                       pixel_adapter=maps.adapter)
  decoded = module.apply(both.variables(flow), r, method=FLIG.decode)
  through_g = module.apply(plain.variables(flow), r, method=FLIG.decode)
  np.testing.assert_allclose(decoded, (1 - w) * through_g + w * maps.decode(responses, SHAPE),
                             atol=1e-5)
  encoded = module.apply(both.variables(flow), x, method=FLIG.encode)
  through_f = module.apply(plain.variables(flow), x, method=FLIG.encode)
  np.testing.assert_allclose(encoded, (1 - v) * through_f + v * maps.encode(images), atol=1e-4)
  with pytest.raises(ValueError, match='reads the responses'):
    module.apply(both.variables(flow), adapter.forward(r), method=FLIG.decode_images)


def test_encoder_scores_prefer_the_better_prediction():
  rng = np.random.default_rng(5)
  responses = rng.normal(size=(40, 6))
  good = responses + 0.3 * rng.normal(size=responses.shape)
  bad = rng.normal(size=responses.shape)
  scores = pixel_path.encoder_scores(bad, good, responses)
  assert scores.shape == (len(pixel_path.WEIGHTS),) and np.all(np.diff(scores) > 0)
  assert pixel_path.choose(scores[:, None]) == 1.0
  assert pixel_path.choose(pixel_path.encoder_scores(good, bad, responses)[:, None]) == 0.0
