"""Stimulus augmentation for stage 1: random shift, rotation and smooth elastic warp, on device."""

import jax
import jax.numpy as jnp


def _warp_one(rng: jax.Array, image: jax.Array, max_shift: float, max_rotation: float,
              elastic_strength: float) -> jax.Array:
  """Resamples one (H, W, C) image under a random rigid motion plus a smooth displacement field."""
  height, width, channels = image.shape
  k_shift, k_rot, k_elastic = jax.random.split(rng, 3)
  shift = jax.random.uniform(k_shift, (2,), minval=-max_shift, maxval=max_shift)
  angle = jnp.deg2rad(jax.random.uniform(k_rot, (), minval=-max_rotation, maxval=max_rotation))
  coarse = jax.random.normal(k_elastic, (2, 4, 4)) * elastic_strength
  field = jax.image.resize(coarse, (2, height, width), method='cubic')

  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32), indexing='ij')
  centre_r, centre_c = (height - 1) / 2, (width - 1) / 2
  dr, dc = rows - centre_r, cols - centre_c
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  src_r = cos * dr - sin * dc + centre_r - shift[0] + field[0]
  src_c = sin * dr + cos * dc + centre_c - shift[1] + field[1]

  def sample(channel):
    return jax.scipy.ndimage.map_coordinates(channel, [src_r, src_c], order=1, mode='nearest')

  return jax.vmap(sample, in_axes=2, out_axes=2)(image.reshape(height, width, channels))


def augment(rng: jax.Array, images: jax.Array, *, max_shift: float, max_rotation: float,
            elastic_strength: float) -> jax.Array:
  """Applies an independent random warp to each image of a (N, H, W, C) batch; values stay in [0, 1].

  Pixels that come from outside the image repeat the nearest edge pixel.
  """
  keys = jax.random.split(rng, images.shape[0])
  warp = lambda k, x: _warp_one(k, x, max_shift, max_rotation, elastic_strength)
  return jnp.clip(jax.vmap(warp)(keys, images), 0.0, 1.0)
