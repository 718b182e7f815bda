"""Array operations shared by training (the stage-1 loss, validation scores) and evaluation (the
metrics): SSIM and Pearson correlation."""

import jax
import jax.numpy as jnp
import numpy as np

# SSIM constants of Wang et al. 2004, as in MATLAB's `ssim` and scikit-image with
# `gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1`.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # scikit-image fixes this for Gaussian weights: an 11-tap window at sigma 1.5
SSIM_MIN_SIDE = 3   # the smallest image SSIM is defined on here (a 3-tap window)
SSIM_K1 = 0.01
SSIM_K2 = 0.03
EPS = 1e-12  # a variance or norm at or below this counts as zero


def gaussian_window(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
  """The normalised 1-D Gaussian taps scipy.ndimage uses: radius `int(truncate * sigma + 0.5)`."""
  radius = int(truncate * sigma + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  w = np.exp(-0.5 * (x / sigma) ** 2)
  return (w / w.sum()).astype(np.float32)


def ssim_sigma(height: int, width: int) -> float:
  """The Gaussian window's sigma for images of this size: 1.5 (11 taps) where the window fits;
  on a smaller image the sigma r / 3.5 whose window has the largest radius r that fits
  (scikit-image's radius `int(3.5 sigma + 0.5)`; 10x10 images: r = 4, sigma 8/7, 9 taps).

  Raises:
    ValueError: for a side under `SSIM_MIN_SIDE` pixels.
  """
  side = min(height, width)
  if side < SSIM_MIN_SIDE:
    raise ValueError(f'SSIM needs images of at least {SSIM_MIN_SIDE}x{SSIM_MIN_SIDE} pixels; '
                     f'got {height}x{width}.')
  radius = (side - 1) // 2
  return SSIM_SIGMA if radius >= int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) else radius / SSIM_TRUNCATE


def _filter_valid(x: jax.Array, w: jax.Array) -> jax.Array:
  """2-D Gaussian filter (outer product of the taps `w`) over H and W of each channel of
  (B, H, W, K), keeping only the 'valid' part: (B, H - 2r, W - 2r, K).

  scikit-image filters the whole image (reflecting at the border) and then crops a strip of the
  filter radius from every side before averaging; the cropped values never touch the border, so a
  valid-only filter gives exactly the pixels scikit-image averages.
  """
  k = x.shape[-1]
  kernel = jnp.tile(jnp.outer(w, w)[:, :, None, None], (1, 1, 1, k))  # HWIO, depthwise
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding='VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=k,
      precision=jax.lax.Precision.HIGHEST)


def ssim(recon: jax.Array, target: jax.Array) -> jax.Array:
  """Gaussian-window SSIM of each image (data range 1), averaged over channels: (N,).

  Images (N, H, W, C) in [0, 1]; traceable and differentiable. Equals scikit-image's
  `structural_similarity(gaussian_weights=True, sigma=ssim_sigma(H, W),
  use_sample_covariance=False, data_range=1, channel_axis=-1)`, and MATLAB's `ssim` on images of
  at least 11x11 pixels (sigma 1.5).
  """
  n, h, wd, c = recon.shape
  w = jnp.asarray(gaussian_window(ssim_sigma(h, wd)))
  c1 = (SSIM_K1 * 1.0) ** 2
  c2 = (SSIM_K2 * 1.0) ** 2
  # Channels filtered separately: fold them into the batch; the 5 moments become 5 channels.
  x = recon.transpose(0, 3, 1, 2).reshape(n * c, h, wd)
  y = target.transpose(0, 3, 1, 2).reshape(n * c, h, wd)
  moments = _filter_valid(jnp.stack([x, y, x * x, y * y, x * y], axis=-1), w)
  ux, uy, uxx, uyy, uxy = (moments[..., i] for i in range(5))
  vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
  # Mean over the cropped pixels of each channel, then over channels (equal sizes: one mean).
  return jnp.mean(s.reshape(n, -1), axis=1)


def pearson(a: jax.Array, b: jax.Array, axis: int) -> jax.Array:
  """Pearson r between `a` and `b` along `axis` (axis 1 of (N, P): per row); 0 where either side
  is constant."""
  a = a - a.mean(axis=axis, keepdims=True)
  b = b - b.mean(axis=axis, keepdims=True)
  num = jnp.sum(a * b, axis=axis)
  den = jnp.sqrt(jnp.sum(a * a, axis=axis) * jnp.sum(b * b, axis=axis))
  return jnp.where(den > EPS, num / jnp.maximum(den, EPS), 0.0)
