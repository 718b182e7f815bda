"""Random augmentation on device: stimulus warps for stage 1 (shift, rotation, smooth elastic
field) and the Beta-distributed mixup weights of stage 2."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

_BETA_TABLE_SIZE = 4097  # points of the inverse-CDF table (u = 0, 1/4096, ..., 1)


_COARSE = 4  # the elastic field's control points per side


@functools.lru_cache(maxsize=16)
def _cubic_resize_matrix(size: int) -> np.ndarray:
  """(size, _COARSE): jax.image.resize's cubic upsampling of _COARSE points to `size`, as a matrix
  (resize is linear and acts on each axis alone)."""
  with jax.ensure_compile_time_eval():  # a constant, also when first called inside a jit
    eye = jnp.eye(_COARSE, dtype=jnp.float32)
    return np.asarray(jax.image.resize(eye, (size, _COARSE), method='cubic'))


def _warp_one(rng: jax.Array, image: jax.Array, max_shift: float, max_rotation: float,
              elastic_strength: float) -> jax.Array:
  """Resamples one (H, W, C) image under a random rigid motion plus a smooth displacement field."""
  height, width, channels = image.shape
  k_shift, k_rot, k_elastic = jax.random.split(rng, 3)
  shift = jax.random.uniform(k_shift, (2,), minval=-max_shift, maxval=max_shift)
  angle = jnp.deg2rad(jax.random.uniform(k_rot, (), minval=-max_rotation, maxval=max_rotation))
  coarse = jax.random.normal(k_elastic, (2, _COARSE, _COARSE)) * elastic_strength
  # The cubic upsampling of jax.image.resize, as the two small matrix products it amounts to.
  field = jnp.einsum('hi,cij,wj->chw', _cubic_resize_matrix(height), coarse,
                     _cubic_resize_matrix(width))

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
  """Applies an independent random warp to each image of a (N, H, W, C) batch; values stay in
  [0, 1].

  Pixels that come from outside the image repeat the nearest edge pixel.
  """
  keys = jax.random.split(rng, images.shape[0])
  warp = lambda k, x: _warp_one(k, x, max_shift, max_rotation, elastic_strength)
  return jnp.clip(jax.vmap(warp)(keys, images), 0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _beta_quantiles(alpha: float) -> np.ndarray:
  """The quantile function of Beta(alpha, alpha) on a uniform grid of u in [0, 1] (float32)."""
  u = np.linspace(0.0, 1.0, _BETA_TABLE_SIZE)
  return scipy.special.betaincinv(alpha, alpha, u).astype(np.float32)


def symmetric_beta(rng: jax.Array, alpha: float, shape: tuple[int, ...]) -> jax.Array:
  """Draws from Beta(alpha, alpha) by inverting its CDF: a uniform u, then linear interpolation
  in a table of quantiles computed once on the host (scipy's `betaincinv`).

  `jax.random.beta` draws two gammas by rejection sampling, loops that took a quarter of the
  stage-2 step; this is one uniform draw and a table lookup. `alpha` must be a Python float (it
  picks the table at trace time).
  """
  table = jnp.asarray(_beta_quantiles(float(alpha)))
  pos = jax.random.uniform(rng, shape) * (_BETA_TABLE_SIZE - 1)
  lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, _BETA_TABLE_SIZE - 2)
  frac = pos - lo
  return table[lo] * (1.0 - frac) + table[lo + 1] * frac
