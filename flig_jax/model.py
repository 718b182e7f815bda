"""A trained FLIG for numpy users: `Model` (encode, decode, features, reconstruct), and `load` /
`save` of its checkpoints. The Linen module it wraps is `nn.flig.FLIG`.
"""

import dataclasses
import os
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flig_jax import checkpoint_recovery, checkpointing
from flig_jax.nn import compiled
from flig_jax.nn.adapter import Adapter
from flig_jax.nn.flig import FLIG, Frozen, Variables

CHUNK = 256


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
  `adapter_k`, `pixel_path`, `pixel_adapter_k`), from `jax.eval_shape`: a target to restore onto."""
  _check_meta(meta)
  u, k, d = meta.num_units, meta.adapter_k, module.feature_dim

  def build():
    adapter = Adapter(mean=jnp.zeros((u,)), scale=jnp.ones((u,)), components=jnp.zeros((u, k)),
                      sqrt_eig=jnp.ones((k,)), dim=d, k=k)
    images = jnp.zeros((1,) + tuple(module.image_shape))
    pixels = {}
    if meta.pixel_path:
      p, m = int(np.prod(module.image_shape)), meta.pixel_adapter_k
      pixels = {'pixel_kernel': jnp.zeros((d if m is None else m, p)),
                'pixel_bias': jnp.zeros((p,)), 'pixel_weight': jnp.zeros(())}
      if m is not None:
        pixels.update(pixel_enc_kernel=jnp.zeros((p, m)), pixel_enc_bias=jnp.zeros((m,)),
                      pixel_enc_weight=jnp.zeros(()),
                      pixel_adapter=Adapter(mean=jnp.zeros((u,)), scale=jnp.ones((u,)),
                                            components=jnp.zeros((u, m)), sqrt_eig=jnp.ones((m,)),
                                            dim=m, k=m))
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
  """The meta `load` needs (image_shape, and num_units, adapter_k, pixel_path and pixel_adapter_k
  from the variables), with the other `fields` of `checkpointing.Meta` as given."""
  return checkpointing.Meta(image_shape=tuple(int(s) for s in image_shape),
                            num_units=int(variables['adapter']['mean'].shape[0]),
                            adapter_k=int(variables['adapter']['sqrt_eig'].shape[0]),
                            pixel_path='pixel_path' in variables,
                            pixel_adapter_k=(int(variables['pixel_adapter']['sqrt_eig'].shape[0])
                                             if 'pixel_adapter' in variables else None),
                            **fields)


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
                             pixel_path=shapes.pixel_path, pixel_adapter_k=shapes.pixel_adapter_k)
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
  path = os.path.expanduser(os.fspath(path))  # a notebook's '~/runs/x' as a shell would read it
  mgr = checkpointing.manager(path, read_only=True)
  try:
    steps = checkpoint_recovery.steps_holding(mgr.directory, 'model')
    if not steps:
      stage1 = checkpoint_recovery.steps_holding(mgr.directory)
      raise FileNotFoundError(
          f'no checkpoint with a model under {path}' + (
              f': steps {stage1} hold stage 1 only (a model is saved from stage 2 on); run '
              'train.py again with the same --workdir to finish training' if stage1 else ''))
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


__all__ = ['Model', 'abstract_frozen', 'abstract_variables', 'load', 'map_in_chunks',
           'model_meta', 'save']
