"""Tests of flig_jax.evaluation.baselines: ridge recovers linear maps; MLPs beat the mean."""

import numpy as np
import pytest

from flig_jax import ridge
from flig_jax.evaluation import baselines


def _linear(n: int, p: int, q: int, noise: float, seed: int, data_seed: int = 0):
  """x with unequal column scales and offsets; y = x w + 2 + noise. `seed` fixes the map."""
  rng = np.random.default_rng(seed)
  scale, offset, w = rng.uniform(0.5, 3.0, p), rng.standard_normal(p), rng.standard_normal((p, q))
  rng = np.random.default_rng([seed, data_seed])
  x = rng.standard_normal((n, p)) * scale + offset
  y = x @ w + 2.0 + noise * rng.standard_normal((n, q))
  return x, y, w


@pytest.mark.parametrize('p', [10, 300])  # primal (p < n) and dual (p > n) forms
def test_ridge_recovers_a_linear_map(p):
  x, y, w = _linear(160 if p == 10 else 120, p, 4, noise=0.01, seed=p)
  tr, va = slice(0, 80), slice(80, None)
  model = baselines.fit_ridge(x[tr], y[tr], x[va], y[va])
  x_test, y_test, _ = _linear(50, p, 4, noise=0.0, seed=p, data_seed=1)  # same map, new data
  pred = model.predict(x_test)
  assert pred.shape == (50, 4)
  if p == 10:  # well posed: the map itself is recovered, with a small alpha
    assert model.alpha <= 1.0
    np.testing.assert_allclose(pred, y_test, atol=0.05 * np.std(y_test))
    np.testing.assert_allclose(model.coef / model.x_std[:, None], w, atol=0.02)
  else:  # p > n: the minimum-norm direction; predictions still far better than the mean
    resid = np.mean((pred - y_test) ** 2) / np.var(y_test)
    assert resid < 0.9


def test_ridge_dual_and_primal_forms_agree():
  rng = np.random.default_rng(0)
  x, y = rng.standard_normal((20, 30)), rng.standard_normal((20, 3))
  xc, yc = x - x.mean(0), y - y.mean(0)
  dual = ridge._ridge_path(xc, yc)(5.0)
  primal = np.linalg.solve(xc.T @ xc + 5.0 * np.eye(30), xc.T @ yc)
  np.testing.assert_allclose(dual, primal, atol=1e-8)


def test_ridge_picks_large_alpha_for_pure_noise():
  rng = np.random.default_rng(1)
  x, y = rng.standard_normal((60, 40)), rng.standard_normal((60, 2))
  model = baselines.fit_ridge(x[:40], y[:40], x[40:], y[40:])
  assert model.alpha >= 100  # nothing to learn: shrink hard (X'X eigenvalues are ~40)
  x2, y2, _ = _linear(60, 40, 2, noise=0.01, seed=2)
  assert baselines.fit_ridge(x2[:40], y2[:40], x2[40:], y2[40:]).alpha < model.alpha


def test_ridge_cross_validates_without_val_split_and_decodes_images():
  rng = np.random.default_rng(3)
  images = rng.random((60, 4, 4, 1)).astype(np.float32)
  responses = images.reshape(60, -1) @ rng.standard_normal((16, 30))
  model = baselines.fit_ridge(responses[:50], images[:50], None, None, seed=0)
  again = baselines.fit_ridge(responses[:50], images[:50], np.zeros((0, 30)), None, seed=0)
  assert model.alpha == again.alpha and len(model.val_scores) == 17
  pred = model.predict(responses[50:])
  assert pred.shape == (10, 4, 4, 1) and pred.dtype == np.float32
  assert pred.min() >= 0.0 and pred.max() <= 1.0
  assert np.mean((pred - images[50:]) ** 2) < 1e-3


def test_ridge_rejects_bad_input():
  x = np.zeros((10, 3))
  with pytest.raises(ValueError, match='number of samples'):
    baselines.fit_ridge(x, np.zeros((9, 2)))
  with pytest.raises(ValueError, match='NaN'):
    baselines.fit_ridge(np.full((10, 3), np.nan), np.zeros((10, 2)))
  with pytest.raises(ValueError, match='input features'):
    baselines.fit_ridge(x + np.arange(10)[:, None], np.ones((10, 2))).predict(np.zeros((2, 4)))


def _images_and_responses(n: int, seed: int):
  """Two-class blob images and noisy linear-rectified responses to them."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:8, 0:8] / 8.0
  cls = rng.integers(0, 2, n)
  cx = np.where(cls == 0, 0.3, 0.7) + 0.05 * rng.standard_normal(n)
  images = np.exp(-((xx - cx[:, None, None]) ** 2 + (yy - 0.5) ** 2) / 0.02)[..., None]
  w = rng.standard_normal((64, 40))
  responses = np.maximum(images.reshape(n, -1) @ w, 0) + 0.3 * rng.standard_normal((n, 40))
  return images.astype(np.float32), responses.astype(np.float32)


def test_mlp_decoder_beats_the_mean_image():
  images, responses = _images_and_responses(300, seed=0)
  tr, va, te = slice(0, 200), slice(200, 250), slice(250, None)
  model = baselines.fit_mlp(responses[tr], images[tr], responses[va], images[va],
                            kind='decoder', hidden=(64,), steps=200, seed=0)
  pred = model.predict(responses[te])
  assert pred.shape == (50, 8, 8, 1) and pred.min() >= 0.0 and pred.max() <= 1.0
  mse = np.mean((pred - images[te]) ** 2)
  mean_mse = np.mean((images[tr].mean(0) - images[te]) ** 2)
  assert mse < 0.5 * mean_mse


def test_mlp_encoder_beats_the_mean_response():
  images, responses = _images_and_responses(300, seed=1)
  tr, te = slice(0, 250), slice(250, None)
  # No validation split: fit_mlp holds out a seeded 10% of train for early stopping.
  model = baselines.fit_mlp(images[tr], responses[tr], None, None, kind='encoder',
                            hidden=(64,), steps=200, seed=0)
  pred = model.predict(images[te])
  assert pred.shape == (50, 40)
  mse = np.mean((pred - responses[te]) ** 2)
  mean_mse = np.mean((responses[tr].mean(0) - responses[te]) ** 2)
  assert mse < 0.7 * mean_mse
  assert model.best_step > 0


def test_mlp_rejects_bad_kind_and_shapes():
  x = np.zeros((10, 3))
  with pytest.raises(ValueError, match='kind'):
    baselines.fit_mlp(x, x, kind='both')
  with pytest.raises(ValueError, match='output_shape'):
    baselines.fit_mlp(x, np.zeros((10, 5)), kind='decoder')
