"""Decoding (image) and encoding (response) metrics, as defined in docs/design.md.

Images are (N, H, W, C) in [0, 1]; responses are (N, U). Inputs may be numpy or JAX arrays; the
numerical work runs in jitted JAX (float32), summaries come back as python floats.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flig_jax import ops

_EPS = ops.EPS
_RANGE_SLACK = 1e-3  # images may stray this far outside [0, 1] (float round-off)


def _as_images(x: Any, name: str) -> jax.Array:
  """Checks a batch of images and returns it as a float32 JAX array."""
  x = jnp.asarray(x, dtype=jnp.float32)
  if x.ndim != 4:
    raise ValueError(f'{name} must be images (N, H, W, C); got shape {x.shape}.')
  if x.shape[0] == 0:
    raise ValueError(f'{name} holds no images.')
  if not bool(jnp.all(jnp.isfinite(x))):
    raise ValueError(f'{name} contains NaN or Inf.')
  lo, hi = float(x.min()), float(x.max())
  if lo < -_RANGE_SLACK or hi > 1 + _RANGE_SLACK:
    raise ValueError(f'{name} must be images in [0, 1]; values span [{lo:g}, {hi:g}] '
                     '(divide 8-bit images by 255).')
  return x


def _as_matrix(x: Any, name: str) -> jax.Array:
  """Checks a (N, U) response matrix and returns it as a float32 JAX array."""
  x = jnp.asarray(x, dtype=jnp.float32)
  if x.ndim != 2:
    raise ValueError(f'{name} must be responses (N, U); got shape {x.shape}.')
  if x.shape[0] == 0:
    raise ValueError(f'{name} holds no stimuli.')
  if not bool(jnp.all(jnp.isfinite(x))):
    raise ValueError(f'{name} contains NaN or Inf.')
  return x


def _check_same_shape(a: jax.Array, b: jax.Array, names: str) -> None:
  if a.shape != b.shape:
    raise ValueError(f'{names} differ in shape: {a.shape} vs {b.shape}.')


def _corr_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
  """C[i, j] = Pearson r between row i of a and row j of b (zero-variance rows give 0)."""
  a = a - a.mean(axis=1, keepdims=True)
  b = b - b.mean(axis=1, keepdims=True)
  na = jnp.sqrt(jnp.sum(a * a, axis=1))
  nb = jnp.sqrt(jnp.sum(b * b, axis=1))
  a = a / jnp.where(na > _EPS, na, jnp.inf)[:, None]
  b = b / jnp.where(nb > _EPS, nb, jnp.inf)[:, None]
  return jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)


# ---------------------------------------------------------------------------------------------
# Decoding metrics, per image.


@jax.jit
def _per_image_mse(recon: jax.Array, target: jax.Array) -> jax.Array:
  return jnp.mean((recon - target) ** 2, axis=(1, 2, 3))


@jax.jit
def _per_image_pcc(recon: jax.Array, target: jax.Array) -> jax.Array:
  n = recon.shape[0]
  return ops.pearson(recon.reshape(n, -1), target.reshape(n, -1), axis=1)


_per_image_ssim = jax.jit(ops.ssim)


@jax.jit
def _per_image_identification(recon: jax.Array, target: jax.Array) -> jax.Array:
  n = recon.shape[0]
  c = _corr_matrix(recon.reshape(n, -1), target.reshape(n, -1))
  own = jnp.diagonal(c)
  beaten = (c < own[:, None]) & ~jnp.eye(n, dtype=bool)
  return jnp.sum(beaten, axis=1) / (n - 1)


def _decoding_inputs(recon: Any, target: Any) -> tuple[jax.Array, jax.Array]:
  recon = _as_images(recon, 'recon')
  target = _as_images(target, 'target')
  _check_same_shape(recon, target, 'recon and target')
  return recon, target


def per_image_mse(recon: Any, target: Any) -> np.ndarray:
  """Mean squared pixel error of each image: (N,)."""
  return np.asarray(_per_image_mse(*_decoding_inputs(recon, target)))


def per_image_pcc(recon: Any, target: Any) -> np.ndarray:
  """Pearson r between each flattened reconstruction and its stimulus: (N,).

  An image pair in which either image is constant has r = 0 (r is undefined there).
  """
  return np.asarray(_per_image_pcc(*_decoding_inputs(recon, target)))


def per_image_ssim(recon: Any, target: Any) -> np.ndarray:
  """Gaussian-window SSIM of each image (data range 1), averaged over channels: (N,).

  Equals scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=-1)` (and MATLAB's `ssim`), which
  averages the SSIM map over the image less a border of the window radius (5 pixels). Images
  smaller than that 11-pixel window get the largest window that fits (`ops.ssim_sigma`).

  Raises:
    ValueError: if an image side is shorter than 3 pixels.
  """
  recon, target = _decoding_inputs(recon, target)
  ops.ssim_sigma(*recon.shape[1:3])
  return np.asarray(_per_image_ssim(recon, target))


def per_image_identification(recon: Any, target: Any) -> np.ndarray:
  """For each reconstruction i, the fraction of other stimuli j != i it correlates with less
  than with its own stimulus i (ties count as failures): (N,). Chance is about 0.5.

  Raises:
    ValueError: if there are fewer than two images (no other stimuli to compare with).
  """
  recon, target = _decoding_inputs(recon, target)
  if recon.shape[0] < 2:
    raise ValueError('identification needs at least 2 images.')
  return np.asarray(_per_image_identification(recon, target))


def decoding_metrics(recon: Any, target: Any,
                     per_image: bool = False) -> dict[str, float] | dict[str, np.ndarray]:
  """Decoding metrics of docs/design.md between reconstructions and stimuli.

  Args:
    recon: reconstructions (N, H, W, C) in [0, 1].
    target: the stimuli, same shape.
    per_image: return (N,) arrays instead of averages.

  Returns:
    dict with `mse` (over all pixels), `pcc` (per-image Pearson r, averaged), `ssim` (per image,
    averaged) and `identification` (see `per_image_identification`), as python floats.
  """
  recon, target = _decoding_inputs(recon, target)
  out = {
      'mse': per_image_mse(recon, target),
      'pcc': per_image_pcc(recon, target),
      'ssim': per_image_ssim(recon, target),
      'identification': per_image_identification(recon, target),
  }
  if per_image:
    return out
  return {k: float(np.mean(v, dtype=np.float64)) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Encoding metrics, per unit.


@jax.jit
def _per_unit_pcc(pred: jax.Array, target: jax.Array) -> jax.Array:
  return ops.pearson(pred.T, target.T, axis=1)


def per_unit_pcc(pred: Any, target: Any) -> np.ndarray:
  """Pearson r over stimuli between predicted and measured responses of each unit: (U,).

  A unit whose prediction or measurement has zero variance over the stimuli gets r = 0.
  """
  pred, target = _as_matrix(pred, 'pred'), _as_matrix(target, 'target')
  _check_same_shape(pred, target, 'pred and target')
  if pred.shape[0] < 2:
    raise ValueError('a correlation over stimuli needs at least 2 stimuli.')
  return np.asarray(_per_unit_pcc(pred, target))


@jax.jit
def _zscored_mse(pred: jax.Array, target: jax.Array, mean: jax.Array,
                 std: jax.Array) -> jax.Array:
  std = jnp.where(std > _EPS, std, 1.0)
  return jnp.mean(((pred - mean) / std - (target - mean) / std) ** 2)


def encoding_metrics(pred: Any, target: Any, train_mean: Any = None,
                     train_std: Any = None) -> dict[str, float]:
  """Encoding metrics of docs/design.md between predicted and measured responses.

  Args:
    pred: predicted responses (N, U), in the data's own units.
    target: measured responses (N, U).
    train_mean: per-unit mean (U,) of the training responses; with `train_std`, sets the z-score
      of `mse`. When None, the target's own mean and std are used.
    train_std: per-unit std (U,) of the training responses (zeros are treated as 1).

  Returns:
    dict with `pcc_mean` and `pcc_median` (of `per_unit_pcc`; zero-variance units count as 0) and
    `mse` (mean over stimuli and units of the squared error in z-scored units).
  """
  pred, target = _as_matrix(pred, 'pred'), _as_matrix(target, 'target')
  _check_same_shape(pred, target, 'pred and target')
  r = per_unit_pcc(pred, target)
  units = target.shape[1]
  mean = target.mean(axis=0) if train_mean is None else jnp.asarray(train_mean, jnp.float32)
  std = target.std(axis=0) if train_std is None else jnp.asarray(train_std, jnp.float32)
  for name, v in (('train_mean', mean), ('train_std', std)):
    if v.shape != (units,):
      raise ValueError(f'{name} must have shape ({units},); got {v.shape}.')
  return {
      'pcc_mean': float(np.mean(r, dtype=np.float64)),
      'pcc_median': float(np.median(r)),
      'mse': float(_zscored_mse(pred, target, mean, std)),
  }
