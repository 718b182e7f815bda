"""What one benchmark child process measures, on the devices it was started with: the training
steps of both stages, evaluation, and the decode/encode throughput of a loaded model.

Each function returns a JSON-ready dict; bench.py runs them in fresh processes (so compile times are
cold, peak memory is per config, and the fake device count can differ) and prints the tables.
"""

import dataclasses
import importlib
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from benchmarks import timing
from flig_jax import model as model_lib
from flig_jax.training import context, loop, parallel

WARMUP = 2


def load_config(spec: str) -> Any:
  """The config of configs/<name>.py for `name` or `name:arg` (e.g. `fmri`, `fmri:smoke`)."""
  name, _, arg = spec.partition(':')
  try:
    module = importlib.import_module(f'configs.{name}')
  except ModuleNotFoundError as e:
    raise ValueError(f'benchmarks/measure.py: no config configs/{name}.py') from e
  return module.get_config(arg)


def _device_batches(stage: Any, mesh: Any, count: int) -> list[dict[str, jax.Array]]:
  return [parallel.global_batch(stage.stream.batch(i), mesh) for i in range(count)]


def bench_stage(stage: Any, mesh: Any, steps: int, machine_flops: float,
                fused: int = 0) -> tuple[Any, dict]:
  """Compiles a stage's step once (AOT) and times it; returns the final state and the figures.

  Figures: compile seconds; XLA FLOPs per step and their rate as a fraction of `machine_flops`;
  the median of `steps` steps each waited on (`step_s`); the mean step of a run that builds each
  batch on the host and waits only at the end, as the training loop does (`loop_step_s`); the time
  to build one batch (`batch_s`); samples/s from `step_s`; the losses of the waited steps; and,
  when `fused` > 1, the per-step time of `fused` steps run in one `lax.scan` (`fused_step_s`).
  """
  batch_size = stage.stream.global_batch_size
  batches = _device_batches(stage, mesh, WARMUP + steps)
  compiled, compile_s = timing.compile_timed(stage.step_fn, stage.state, batches[0])
  state = stage.state
  for batch in batches[:WARMUP]:
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  times, losses = [], []
  for batch in batches[WARMUP:]:
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
    losses.append(float(metrics['loss']))
  start = time.perf_counter()
  for i in range(steps):
    state, metrics = compiled(state,
                              parallel.global_batch(stage.stream.batch(WARMUP + steps + i), mesh))
  jax.block_until_ready((state, metrics))
  loop_step_s = (time.perf_counter() - start) / steps
  batch_s = timing.median_seconds(
      lambda: parallel.global_batch(stage.stream.batch(0), mesh), 5)
  step_s = float(np.median(times))
  step_flops = timing.flops(compiled)
  extra = {}
  if fused > 1:
    state, extra['fused_step_s'], extra['fused_compile_s'] = _fused(stage, state, mesh, fused)
  return state, {**extra,
      'compile_s': compile_s, 'step_s': step_s, 'loop_step_s': loop_step_s, 'batch_s': batch_s,
      'samples_per_s': batch_size / step_s, 'batch_size': batch_size, 'flops': step_flops,
      'flop_per_s': step_flops / step_s, 'flop_fraction': step_flops / step_s / machine_flops,
      'losses': losses}


def _fused(stage: Any, state: Any, mesh: Any, count: int) -> tuple[Any, float, float]:
  """Runs `count` steps in one jitted `lax.scan` over stacked batches.

  Returns:
    The state after the runs, the median seconds per step and the compile seconds.
  """
  batches = [stage.stream.batch(i) for i in range(count)]
  stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, parallel.DATA_AXIS))
  stacked = jax.device_put(stacked, sharding)

  def many(state, batches):
    return jax.lax.scan(stage.step_fn, state, batches)

  compiled, compile_s = timing.compile_timed(jax.jit(many, donate_argnums=0), state, stacked)
  state, _ = compiled(state, stacked)
  times = []
  for _ in range(3):
    start = time.perf_counter()
    state, metrics = compiled(state, stacked)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  return state, float(np.median(times)) / count, compile_s


def _time_method(fn: Any, x: np.ndarray, repeats: int) -> tuple[float, float]:
  """(seconds of the first call minus a steady one, steady seconds) of a Model method on `x`."""
  start = time.perf_counter()
  fn(x)
  first = time.perf_counter() - start
  steady = timing.median_seconds(lambda: fn(x), repeats)
  return max(0.0, first - steady), steady


def bench_evaluation(ctx: Any, variables: Any) -> dict:
  """Decode and encode of the test split by a `Model` holding `variables`."""
  test = ctx.dataset.test
  m = model_lib.Model(ctx.config, variables, model_lib.model_meta(variables,
                                                                   ctx.dataset.image_shape))
  decode_compile, decode_s = _time_method(m.decode, test.responses, 5)
  encode_compile, encode_s = _time_method(m.encode, test.images, 5)
  n = len(test)
  return {'n': n, 'decode_compile_s': decode_compile, 'encode_compile_s': encode_compile,
          'decode_s': decode_s, 'encode_s': encode_s, 'step_s': decode_s + encode_s,
          'samples_per_s': n / (decode_s + encode_s)}


def _with_stage2_batch(config: Any, batch_size: int) -> Any:
  config = config.copy_and_resolve_references()
  config.stage2.batch_size = batch_size
  return config


def bench_config(spec: str, steps: int, evaluation: bool = True, fused: int = 0,
                 wide_batch: int = 0) -> dict:
  """Stage 1, stage 2 and (when `evaluation`) evaluation of one config on the visible devices.

  `fused` > 1 also times stage 2 run `fused` steps per `lax.scan`; `wide_batch` > 0 also times
  stage 2 at that batch size (`stage2_wide`), which shows whether the step is bound by its size.
  """
  config = load_config(spec)
  machine_flops = timing.matmul_flops_per_second()
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    ctx = context.make_context(config, workdir)
    setup_s = time.perf_counter() - start
    try:
      state1, stage1 = bench_stage(loop.stage1(ctx, loop.restore_or_init(ctx)), ctx.mesh, steps,
                                   machine_flops)
      start = time.perf_counter()
      stage = loop.stage2(ctx, state1)
      stage2_setup_s = time.perf_counter() - start
      state2, stage2 = bench_stage(stage, ctx.mesh, steps, machine_flops, fused)
      result = {'config': spec, 'devices': jax.device_count(), 'data_setup_s': setup_s,
                'stage2_setup_s': stage2_setup_s, 'matmul_flop_per_s': machine_flops,
                'stage1': stage1, 'stage2': stage2}
      if evaluation:
        result['evaluation'] = bench_evaluation(ctx, state2.model_variables())
      if wide_batch:
        wide = dataclasses.replace(ctx, config=_with_stage2_batch(config, wide_batch))
        result['stage2_wide'] = bench_stage(loop.stage2(wide, state1), ctx.mesh, steps,
                                            machine_flops)[1]
    finally:
      ctx.mgr.wait_until_finished()
      ctx.log.close()
  result['peak_host_mib'] = timing.peak_host_memory_mib()
  return result


def bench_throughput(spec: str, ckpt: str | None, batch_sizes: tuple[int, ...]) -> dict:
  """Decode and encode samples/s of `model.load(ckpt)` (else of a model trained on `spec` into a
  temporary workdir) at each batch size, after one warm-up call per size."""
  given = ckpt
  with tempfile.TemporaryDirectory() as tmp:
    train_s = 0.0
    if not ckpt:
      config = load_config(spec)
      start = time.perf_counter()
      ckpt = str(loop.train(config, Path(tmp) / 'run'))
      train_s = time.perf_counter() - start
    m = model_lib.load(ckpt)
  rng = np.random.default_rng(0)
  rows = {}
  for size in batch_sizes:
    responses = rng.standard_normal((size, m.num_units)).astype(np.float32)
    images = rng.uniform(size=(size,) + m.image_shape).astype(np.float32)
    repeats = 20 if size <= 64 else 3
    row = {}
    for name, fn, x in (('decode', m.decode, responses), ('encode', m.encode, images)):
      compile_s, steady = _time_method(fn, x, repeats)
      row[name] = {'compile_s': compile_s, 'step_s': steady, 'samples_per_s': size / steady}
    rows[str(size)] = row
  return {'config': spec, 'ckpt': given or '', 'train_s': train_s, 'devices': jax.device_count(),
          'image_shape': list(m.image_shape), 'num_units': m.num_units, 'batches': rows,
          'peak_host_mib': timing.peak_host_memory_mib()}
