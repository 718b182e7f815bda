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
    k further, so that the flow routes what the responses cannot predict into the padding.

    Raises:
      ValueError: responses are not a finite (N, U) array with N >= 2, or carry no variance.
    """
    r = np.asarray(responses, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] < 2:
      raise ValueError(
          'flig_jax/nn/adapter.py: Adapter.fit expects training responses of shape (N, U) '
          f'with N >= 2, got {r.shape}')
    if not np.all(np.isfinite(r)):
      raise ValueError('flig_jax/nn/adapter.py: Adapter.fit got responses with NaN or Inf')
    if dim < 1:
      raise ValueError(f'flig_jax/nn/adapter.py: dim must be >= 1, got {dim}')
    n, u = r.shape
    mean = r.mean(axis=0)
    std = r.std(axis=0, ddof=1)
    tiny = np.finfo(np.float32).eps * max(1.0, float(np.abs(r).max()))
    scale = np.where(std > tiny, std, 1.0)
    z = (r - mean) / scale
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    tol = (s[0] if s.size else 0.0) * max(n, u) * np.finfo(np.float32).eps
    rank = int(np.sum(s > tol))
    if rank == 0:
      raise ValueError('flig_jax/nn/adapter.py: Adapter.fit got responses with no variance')
    k = min(dim, rank, max_components or dim)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return cls(mean=f32(mean), scale=f32(scale), components=f32(vt[:k].T),
               sqrt_eig=f32(s[:k] / np.sqrt(n - 1)), dim=int(dim), k=k)

  def _check_responses(self, r: Array) -> None:
    if r.ndim != 2 or r.shape[1] != self.num_units:
      raise ValueError(
          f'flig_jax/nn/adapter.py: the adapter expects responses of shape (N, '
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
        raise ValueError("flig_jax/nn/adapter.py: pad='noise' needs an rng key")
      padding = jax.random.normal(rng, (r.shape[0], n_pad), signal.dtype)
    else:
      raise ValueError(f"flig_jax/nn/adapter.py: pad must be 'zeros' or 'noise', got {pad!r}")
    return jnp.concatenate([signal, padding], axis=-1)

  def inverse(self, a: Array) -> Array:
    """A^-1(a): (N, D) -> responses (N, U), from the first k coordinates (padding is ignored)."""
    if a.ndim != 2 or a.shape[1] != self.dim:
      raise ValueError(
          f'flig_jax/nn/adapter.py: the adapter inverse expects (N, {self.dim}), '
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

  def to_dict(self) -> dict[str, Any]:
    """Plain numpy arrays plus the ints `dim` and `k`, for serialisation."""
    d: dict[str, Any] = {name: np.asarray(v) for name, v in self.arrays().items()}
    d.update(dim=self.dim, k=self.k)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], dim: int | None = None) -> 'Adapter':
    """Rebuilds an adapter from `to_dict()` or `arrays()` output (k comes from the shapes).

    Args:
      d: a mapping with the four arrays, and optionally `dim`.
      dim: D, needed when `d` has no `dim` entry.
    """
    missing = [name for name in ARRAY_NAMES if name not in d]
    if missing:
      raise ValueError(f'flig_jax/nn/adapter.py: adapter dict lacks {missing}')
    dim = int(d['dim']) if dim is None and 'dim' in d else dim
    if dim is None:
      raise ValueError('flig_jax/nn/adapter.py: from_dict needs dim (not in the dict)')
    k = int(np.shape(d['sqrt_eig'])[0])
    if k > dim:
      raise ValueError(f'flig_jax/nn/adapter.py: adapter has k={k} > dim={dim}')
    arrays = {name: jnp.asarray(d[name]) for name in ARRAY_NAMES}
    return cls(**arrays, dim=int(dim), k=k)
