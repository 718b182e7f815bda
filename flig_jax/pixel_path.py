"""The pixel paths: linear maps between the responses and the pixels, blended with the flow's
predictions where cross-validation says the blend predicts better.

  decode(r) = (1 - w) G(f^-1(A(r))) + w clip(P(r) K + b, 0, 1)
  encode(x) = (1 - v) A^-1(f(h(x))) + v P^-1(x Q + c)

The autoencoder can only produce images like those it was trained on, and its D features can only
carry so much of a stimulus (random 10x10 binary patterns have 100 free pixels); on a small set
with new shapes at test time (a few hundred fMRI trials), pixel-space ridge regression decodes and
encodes better than anything routed through E and G. The maps are those ridge regressions, the
`ridge` baselines': P is an adapter of their own (z-score per unit, the responses' top m principal
components, m = min(`COMPONENTS`, rank): every component on the sets here, where the flow's
adapter keeps D), K, b is ridge from the z-scored training responses to the pixels and Q, c ridge
from the pixels to them, computed on the m component scores (`fit`, `fit_encoder`) so their cost
does not grow with the number of units, and written as maps from and to P's whitened
coordinates. Fitted on whitened coordinates instead, ridge would shrink a component that carries a
thousandth of the variance as little as the first, and decode worse than the baseline
(docs/stage2.md, the pixel paths). Each map's penalty is chosen by cross-validation over the
training pairs.

The decoder's weight w comes from the grid `WEIGHTS`, chosen on held-out pairs by the mean of
per-image PCC + SSIM with the flow at its closed-form start: a linear map's images are blurred,
which PCC alone would not count against it. The encoder's weight v is chosen by the mean per-unit
PCC at the encoder's kept stage-2 step (`encoder_scores`): on recordings where the coupling's
nonlinearity is what beats the baselines, a weight chosen at the linear start would give it away.
w = v = 0 is the flow alone, so a set where it suffices keeps it.

`candidate_scores` gives the per-stimulus scores of every candidate w, the quantity any selection
(one validation split, or folds of a cross-validation stacked along the stimulus axis) averages;
`choose` picks from them.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flig_jax import ops, ridge
from flig_jax.nn.adapter import Adapter

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
COMPONENTS = 256  # at most this many principal components of the responses feed the maps


class Maps(NamedTuple):
  """Both pixel maps fitted on one set of training pairs (`fit_maps`).

  Attributes:
    adapter: P, the m principal components the maps read (an Adapter of dim m, unpadded).
    kernel: (m, H * W * C) the decoder's map from P(r); bias (H * W * C,).
    enc_kernel: (H * W * C, m) the encoder's map to P's coordinates; enc_bias (m,).
  """
  adapter: Adapter
  kernel: np.ndarray
  bias: np.ndarray
  enc_kernel: np.ndarray
  enc_bias: np.ndarray

  def decode(self, responses: Any, image_shape: tuple[int, ...]) -> np.ndarray:
    """clip(P(r) K + b, 0, 1): responses (N, U) -> images (N, H, W, C)."""
    a = np.asarray(self.adapter.forward(jnp.asarray(responses, jnp.float32)))
    pixels = np.clip(a @ self.kernel + self.bias, 0.0, 1.0)
    return pixels.reshape((a.shape[0],) + tuple(image_shape))

  def encode(self, images: Any) -> np.ndarray:
    """P^-1(x Q + c): images (N, H, W, C) -> responses (N, U)."""
    x = np.asarray(images, np.float32).reshape(len(images), -1)
    return np.asarray(self.adapter.inverse(jnp.asarray(x @ self.enc_kernel + self.enc_bias)))


def components(num_units: int, num_pairs: int) -> int:
  """m for responses of full rank: min(COMPONENTS, U, N - 1)."""
  return max(1, min(COMPONENTS, num_units, num_pairs - 1))


def fit_maps(responses: np.ndarray, images: np.ndarray,
             fold_ids: np.ndarray | None = None) -> Maps:
  """Both pixel maps, fitted on training pairs only: P on the responses (N, U), then the decoder's
  (`fit`) and the encoder's (`fit_encoder`) maps with the stimuli (N, H, W, C), their penalties
  by cross-validation over `fold_ids` (random folds when None)."""
  adapter = Adapter.fit(responses, min(COMPONENTS, np.shape(responses)[1]))
  adapter = adapter.replace(dim=adapter.k)
  signal = np.asarray(adapter.forward(jnp.asarray(responses, jnp.float32)), np.float64)
  sqrt_eig = np.asarray(adapter.sqrt_eig)
  return Maps(adapter, *fit(signal, images, sqrt_eig, adapter.k, fold_ids),
              *fit_encoder(images, signal, sqrt_eig, adapter.k, fold_ids))


def fit(signal: np.ndarray, images: np.ndarray, sqrt_eig: np.ndarray, dim: int,
        fold_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The decoder's pixel map from an adapter's coordinates, fitted on training pairs only.

  Args:
    signal: (N, k) an adapter's signal coordinates A(r)[:, :k] of the training responses.
    images: (N, H, W, C) the training stimuli.
    sqrt_eig: (k,) the adapter's standard deviation along each principal component.
    dim: the adapter's output size; the kernel's rows past k (the padding) are zero.
    fold_ids: (N,) the folds of the cross-validation that chooses the ridge penalty (the
      training split's stimulus-carved folds), or None (random folds).

  Returns:
    kernel (D, H * W * C) and bias (H * W * C,), float32: pixels = A(r) @ kernel + bias.
  """
  # The principal-component scores of the responses z-scored as `ridge.standardizer` z-scores
  # (the adapter divides by the std with n - 1, the standardizer with n). Ridge on them, centred
  # but not rescaled, is ridge on those z-scored responses (the components are orthonormal), and
  # costs k rather than U columns.
  signal = np.asarray(signal, np.float64)
  n = signal.shape[0]
  to_scores = np.asarray(sqrt_eig, np.float64) * np.sqrt(n / max(n - 1, 1))
  fitted = ridge.fit_ridge(signal * to_scores, images, refit_on_val=False, fold_ids=fold_ids,
                           scale_inputs=False)
  weights = to_scores[:, None] * fitted.coef
  bias = fitted.y_mean - fitted.x_mean @ fitted.coef
  kernel = np.zeros((dim, weights.shape[1]))
  kernel[:weights.shape[0]] = weights
  return kernel.astype(np.float32), bias.astype(np.float32)


def fit_encoder(images: np.ndarray, signal: np.ndarray, sqrt_eig: np.ndarray, dim: int,
                fold_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The encoder's pixel map into an adapter's coordinates, fitted on training pairs only.

  Args:
    images: (N, H, W, C) the training stimuli.
    signal: (N, k) an adapter's signal coordinates A(r)[:, :k] of their responses.
    sqrt_eig: (k,) the adapter's standard deviation along each principal component.
    dim: the adapter's output size; the kernel's columns past k (the padding) are zero.
    fold_ids: (N,) the folds of the cross-validation that chooses the ridge penalty, or None.

  Returns:
    kernel (H * W * C, dim) and bias (dim,), float32: A(r) predicted as x.reshape(N, -1) @ kernel
    + bias, so that A^-1 of it is the ridge baseline's encoding restricted to the k components.
  """
  signal = np.asarray(signal, np.float64)
  n, k = signal.shape
  to_scores = np.asarray(sqrt_eig, np.float64) * np.sqrt(n / max(n - 1, 1))
  x = np.asarray(images, np.float64).reshape(n, -1)
  # Every score alike in the penalty's choice: their summed squared error is that of the z-scored
  # responses, which the ridge baseline's choice weighs alike.
  fitted = ridge.fit_ridge(x, signal * to_scores, refit_on_val=False, fold_ids=fold_ids,
                           target_scale=1.0)
  weights = fitted.coef / fitted.x_std[:, None] / to_scores
  kernel = np.zeros((x.shape[1], dim))
  kernel[:, :k] = weights
  bias = np.zeros(dim)
  bias[:k] = (fitted.y_mean - (fitted.x_mean / fitted.x_std) @ fitted.coef) / to_scores
  return kernel.astype(np.float32), bias.astype(np.float32)


def encoder_scores(flow: Any, pixels: Any, responses: Any,
                   weights: tuple[float, ...] = WEIGHTS) -> np.ndarray:
  """(len(weights),) mean per-unit PCC over these stimuli of each candidate blend of two response
  predictions (M, U): the flow's A^-1(f(h)) and the pixel map's P^-1(x Q + c)."""
  return np.array([float(jnp.mean(_unit_pcc(jnp.asarray(blend(flow, pixels, w), jnp.float32),
                                            jnp.asarray(responses, jnp.float32))))
                   for w in weights])


@jax.jit
def _unit_pcc(pred: jax.Array, target: jax.Array) -> jax.Array:
  return ops.pearson(pred, target, axis=0)


def blend(autoencoded: Any, pixels: Any, weight: Any) -> Any:
  """(1 - w) autoencoded + w pixels, for numpy or jax arrays of one shape."""
  return (1.0 - weight) * autoencoded + weight * pixels


def image_scores(decoded: Any, images: Any) -> np.ndarray:
  """(M,) per-image PCC + SSIM of decoded images against the stimuli: `evaluation.metrics`'
  per-image scores, from `ops`."""
  return np.asarray(_image_scores(jnp.asarray(decoded, jnp.float32),
                                  jnp.asarray(images, jnp.float32)), np.float64)


@jax.jit
def _image_scores(decoded: jax.Array, images: jax.Array) -> jax.Array:
  n = images.shape[0]
  return (ops.pearson(decoded.reshape(n, -1), images.reshape(n, -1), axis=1)
          + ops.ssim(decoded, images))


def candidate_scores(autoencoded: Any, pixels: Any, images: Any,
                     weights: tuple[float, ...] = WEIGHTS) -> np.ndarray:
  """Per-image decoding scores (`image_scores`) of each candidate blend on held-out pairs.

  Args:
    autoencoded: (M, H, W, C) the flow's decoding through G of the held-out responses.
    pixels: (M, H, W, C) the pixel map's decoding of them, clipped to [0, 1].
    images: (M, H, W, C) the held-out stimuli.
    weights: the candidate w.

  Returns:
    (len(weights), M) scores; a cross-validation concatenates its folds along the second axis
    and passes the result to `choose`.
  """
  g, p = np.asarray(autoencoded, np.float32), np.asarray(pixels, np.float32)
  return np.stack([image_scores(blend(g, p, w), images) for w in weights])


def choose(scores: np.ndarray, weights: tuple[float, ...] = WEIGHTS) -> float:
  """The weight of the best mean score over axis 1 (the smallest such weight on a tie)."""
  means = np.asarray(scores, np.float64).mean(axis=1)
  return float(weights[int(np.argmax(means))])


__all__ = ['COMPONENTS', 'WEIGHTS', 'Maps', 'blend', 'candidate_scores', 'choose', 'components',
           'encoder_scores', 'fit', 'fit_encoder', 'fit_maps', 'image_scores']
