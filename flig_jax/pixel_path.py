"""The decoder's pixel path: a linear map from the adapted responses straight to pixels, blended
with the autoencoder's reconstruction where validation says the blend decodes better.

  decode(r) = (1 - w) G(f^-1(A(r))) + w clip(A(r) P + b, 0, 1)

The autoencoder can only produce images like those it was trained on; on a small set with new
shapes at test time (a few hundred fMRI trials), pixel-space ridge regression decodes better than
anything routed through G. The map P, b is that ridge regression, the `ridge` baseline's: fitted on
the z-scored training responses that the adapter's k principal components hold (all of them when
k reaches the responses' rank), its penalty chosen by cross-validation over the training pairs,
then written as a map from A(r); it is computed on the k component scores (`fit`), so its cost
does not grow with the number of units. Fitted on the whitened coordinates A(r) instead, ridge
would shrink a component that carries a thousandth of the variance as little as the first, and
decode worse than the baseline (docs/stage2.md, the pixel path). The weight w comes
from the grid `WEIGHTS`, chosen on held-out pairs by the mean of per-image PCC + SSIM: a linear
map's images are blurred, which PCC alone would not count against it. w = 0 is the flow's decoder
alone, so a set where G suffices keeps it.

`candidate_scores` gives the per-stimulus scores of every candidate w, the quantity any selection
(one validation split, or folds of a cross-validation stacked along the stimulus axis) averages;
`choose` picks from them.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flig_jax import ops, ridge

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def fit(signal: np.ndarray, images: np.ndarray, sqrt_eig: np.ndarray, dim: int,
        fold_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The pixel map from adapted responses, fitted on training pairs only.

  Args:
    signal: (N, k) the adapter's signal coordinates A(r)[:, :k] of the training responses.
    images: (N, H, W, C) the training stimuli.
    sqrt_eig: (k,) the adapter's standard deviation along each principal component.
    dim: D, the adapter's output size; the kernel's rows past k (the padding) are zero.
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
  """The weight of the best mean score (the smallest such weight on a tie)."""
  means = np.asarray(scores, np.float64).mean(axis=1)
  return float(weights[int(np.argmax(means))])


__all__ = ['WEIGHTS', 'blend', 'candidate_scores', 'choose', 'fit', 'image_scores']
