"""Stage 1's stimulus warps, and the on-device Beta sampler of mixup against scipy's Beta
distribution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from flig_jax.training import augment


@pytest.mark.parametrize('alpha', [0.4, 1.0, 3.0])
def test_symmetric_beta_matches_scipy(alpha):
  draw = jax.jit(lambda key: augment.symmetric_beta(key, alpha, (20000,)))
  x = np.asarray(draw(jax.random.key(0)), np.float64)
  assert x.min() >= 0.0 and x.max() <= 1.0
  assert scipy.stats.kstest(x, scipy.stats.beta(alpha, alpha).cdf).pvalue > 1e-3
  # The test can tell neighbours apart: the same draws are far from Beta(2 alpha, 2 alpha).
  assert scipy.stats.kstest(x, scipy.stats.beta(2 * alpha, 2 * alpha).cdf).pvalue < 1e-6


def test_symmetric_beta_is_a_pure_function_of_the_key():
  a = augment.symmetric_beta(jax.random.key(3), 0.4, (5,))
  b = augment.symmetric_beta(jax.random.key(3), 0.4, (5,))
  c = augment.symmetric_beta(jax.random.key(4), 0.4, (5,))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


@pytest.mark.parametrize('size', [(28, 28), (32, 20)])
def test_elastic_field_upsampling_is_jax_image_resize(size):
  coarse = jax.random.normal(jax.random.key(0), (2, 4, 4))
  want = jax.image.resize(coarse, (2, *size), method='cubic')
  got = jax.jit(lambda c: jnp.einsum('hi,cij,wj->chw', augment._cubic_resize_matrix(size[0]), c,
                                     augment._cubic_resize_matrix(size[1])))(coarse)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_warps_keep_shape_and_range_and_vanish_at_zero_strength():
  images = jax.random.uniform(jax.random.key(1), (3, 12, 10, 2))
  warp = lambda **kw: jax.jit(lambda k, x: augment.augment(k, x, **kw))(jax.random.key(2), images)
  still = warp(max_shift=0.0, max_rotation=0.0, elastic_strength=0.0)
  np.testing.assert_allclose(still, images, atol=1e-5)
  moved = warp(max_shift=2.0, max_rotation=10.0, elastic_strength=1.0)
  assert moved.shape == images.shape and 0.0 <= float(moved.min()) <= float(moved.max()) <= 1.0
  assert float(jnp.abs(moved - images).mean()) > 0.05
