"""The neural adapter A: a fixed affine map from responses (N, U) to R^D, fitted on the training
responses only (z-score per unit, PCA to k = min(D, rank) whitened components, padding to D).
"""

from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ARRAY_NAMES = ('mean', 'scale', 'components', 'sqrt_eig')
# Exact (Gram eigendecomposition) when the short side of the responses is at most this long: a
# few power iterations cost about 500 N U flops, the Gram matrix N U min(N, U) plus its eigh.
EXACT_MAX_SIDE = 512
_POWER_TOL, _POWER_MAX_ITERS = 1e-4, 12


def principal_axes(z: np.ndarray, count: int,
                   method: str = 'auto') -> tuple[np.ndarray, np.ndarray]:
  """Singular values and the top `count` right singular vectors of z (N, U), without a full SVD.

  'gram' (exact): the eigendecomposition of the Gram matrix of the short side, z^T z (U, U) when
  U <= N, else z z^T (N, N) with the axes recovered as z^T u / s; O(N U min(N, U)).
  'randomized': a randomized SVD (Halko, Martinsson and Tropp 2011) of the top l = 2 count + 10
  axes, in float32, with power iterations (Rayleigh-Ritz) until the top `count` singular values
  move by less than 1e-4 (relative), at most 12; O(N U l) per iteration. It returns only the top
  l values, which is all that k = min(D, rank) needs. 'auto' is exact when min(N, U) <=
  max(EXACT_MAX_SIDE, 2 l), else randomized (docs/performance.md has its cost curve).

  Args:
    z: the centred, z-scored training responses (float64 for the exact path).
    count: how many axes are needed (the adapter's D).
    method: 'auto', 'gram' or 'randomized'.

  Returns:
    s: singular values, descending (all min(N, U) of them, or the top l).
    vt: (min(count, len(s)), U) right singular vectors, one per row, the largest first, each
      signed so that its largest entry is positive.
  """
  n, u = z.shape
  short = min(n, u)
  width = min(short, 2 * count + 10)  # the oversampling makes a few power iterations enough
  if method == 'auto':
    method = 'gram' if short <= max(EXACT_MAX_SIDE, 2 * width) else 'randomized'
  if method == 'gram':
    s, vt = _gram_axes(z, count)
  elif method == 'randomized':
    s, vt = _randomized_axes(z, count, width)
  else:
    raise ValueError(f"method must be 'auto', 'gram' or 'randomized', "
                     f'got {method!r}')
  # One sign per axis whatever the method: its largest entry is positive.
  signs = np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])
  return s, vt * np.where(signs == 0, 1.0, signs)[:, None]


def _gram_axes(z: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
  n, u = z.shape
  short_side_is_units = u <= n
  gram = z.T @ z if short_side_is_units else z @ z.T
  eig, vectors = np.linalg.eigh(gram)  # ascending
  eig, vectors = eig[::-1], vectors[:, ::-1]
  s = np.sqrt(np.maximum(eig, 0.0))
  top = min(count, s.size)
  if short_side_is_units:
    return s, vectors[:, :top].T
  # Right axes from left ones: v = z^T u / s (rows past the rank are never used: k <= rank).
  safe = np.where(s[:top] > 0, s[:top], 1.0)
  return s, (z.T @ vectors[:, :top] / safe).T


def _randomized_axes(z: np.ndarray, count: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  z32 = z.astype(np.float32, copy=False)
  probe = np.random.default_rng(0).standard_normal((z.shape[1], width), dtype=np.float32)
  left, _ = _orthonormal(z32 @ probe)
  previous = None
  for _ in range(_POWER_MAX_ITERS):
    right, s = _orthonormal(z32.T @ left)  # Ritz axes and values of z on the left subspace
    top = min(count, s.size)
    if previous is not None and previous.size >= top and np.max(
        np.abs(s[:top] - previous[:top]) / s[:top]) < _POWER_TOL:
      break
    previous = s
    left, _ = _orthonormal(z32 @ right)
  return s, right[:, :min(count, s.size)].T


def _orthonormal(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """An orthonormal basis of y's columns (m, r), ordered by their singular values (r,), which it
  also returns; directions below 1e-5 of the largest are dropped. Through the small Gram matrix
  (float64) rather than a QR of the tall y, which LAPACK runs far slower here."""
  y64 = y.astype(np.float64)
  eig, vectors = np.linalg.eigh(y64.T @ y64)
  eig, vectors = eig[::-1], vectors[:, ::-1]
  keep = eig > eig[0] * 1e-10
  s = np.sqrt(eig[keep])
  return (y64 @ (vectors[:, keep] / s)).astype(y.dtype), s


@flax.struct.dataclass
class Adapter:
  """A(r) = [((r - mean) / scale) @ components / sqrt_eig, padding] in R^D.

  The first k coordinates are the whitened principal components of the z-scored training
  responses (identity covariance on the training set); the last D - k are padding (zeros, or
  N(0, 1) noise in training). A^-1(a) = (a[:, :k] * sqrt_eig) @ components^T * scale + mean, exact
  on A's range: A(A^-1(a)) = a on the signal coordinates, and A^-1(A(r)) = r for r in the span
  of the training responses.

  Attributes:
    mean: (U,) per-unit training mean.
    scale: (U,) per-unit training standard deviation (1 for units with zero variance).
    components: (U, k) orthonormal principal axes of the z-scored training responses.
    sqrt_eig: (k,) standard deviation along each axis.
    dim: D, the output size (static).
    k: the number of signal coordinates (static).
  """
  mean: Array
  scale: Array
  components: Array
  sqrt_eig: Array
  dim: int = flax.struct.field(pytree_node=False)
  k: int = flax.struct.field(pytree_node=False)

  @property
  def num_units(self) -> int:
    """U, the number of recorded units."""
    return int(self.mean.shape[0])

  @classmethod
  def fit(cls, responses: Any, dim: int, max_components: int = 0) -> 'Adapter':
    """Fits the adapter on training responses (N, U); never pass validation or test responses.

    Units with zero variance get scale 1 (they carry no signal). k = min(dim, numerical rank of
    the centred, z-scored responses), the rank at float32 precision; `max_components` > 0 caps
    k further, so that the flow routes what the responses cannot predict into the padding. The
    axes come from `principal_axes`: exact on small data, a randomized SVD of the top axes only
    on large data (e.g. 9000 pairs x 15000 voxels), never a full SVD.

    Raises:
      ValueError: responses are not a finite (N, U) array with N >= 2, or carry no variance.
    """
    r = np.array(responses, dtype=np.float64)  # a copy: centred and scaled in place below
    if r.ndim != 2 or r.shape[0] < 2:
      raise ValueError(
          'Adapter.fit expects training responses of shape (N, U) '
          f'with N >= 2, got {r.shape}')
    if not np.all(np.isfinite(r)):
      raise ValueError('Adapter.fit got responses with NaN or Inf')
    if dim < 1:
      raise ValueError(f'dim must be >= 1, got {dim}')
    n, u = r.shape
    tiny = np.finfo(np.float32).eps * max(1.0, float(r.max()), -float(r.min()))
    mean = r.mean(axis=0)
    r -= mean  # in place, so that at most one (N, U) float64 array is alive
    std = np.sqrt(np.einsum('ij,ij->j', r, r) / (n - 1))
    scale = np.where(std > tiny, std, 1.0)
    r /= scale
    s, vt = principal_axes(r, dim)
    tol = (s[0] if s.size else 0.0) * max(n, u) * np.finfo(np.float32).eps
    rank = int(np.sum(s > tol))
    if rank == 0:
      raise ValueError('Adapter.fit got responses with no variance')
    k = min(dim, rank, max_components or dim)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return cls(mean=f32(mean), scale=f32(scale), components=f32(vt[:k].T),
               sqrt_eig=f32(s[:k] / np.sqrt(n - 1)), dim=int(dim), k=k)

  def _check_responses(self, r: Array) -> None:
    if r.ndim != 2 or r.shape[1] != self.num_units:
      raise ValueError(
          f'the adapter expects responses of shape (N, '
          f'{self.num_units}), got {tuple(r.shape)}')

  def forward(self, r: Array, pad: str = 'zeros', rng: Array | None = None) -> Array:
    """A(r): responses (N, U) -> (N, D); `pad` fills the D - k padding coordinates.

    Args:
      r: responses in the data's own units.
      pad: 'zeros', or 'noise' (N(0, 1) samples drawn with `rng`).
      rng: a PRNG key, needed when pad == 'noise' and k < D.
    """
    self._check_responses(r)
    signal = ((r - self.mean) / self.scale) @ self.components / self.sqrt_eig
    n_pad = self.dim - self.k
    if n_pad == 0:
      return signal
    if pad == 'zeros':
      padding = jnp.zeros((r.shape[0], n_pad), signal.dtype)
    elif pad == 'noise':
      if rng is None:
        raise ValueError("pad='noise' needs an rng key")
      padding = jax.random.normal(rng, (r.shape[0], n_pad), signal.dtype)
    else:
      raise ValueError(f"pad must be 'zeros' or 'noise', got {pad!r}")
    return jnp.concatenate([signal, padding], axis=-1)

  def inverse(self, a: Array) -> Array:
    """A^-1(a): (N, D) -> responses (N, U), from the first k coordinates (padding is ignored)."""
    if a.ndim != 2 or a.shape[1] != self.dim:
      raise ValueError(
          f'the adapter inverse expects (N, {self.dim}), '
          f'got {tuple(a.shape)}')
    z = (a[:, :self.k] * self.sqrt_eig) @ self.components.T
    return z * self.scale + self.mean

  @property
  def signal_mask(self) -> Array:
    """(D,) float mask, 1 on the k signal coordinates and 0 on the padding."""
    return (jnp.arange(self.dim) < self.k).astype(jnp.float32)

  def arrays(self) -> dict[str, Array]:
    """The four arrays only (the model's `adapter` variable collection)."""
    return {name: getattr(self, name) for name in ARRAY_NAMES}

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, Any], dim: int) -> 'Adapter':
    """Rebuilds an adapter from `arrays()` output (k comes from the shapes) and D."""
    missing = [name for name in ARRAY_NAMES if name not in arrays]
    if missing:
      raise ValueError(f'the adapter arrays lack {missing}')
    k = int(np.shape(arrays['sqrt_eig'])[0])
    if k > dim:
      raise ValueError(f'the adapter has k={k} > dim={dim}')
    return cls(**{name: jnp.asarray(arrays[name]) for name in ARRAY_NAMES}, dim=int(dim), k=k)
