"""The convolutional autoencoder: shapes, dtypes and range for several image sizes, and its
errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flig_jax.nn.autoencoder import Autoencoder


@pytest.fixture(autouse=True)
def _fast_prng():
  """Threefry's partitionable mode compiles very slowly on small CPUs; these tests do not need it
  (scoped to each test, so no leak into other files)."""
  with jax.threefry_partitionable(False):
    yield


@pytest.mark.parametrize('image_shape', [(28, 28, 1), (32, 32, 1), (64, 64, 3), (30, 20, 2)])
def test_shapes_dtypes_and_range(image_shape):
  ae = Autoencoder(image_shape, feature_dim=6, widths=(4, 8))
  x = jax.random.uniform(jax.random.key(0), (3,) + image_shape)

  far = 30.0 * jax.random.normal(jax.random.key(2), (3, 6))   # features far apart

  def run(key, x):
    variables = ae.init(key, x)
    h = ae.apply(variables, x, method=Autoencoder.encode)
    return (variables, h, ae.apply(variables, h, method=Autoencoder.decode), ae.apply(variables, x),
            ae.apply(variables, far, method=Autoencoder.decode))

  variables, h, y, y_call, y_far = jax.jit(run)(jax.random.key(1), x)
  assert h.shape == (3, 6) and h.dtype == jnp.float32
  assert y.shape == (3,) + image_shape and y.dtype == jnp.float32
  assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
  np.testing.assert_allclose(y_call, y, atol=1e-6)
  assert set(variables) == {'params'}                 # no mutable state (no BatchNorm)
  # G reads its input: far-apart features decode to different images, each with structure across
  # its pixels (a decoder that ignores h, or fills the image with one value, fails here).
  assert float(jnp.mean(jnp.abs(y_far[0] - y_far[1]))) > 0.05
  assert float(jnp.min(jnp.std(y_far, axis=(1, 2, 3)))) > 0.05
  assert float(jnp.min(jnp.std(h, axis=0))) > 0               # E tells the images apart


def test_wrong_shapes_raise():
  ae = Autoencoder((28, 28, 1), feature_dim=6, widths=(4,))
  x = jnp.zeros((2, 28, 28, 1))
  variables = jax.jit(ae.init)(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r'expects images of shape \(N, 28, 28, 1\)'):
    ae.apply(variables, jnp.zeros((2, 32, 32, 1)), method=Autoencoder.encode)
  with pytest.raises(ValueError, match=r'\(N, 6\)'):
    ae.apply(variables, jnp.zeros((2, 5)), method=Autoencoder.decode)
