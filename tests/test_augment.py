"""The on-device Beta sampler of mixup against scipy's Beta distribution."""

import jax
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
