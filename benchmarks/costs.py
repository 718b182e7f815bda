"""What one point of a cost curve measures, in the child process that benchmarks/scaling.py starts
for it (its own compiles, its own peak memory): the training steps, the adapter fit and the model's
encode / decode at a given size. Every function returns a JSON-ready dict.

The steps and the model are built through the library's public pieces (`steps`, `FLIG`, `Adapter`)
on random inputs of the right shapes: a cost curve needs the sizes, not the data, except for the
training-pairs curve, which reads a synthetic NSD-sized set from disk (benchmarks/synthetic_nsd.py).
"""

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import synthetic_nsd, timing
from configs import default
from flig_jax.nn import compiled
from flig_jax.nn.adapter import Adapter
from flig_jax.nn.flig import FLIG, Frozen
from flig_jax.training import steps, train_state

WARMUP = 1


def memory() -> dict[str, float]:
  """Peak host memory of this process, and the device's own peak where it reports one (MiB)."""
  out = {'peak_host_mib': timing.peak_host_memory_mib()}
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    out['peak_device_mib'] = stats['peak_bytes_in_use'] / 2 ** 20
  return out


def device() -> str:
  d = jax.devices()[0]
  return f'{d.platform}:{d.device_kind}'


def _timed_steps(step: Any, state: Any, batches: list[Any]) -> dict[str, float]:
  """Compiles `step(state, batch)`, runs WARMUP steps, then times each remaining batch."""
  program, compile_s = timing.compile_timed(step, state, batches[0])
  times = []
  for i, batch in enumerate(batches):
    start = time.perf_counter()
    state, metrics = program(state, batch)
    jax.block_until_ready((state, metrics))
    if i >= WARMUP:
      times.append(time.perf_counter() - start)
  return {'compile_s': compile_s, 'step_s': float(np.median(times)),
          'loss': float(metrics['loss'])}


def _stage1(image_shape: tuple[int, int, int], config: Any) -> tuple[Any, Any, FLIG]:
  """The jitted stage-1 step (state donated) and a fresh state, as the training loop builds them."""
  model = FLIG.from_config(config.model, image_shape)
  state = train_state.create_stage1_state(jax.random.key(config.seed), config, model,
                                          jnp.zeros((1,) + image_shape))
  step = jax.jit(functools.partial(steps.stage1_step, model=model, cfg=config.stage1),
                 donate_argnums=0)
  return step, state, model


def stage1_images(size: int, channels: int, batch_size: int, count: int) -> dict:
  """Stage-1 step at (size, size, channels) images (the default config's autoencoder)."""
  config = default.get_config()
  shape = (size, size, channels)
  step, state, _ = _stage1(shape, config)
  rng = np.random.default_rng(0)
  batches = [{'images': jnp.asarray(rng.uniform(size=(batch_size,) + shape), jnp.float32)}
             for _ in range(WARMUP + count)]
  return {'size': size, 'channels': channels, 'pixels': size * size * channels,
          'batch_size': batch_size, **_timed_steps(step, state, batches), **memory()}


def _frozen(model: FLIG, adapter: Adapter, images: jax.Array) -> Frozen:
  """Fresh frozen parts for `model`: autoencoder, identity feature statistics and `adapter`."""
  d = adapter.dim
  return Frozen(autoencoder=model.init_autoencoder(jax.random.key(1), images),
                feature_mean=jnp.zeros(d), feature_std=jnp.ones(d), adapter=adapter)


def stage2_dim(dim: int, batch_size: int, count: int) -> dict:
  """Stage-2 step (flow and discriminator) at feature size D = `dim` (the default config)."""
  config = default.get_config()
  config.model.feature_dim = dim
  image_shape = (28, 28, 1)
  model = FLIG.from_config(config.model, image_shape)
  adapter = Adapter(mean=jnp.zeros(dim), scale=jnp.ones(dim), components=jnp.eye(dim),
                    sqrt_eig=jnp.ones(dim), dim=dim, k=dim)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(batch_size,) + image_shape), jnp.float32)
  batches = [{'features': jnp.asarray(rng.standard_normal((batch_size, dim)), jnp.float32),
              'adapted': jnp.asarray(rng.standard_normal((batch_size, dim)), jnp.float32),
              'images': images} for _ in range(WARMUP + count)]
  state = train_state.create_stage2_state(jax.random.key(0), config, model,
                                          _frozen(model, adapter, images), batches[0])
  step = jax.jit(functools.partial(steps.stage2_step, model=model, cfg=config.stage2),
                 donate_argnums=0)
  return {'dim': dim, 'batch_size': batch_size, **_timed_steps(step, state, batches), **memory()}


def _responses(n: int, units: int, rank: int = 64) -> np.ndarray:
  """(n, units) float32: a rank-`rank` signal plus as much independent noise, voxel-like."""
  rng = np.random.default_rng(0)
  latent = rng.standard_normal((n, rank), dtype=np.float32)
  out = latent @ (rng.standard_normal((rank, units), dtype=np.float32) / np.sqrt(rank))
  out += rng.standard_normal((n, units), dtype=np.float32)
  return out


def _full_svd_seconds(responses: np.ndarray) -> float:
  """The adapter fit before `principal_axes`: a full float64 SVD of the z-scored responses."""
  start = time.perf_counter()
  r = responses.astype(np.float64)
  z = (r - r.mean(axis=0)) / r.std(axis=0, ddof=1)
  np.linalg.svd(z, full_matrices=False)
  return time.perf_counter() - start


def _model_methods(image_shape: tuple[int, int, int], adapter: Adapter) -> tuple[Any, Any, Any]:
  """Jitted encode and decode of a fresh FLIG holding `adapter`, and its variables."""
  config = default.get_config()
  config.model.feature_dim = adapter.dim
  model = FLIG.from_config(config.model, image_shape)
  sample = jnp.zeros((2,) + image_shape)
  h = jax.random.normal(jax.random.key(2), (2, adapter.dim))
  variables = _frozen(model, adapter, sample).variables(model.init_flow(jax.random.key(0), h))
  return compiled.apply(model, 'encode'), compiled.apply(model, 'decode'), variables


def units(n: int, num_units: int, dim: int, batch_size: int, full_svd: bool) -> dict:
  """The adapter fit on (n, num_units) responses, and encode / decode of `batch_size` pairs."""
  responses = _responses(n, num_units)
  start = time.perf_counter()
  adapter = Adapter.fit(responses, dim)
  fit_s = time.perf_counter() - start
  out = {'n': n, 'units': num_units, 'dim': dim, 'fit_s': fit_s, 'k': adapter.k}
  if full_svd:
    out['full_svd_s'] = _full_svd_seconds(responses)
  del responses
  image_shape = (28, 28, 1)
  encode, decode, variables = _model_methods(image_shape, adapter)
  rng = np.random.default_rng(1)
  images = rng.uniform(size=(batch_size,) + image_shape).astype(np.float32)
  batch = rng.standard_normal((batch_size, num_units)).astype(np.float32)
  for name, fn, x in (('encode', encode, images), ('decode', decode, batch)):
    jax.block_until_ready(fn(variables, x))
    out[f'{name}_s'] = timing.median_seconds(lambda f=fn, x=x: f(variables, x), 5)
  return {**out, 'batch_size': batch_size, **memory()}


def write_pairs(data_dir: str, n: int, image_size: int, num_units: int) -> dict:
  """Writes the synthetic set of `n` pairs unless it is there already
  (benchmarks/synthetic_nsd.py)."""
  _, write_s = synthetic_nsd.prepare(data_dir, n, image_size, num_units)
  return {'write_s': write_s}


def pairs(data_dir: str, n: int, image_size: int, num_units: int, dim: int, batch_size: int,
          count: int) -> dict:
  """Training on `n` pairs read from array_record through grain: the stage-1 loop step (each batch
  read from disk, as a run would), one streamed pass of E(x) over all the images that gathers the
  responses, and the adapter fit on them. The images are never all in memory."""
  source, _ = synthetic_nsd.prepare(data_dir, n, image_size, num_units)
  config = default.get_config()
  config.model.feature_dim = dim
  shape = source.image_shape
  step, state, model = _stage1(shape, config)
  train = synthetic_nsd.batches(source, batch_size)
  first = {'images': jnp.asarray(train[0]['image'])}
  program, compile_s = timing.compile_timed(step, state, first)
  state, _ = program(state, first)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for i in range(1, count + 1):
    state, metrics = program(state, {'images': jnp.asarray(train[i % len(train)]['image'])})
  jax.block_until_ready((state, metrics))
  loop_step_s = (time.perf_counter() - start) / count
  read_s = timing.median_seconds(lambda: train[1]['image'], 5)

  features = compiled.apply(model, 'features')
  chunks = synthetic_nsd.batches(source, 256, shuffle_seed=None)
  responses = np.empty((n, num_units), np.float32)
  start = time.perf_counter()
  h = []
  for i in range(len(chunks)):
    chunk = chunks[i]
    rows = slice(256 * i, 256 * i + len(chunk['response']))
    responses[rows] = chunk['response']
    h.append(np.asarray(features({'params': {'autoencoder': state.params}}, chunk['image'])))
  features_s = time.perf_counter() - start
  start = time.perf_counter()
  Adapter.fit(responses, dim)
  fit_s = time.perf_counter() - start
  return {'n': n, 'image_size': image_size, 'units': num_units, 'batch_size': batch_size,
          'compile_s': compile_s, 'loop_step_s': loop_step_s, 'read_s': read_s,
          'features_s': features_s, 'fit_s': fit_s, 'loss': float(metrics['loss']), **memory()}
