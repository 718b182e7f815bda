"""The FLIG model: the Linen module (autoencoder + flow + adapter + feature statistics), the
numpy-friendly `Model` that notebooks and tools use, and `save` / `load` of checkpoints.

  encode: r_hat = A^-1(f((E(x) - mean) / std))
  decode: x_hat = G(f^-1(A(r)) * std + mean)
          (with the pixel path: (1 - w) times that + w clip(A(r) P + b), `pixel_path`)

With the augmented flow (the default) f acts on [h, e_h] -> [a, e_a] and the noise coordinates are
zero at inference: encode reads the first D outputs of f([h, 0]), decode the first D of
f^-1([A(r), 0]).
"""

import dataclasses
import os
import warnings
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flig_jax import checkpoint_recovery, checkpointing, pixel_path
from flig_jax.nn import compiled, precision
from flig_jax.nn.adapter import ARRAY_NAMES, Adapter
from flig_jax.nn.autoencoder import Autoencoder
from flig_jax.nn.flow import FLOW_TYPES

Array = jax.Array
Variables = dict[str, Any]
CHUNK = 256
_STD_FLOOR = 1e-6


class FLIG(nn.Module):
  """FLIG as a Linen module; a pure function of (variables, inputs).

  Variables: `params` {'autoencoder', 'flow'}; `stats` {'feature_mean', 'feature_std'} (D,), the
  standardisation of the features (h = (E(x) - mean) / std) set from training features after
  stage 1; `adapter` {'mean', 'scale', 'components', 'sqrt_eig'}, the Adapter's arrays (k comes
  from their shapes); optionally `pixel_path` {'kernel' (D, H*W*C), 'bias', 'weight' ()}, the
  decoder's blend with a linear pixel map (`flig_jax.pixel_path`; decoding uses it when present).
  Build them with `Frozen.variables`.

  `dtype` is the compute dtype of the autoencoder's layers and the couplings' conditioners (e.g.
  bfloat16, `config.model.dtype`; None: that of the inputs and parameters). Parameters are float32
  and every output (features, images, flow vectors, log-dets) has the dtype of the inputs.
  """
  image_shape: tuple[int, int, int]
  feature_dim: int
  cae_widths: tuple[int, ...] = (32, 64)
  flow_blocks: int = 4
  flow_hidden: int = 128
  coupling: str = 'affine'
  spline_bins: int = 8
  spline_range: float = 4.0
  flow_type: str = 'augmented'
  dtype: Any = None

  @classmethod
  def from_config(cls, model_config: ml_collections.ConfigDict,
                  image_shape: tuple[int, int, int]) -> 'FLIG':
    """The module for `config.model` and images of shape (H, W, C)."""
    c = model_config
    return cls(image_shape=tuple(int(s) for s in image_shape),
               feature_dim=int(c.feature_dim), cae_widths=tuple(int(w) for w in c.cae_widths),
               flow_blocks=int(c.flow_blocks), flow_hidden=int(c.flow_hidden),
               coupling=str(c.coupling), spline_bins=int(c.spline_bins),
               spline_range=float(c.spline_range),
               flow_type=str(c.get('flow_type', 'plain')),  # runs saved before the option: plain
               dtype=precision.compute_dtype(str(c.get('dtype', 'float32'))))

  def setup(self):
    self.autoencoder = Autoencoder(tuple(self.image_shape), self.feature_dim,
                                   tuple(self.cae_widths), dtype=self.dtype)
    if self.flow_type not in FLOW_TYPES:
      raise ValueError(f'unknown model.flow_type {self.flow_type!r}; use one of '
                       f'{tuple(FLOW_TYPES)}')
    self.flow = FLOW_TYPES[self.flow_type](self.feature_dim, self.flow_blocks, self.flow_hidden,
                                           self.coupling, self.spline_bins, self.spline_range,
                                           dtype=self.dtype)

  # --- the fixed parts, read from the `stats` and `adapter` collections ---

  def _get(self, collection: str, name: str) -> Array:
    value = self.get_variable(collection, name)
    if value is None:
      raise ValueError(f"the FLIG variables lack '{collection}/{name}'; build them with "
                       'Frozen.variables')
    return value

  def adapter(self) -> Adapter:
    """The Adapter held in the `adapter` collection."""
    return Adapter.from_arrays({n: self._get('adapter', n) for n in ARRAY_NAMES},
                               dim=self.feature_dim)

  def standardise(self, h_raw: Array) -> Array:
    """(E(x) - mean) / std."""
    return (h_raw - self._get('stats', 'feature_mean')) / self._get('stats', 'feature_std')

  def unstandardise(self, h: Array) -> Array:
    """h * std + mean, back to the autoencoder's feature space."""
    return h * self._get('stats', 'feature_std') + self._get('stats', 'feature_mean')

  # --- the pieces ---

  def features(self, x: Array) -> Array:
    """E(x), raw features (N, D)."""
    return self.autoencoder.encode(x)

  def decode_features(self, h_raw: Array) -> Array:
    """G(h) for raw features (N, D) -> images (N, H, W, C)."""
    return self.autoencoder.decode(h_raw)

  def reconstruct(self, x: Array) -> Array:
    """G(E(x))."""
    return self.autoencoder(x)

  def flow_forward(self, x: Array) -> tuple[Array, Array]:
    """f(x) and log|det df/dx|: (N, S) and (N,), S = D (plain) or 2D (augmented)."""
    return self.flow.forward(x)

  def flow_inverse(self, y: Array) -> tuple[Array, Array]:
    """f^-1(y) and log|det df^-1/dy|: (N, S) and (N,)."""
    return self.flow.inverse(y)

  def augment(self, v: Array, noise: Array | None = None) -> Array:
    """[v, noise] (zeros when None) for the augmented flow; v itself for the plain one."""
    if self.flow_type != 'augmented':
      return v
    return jnp.concatenate([v, jnp.zeros_like(v) if noise is None else noise], axis=-1)

  def head(self, y: Array) -> Array:
    """The first D coordinates of an (augmented) flow vector: features or adapted responses."""
    return y[..., :self.feature_dim]

  def encode_standardised(self, h: Array) -> Array:
    """f([h, 0]) read on the response side: standardised features -> adapted responses (N, D)."""
    return self.head(self.flow_forward(self.augment(h))[0])

  def decode_adapted(self, a: Array) -> Array:
    """f^-1([a, 0]) read on the feature side: adapted responses -> standardised features."""
    return self.head(self.flow_inverse(self.augment(a))[0])

  def latent(self, x: Array) -> Array:
    """The encoder's prediction in the adapter's space, images -> (N, D)."""
    return self.encode_standardised(self.standardise(self.features(x)))

  # --- the two directions ---

  def encode(self, x: Array) -> Array:
    """A^-1(f(standardise(E(x)))): images (N, H, W, C) -> responses (N, U)."""
    return self.adapter().inverse(self.latent(x))

  def pixel_decode(self, a: Array) -> Array:
    """The pixel path's linear map: clip(a P + b, 0, 1), adapted responses -> images."""
    pixels = a @ self._get('pixel_path', 'kernel') + self._get('pixel_path', 'bias')
    return jnp.clip(pixels, 0.0, 1.0).reshape((a.shape[0],) + tuple(self.image_shape))

  def decode_images(self, a: Array) -> Array:
    """Adapted responses (N, D) -> images: G(unstandardise(f^-1(a))), blended with the pixel
    path's map by its weight when the model has one."""
    images = self.decode_features(self.unstandardise(self.decode_adapted(a)))
    if not self.has_variable('pixel_path', 'weight'):
      return images
    return pixel_path.blend(images, self.pixel_decode(a).astype(images.dtype),
                            self._get('pixel_path', 'weight').astype(images.dtype))

  def decode(self, r: Array, pad: str = 'zeros', rng: Array | None = None) -> Array:
    """G(unstandardise(f^-1(A(r)))) (blended with the pixel path when there is one): responses
    (N, U) -> images (N, H, W, C) in [0, 1]."""
    return self.decode_images(self.adapter().forward(r, pad=pad, rng=rng))

  def roundtrip(self, x: Array) -> Array:
    """G(unstandardise(f^-1(f(standardise(E(x)))))) on the whole (augmented) vector, which must
    equal G(E(x))."""
    y = self.flow_forward(self.augment(self.standardise(self.features(x))))[0]
    return self.decode_features(self.unstandardise(self.head(self.flow_inverse(y)[0])))

  def __call__(self, x: Array) -> Array:
    return self.encode(x)

  @nn.nowrap
  def init_autoencoder(self, rng: Array, images: Array) -> Any:
    """Fresh autoencoder parameters for images (N, H, W, C)."""
    return self.init(rng, images, method=FLIG.reconstruct)['params']['autoencoder']

  @nn.nowrap
  def init_flow(self, rng: Array, h: Array) -> Any:
    """Fresh flow parameters; ActNorm's data-dependent start sees standardised features h (N, D),
    N >= 2. Each coupling starts as the identity."""
    return self.init(rng, h, method=FLIG.encode_standardised)['params']['flow']


@flax.struct.dataclass
class Frozen:
  """Every FLIG variable except the flow: what stage 2 reads and never trains.

  Attributes:
    autoencoder: the trained stage-1 parameters of E and G.
    feature_mean: (D,) mean of the raw training features E(x).
    feature_std: (D,) their standard deviation (floored at 1e-6).
    adapter: the Adapter fitted on the training responses.
    pixel_kernel: (D, H * W * C) the pixel path's map (`flig_jax.pixel_path`), or None.
    pixel_bias: (H * W * C,) its bias, or None.
    pixel_weight: () the blend's weight w, or None.
  """
  autoencoder: Any
  feature_mean: Array
  feature_std: Array
  adapter: Adapter
  pixel_kernel: Array | None = None
  pixel_bias: Array | None = None
  pixel_weight: Array | None = None

  @classmethod
  def fit(cls, autoencoder: Any, features: Any, adapter: Adapter) -> 'Frozen':
    """The frozen parts for trained autoencoder parameters, their raw training features (N, D)
    and a fitted adapter."""
    h = jnp.asarray(features, jnp.float32)
    if adapter.dim != h.shape[-1]:
      raise ValueError(f'the adapter maps to {adapter.dim} dimensions but the features have '
                       f'{h.shape[-1]}')
    return cls(autoencoder=autoencoder, feature_mean=h.mean(axis=0),
               feature_std=jnp.maximum(h.std(axis=0), _STD_FLOOR), adapter=adapter)

  @property
  def signal_mask(self) -> Array:
    """(D,) 1 on the adapter's k signal coordinates, 0 on its padding."""
    return self.adapter.signal_mask

  def variables(self, flow: Any) -> Variables:
    """The FLIG variables with these frozen parts and the flow parameters `flow`."""
    variables = {'params': {'autoencoder': self.autoencoder, 'flow': flow},
                 'stats': {'feature_mean': self.feature_mean, 'feature_std': self.feature_std},
                 'adapter': self.adapter.arrays()}
    if self.pixel_kernel is not None:
      variables['pixel_path'] = {'kernel': self.pixel_kernel, 'bias': self.pixel_bias,
                                 'weight': self.pixel_weight}
    return variables


def map_in_chunks(fn: Callable[[np.ndarray], Any], x: np.ndarray,
                  chunk: int = CHUNK) -> np.ndarray:
  """`fn` over the rows of `x` (N >= 1) in chunks of at most `chunk` rows, each padded to a power
  of two by repeating its last row, so a jitted `fn` compiles for a few shapes only."""
  outs = []
  for start in range(0, x.shape[0], chunk):
    part = x[start:start + chunk]
    n = part.shape[0]
    size = min(chunk, 1 << max(0, (n - 1).bit_length()))
    if size > n:
      part = np.concatenate([part, np.repeat(part[-1:], size - n, axis=0)])
    outs.append(np.asarray(fn(part))[:n])
  return np.concatenate(outs)


def _check_finite(x: np.ndarray, where: str, what: str) -> None:
  if not np.all(np.isfinite(x)):
    rows = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    raise ValueError(f'{where} got {what} with NaN or Inf (in {len(rows)} '
                     f'row(s), first row {rows[0]})')


class Model:
  """A trained FLIG for numpy users: `encode`, `decode`, `features`, `reconstruct`.

  Each method is jit-compiled once per batch bucket and runs in chunks of `chunk` rows, so any N
  works; inputs and outputs are numpy float32. Images are (N, H, W, C) (or (N, H, W) for one
  channel), floats in [0, 1] or uint8 0-255; other integer types in 0-255 are converted with a
  warning. Floats outside [0, 1], integers outside 0-255, and NaN or Inf in any input raise
  ValueError.

  Attributes:
    config: the run's ml_collections.ConfigDict.
    variables: the FLIG variables.
    meta: the checkpoint's `checkpointing.Meta` (needs `image_shape`).
    module: the FLIG Linen module.
  """

  def __init__(self, config: ml_collections.ConfigDict, variables: Variables,
               meta: checkpointing.Meta, chunk: int = CHUNK):
    if meta.image_shape is None:
      raise ValueError('Model needs meta.image_shape (H, W, C)')
    self.config = config
    self.variables = variables
    self.meta = meta
    self.chunk = int(chunk)
    self.module = FLIG.from_config(config.model, tuple(meta.image_shape))

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C)."""
    return tuple(self.module.image_shape)

  @property
  def num_units(self) -> int:
    """U, the number of response units."""
    return int(self.variables['adapter']['mean'].shape[0])

  @property
  def adapter(self) -> Adapter:
    """The fitted Adapter."""
    return Adapter.from_arrays(self.variables['adapter'], dim=self.module.feature_dim)

  def _run(self, name: str, x: np.ndarray) -> np.ndarray:
    fn = compiled.apply(self.module, name)
    if x.shape[0] == 0:
      out = jax.eval_shape(fn, self.variables, jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype))
      return np.zeros((0,) + out.shape[1:], out.dtype)
    return map_in_chunks(lambda part: fn(self.variables, part), x, self.chunk)

  def __repr__(self) -> str:
    meta = self.meta
    state = 'finished' if meta.finished else 'unfinished'
    return (f'Model({meta.dataset or "?"}: images {self.image_shape} <-> {self.num_units} '
            f'units, D={self.module.feature_dim}, {self.module.flow_blocks} flow blocks; '
            f'checkpoint step {meta.step}, {state})')

  def _images(self, images: Any, where: str) -> np.ndarray:
    """(N, H, W, C) float32 in [0, 1] from floats in [0, 1] or integers 0-255 (uint8 silently,
    other integer types with a warning); anything else raises ValueError."""
    x = np.asarray(images)
    if x.ndim == 3 and self.image_shape[2] == 1:
      x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != self.image_shape:
      raise ValueError(
          f'{where} expects images of shape (N, '
          f'{", ".join(map(str, self.image_shape))}), got {np.shape(images)}')
    if x.dtype == np.uint8:
      return x.astype(np.float32) / 255.0
    if x.dtype == np.bool_:
      return x.astype(np.float32)
    lo, hi = (x.min(), x.max()) if x.size else (0, 0)
    if np.issubdtype(x.dtype, np.integer):
      if lo < 0 or hi > 255:
        raise ValueError(f'{where} got {x.dtype} images with values in '
                         f'[{lo}, {hi}]; pass floats in [0, 1] or uint8 0-255')
      warnings.warn(f'{where}: {x.dtype} images are read as 0-255 (divided by 255); pass uint8 or '
                    'floats in [0, 1] to silence this', stacklevel=3)
      return x.astype(np.float32) / 255.0
    if not np.issubdtype(x.dtype, np.floating):
      raise ValueError(f'{where} got images of dtype {x.dtype}; pass floats '
                       'in [0, 1] or uint8 0-255')
    _check_finite(x, where, 'images')
    if lo < 0 or hi > 1:
      raise ValueError(f'{where} expects float images in [0, 1], got values in '
                       f'[{lo:g}, {hi:g}] (images in 0-255: divide by 255 or pass uint8)')
    return x.astype(np.float32)

  def _responses(self, responses: Any, where: str) -> np.ndarray:
    r = np.asarray(responses, np.float32)
    if r.ndim != 2 or r.shape[1] != self.num_units:
      raise ValueError(
          f'{where} expects responses of shape (N, {self.num_units}), '
          f'got {np.shape(responses)}')
    _check_finite(r, where, 'responses')
    return r

  def encode(self, images: Any) -> np.ndarray:
    """Images (N, H, W, C) in [0, 1] (or uint8) -> predicted responses (N, U), data units."""
    return self._run('encode', self._images(images, 'encode'))

  def decode(self, responses: Any) -> np.ndarray:
    """Responses (N, U) -> images (N, H, W, C) in [0, 1] (padding coordinates set to zero)."""
    return self._run('decode', self._responses(responses, 'decode'))

  def features(self, images: Any) -> np.ndarray:
    """E(x), raw features (N, D)."""
    return self._run('features', self._images(images, 'features'))

  def reconstruct(self, images: Any) -> np.ndarray:
    """G(E(x)), (N, H, W, C)."""
    return self._run('reconstruct', self._images(images, 'reconstruct'))

  def roundtrip(self, images: Any) -> np.ndarray:
    """G(f^-1(f(E(x)))) through the standardisation; equals reconstruct up to float error."""
    return self._run('roundtrip', self._images(images, 'roundtrip'))

  def latent(self, images: Any) -> np.ndarray:
    """f(standardise(E(x))), (N, D), in the adapter's space."""
    return self._run('latent', self._images(images, 'latent'))

  def decode_features(self, features: Any) -> np.ndarray:
    """G(h) for raw features (N, D), e.g. features predicted by a baseline."""
    h = np.asarray(features, np.float32)
    d = self.module.feature_dim
    if h.ndim != 2 or h.shape[1] != d:
      raise ValueError(f'decode_features expects (N, {d}), got {h.shape}')
    _check_finite(h, 'decode_features', 'features')
    return self._run('decode_features', h)


def _check_meta(meta: checkpointing.Meta) -> None:
  for key in ('image_shape', 'num_units', 'adapter_k'):
    if getattr(meta, key) is None:
      raise ValueError(f"the checkpoint's meta lacks '{key}' (not written by flig_jax?)")


def abstract_frozen(module: FLIG, meta: checkpointing.Meta) -> Frozen:
  """Shapes and dtypes of the frozen parts for a module and a checkpoint's meta (`num_units`,
  `adapter_k`, `pixel_path`), from `jax.eval_shape`: a target to restore onto."""
  _check_meta(meta)
  u, k, d = meta.num_units, meta.adapter_k, module.feature_dim

  def build():
    adapter = Adapter(mean=jnp.zeros((u,)), scale=jnp.ones((u,)), components=jnp.zeros((u, k)),
                      sqrt_eig=jnp.ones((k,)), dim=d, k=k)
    images = jnp.zeros((1,) + tuple(module.image_shape))
    pixels = {}
    if meta.pixel_path:
      p = int(np.prod(module.image_shape))
      pixels = {'pixel_kernel': jnp.zeros((d, p)), 'pixel_bias': jnp.zeros((p,)),
                'pixel_weight': jnp.zeros(())}
    return Frozen(module.init_autoencoder(jax.random.key(0), images), jnp.zeros((d,)),
                  jnp.ones((d,)), adapter, **pixels)

  return jax.eval_shape(build)


def abstract_variables(config: ml_collections.ConfigDict, meta: checkpointing.Meta) -> Any:
  """Shapes and dtypes of the FLIG variables for a config and a checkpoint's meta (`image_shape`,
  `num_units`, `adapter_k`), from `jax.eval_shape`: the target to restore onto."""
  _check_meta(meta)
  module = FLIG.from_config(config.model, tuple(meta.image_shape))
  frozen = abstract_frozen(module, meta)
  flow = jax.eval_shape(module.init_flow, jax.random.key(0),
                        jax.ShapeDtypeStruct((2, module.feature_dim), jnp.float32))
  return frozen.variables(flow)


def model_meta(variables: Variables, image_shape: tuple[int, int, int],
               **fields: Any) -> checkpointing.Meta:
  """The meta `load` needs (image_shape, and num_units, adapter_k and pixel_path from the
  variables), with the other `fields` of `checkpointing.Meta` as given."""
  return checkpointing.Meta(image_shape=tuple(int(s) for s in image_shape),
                            num_units=int(variables['adapter']['mean'].shape[0]),
                            adapter_k=int(variables['adapter']['sqrt_eig'].shape[0]),
                            pixel_path='pixel_path' in variables, **fields)


def save(path: str | os.PathLike, config: ml_collections.ConfigDict, variables: Variables,
         meta: checkpointing.Meta, step: int) -> None:
  """Writes a checkpoint (items model, config, meta) at `<path>/checkpoints/<step>` and waits.

  `meta` must hold `image_shape`; `step`, and `num_units` and `adapter_k` from the variables,
  are written over its own.
  """
  if meta.image_shape is None:
    raise ValueError('save needs meta.image_shape (H, W, C)')
  shapes = model_meta(variables, meta.image_shape)
  full = dataclasses.replace(meta, step=int(step), num_units=shapes.num_units,
                             adapter_k=shapes.adapter_k,
                             pixel_path=shapes.pixel_path)
  mgr = checkpointing.manager(path)
  try:
    checkpointing.save(mgr, step, model=variables, config=config, meta=full, force=True)
    mgr.wait_until_finished()
  finally:
    mgr.close()


def _warn_skipped(step: int, reason: str) -> None:
  warnings.warn(f'checkpoint step {step} does not restore, skipped: {reason}', stacklevel=3)


def load(path: str | os.PathLike, step: int | None = None,
         skipped: Callable[[int, str], Any] = _warn_skipped) -> Model:
  """Loads a `Model` from a workdir (or its `checkpoints/` directory).

  Args:
    path: the run's workdir or its checkpoints directory.
    step: a saved step; when None, the newest step holding a `model` item that restores (each
      newer, damaged one is reported to `skipped`).
    skipped: called with (step, reason) for each damaged step passed over (default: a warning).

  Raises:
    FileNotFoundError: there is no checkpoint with a model at `path`.
    ValueError: the checkpoint at `step` (or every one) is damaged.
  """
  mgr = checkpointing.manager(path, read_only=True)
  try:
    steps = checkpoint_recovery.steps_holding(mgr.directory, 'model')
    if not steps:
      raise FileNotFoundError(f'no checkpoint with a model under {path}')
    if step is not None and int(step) not in steps:
      raise FileNotFoundError(
          f'no model at step {step} under {path} (steps: {steps})')
    reasons = []

    def restore(s: int) -> Model:  # the read is the check: each item read once, `state` never
      config = checkpointing.read_config(mgr, s)
      meta = checkpointing.read_meta(mgr, s)
      target = abstract_variables(config, meta)
      with checkpoint_recovery.reading('model'):
        variables = checkpointing.restore(mgr, s, 'model', target)
      return Model(config, variables, meta)

    found = checkpoint_recovery.first_that_restores(
        steps if step is None else [int(step)], restore,
        lambda s, why: (reasons.append(f'step {s}: {why}'), skipped(s, why)))
    if found is None:
      raise ValueError(f'no checkpoint under {path} restores; '
                       + '; '.join(reasons))
  finally:
    mgr.close()
  return found


__all__ = ['FLIG', 'Frozen', 'Model', 'abstract_frozen', 'abstract_variables', 'load',
           'map_in_chunks', 'model_meta', 'save']
