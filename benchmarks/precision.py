"""Stage-1 step time with float32 against bfloat16 compute (`config.model.dtype`), interleaved in
one process so both see the same machine load.

  python benchmarks/precision.py [--configs fmri,spikes] [--rounds 5] [--steps 10] [--no-augment]

For each config (its image shape, widths and batch size; random images, no data files), both
steps are compiled once, then `--rounds` rounds each time `--steps` steps of float32, then of
bfloat16 (the order alternating between rounds). Prints the median step of each and their ratio
(bf16 / f32: below 1 means bfloat16 is faster), and the losses after the same steps from the same
start.
"""

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import measure
from flig_jax.model import FLIG
from flig_jax.training import steps

IMAGE_SHAPES = {'fmri': (28, 28, 1), 'spikes': (32, 32, 1), 'synthetic': (32, 32, 1)}


def _stage1(config, dtype: str, image_shape):
  """(jitted step, fresh state) of stage 1 for `config` with compute dtype `dtype`."""
  config = config.unlock() if hasattr(config, 'unlock') else config
  config.model.dtype = dtype
  module = FLIG.from_config(config.model, image_shape)
  cfg = config.stage1
  tx = steps.optimizer(cfg.learning_rate, cfg.weight_decay, cfg.steps)
  params = module.init_autoencoder(jax.random.key(config.seed), jnp.zeros((1,) + image_shape))
  state = steps.Stage1State(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                            rng=jax.random.key(1), nonfinite_step=jnp.full((), -1, jnp.int32))
  step = jax.jit(lambda s, b: steps.stage1_step(s, b, model=module, tx=tx, cfg=cfg),
                 donate_argnums=0)
  return step, state


def _config(spec: str, augment: bool):
  config = measure.load_config(spec)
  config.stage1.augment = augment
  return config


def compare(spec: str, rounds: int, count: int, augment: bool = True) -> dict:
  """Median stage-1 step (s) of float32 and bfloat16 over interleaved rounds, and their ratio."""
  config = _config(spec, augment)
  image_shape = IMAGE_SHAPES[spec.partition(':')[0]]
  b = config.stage1.batch_size
  rng = np.random.default_rng(0)
  batches = [{'images': jnp.asarray(rng.uniform(size=(b,) + image_shape), jnp.float32)}
             for _ in range(count)]
  runs = {}
  for dtype in ('float32', 'bfloat16'):
    step, state = _stage1(_config(spec, augment), dtype, image_shape)
    for batch in batches[:2]:  # compile and warm up
      state, _ = step(state, batch)
    jax.block_until_ready(state)
    runs[dtype] = {'step': step, 'state': state, 'times': []}
  for r in range(rounds):
    for dtype in (('float32', 'bfloat16') if r % 2 == 0 else ('bfloat16', 'float32')):
      run = runs[dtype]
      start = time.perf_counter()
      for batch in batches:
        run['state'], run['metrics'] = run['step'](run['state'], batch)
      jax.block_until_ready(run['state'])
      run['times'].append((time.perf_counter() - start) / count)
  out = {dtype: statistics.median(run['times']) for dtype, run in runs.items()}
  out['ratio'] = out['bfloat16'] / out['float32']
  out['ratios'] = [b / f for f, b in zip(runs['float32']['times'], runs['bfloat16']['times'])]
  out['loss'] = {dtype: float(run['metrics']['loss']) for dtype, run in runs.items()}
  out['batch_size'], out['image_shape'] = b, image_shape
  return out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--configs', default='fmri,spikes')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps', type=int, default=10, help='steps per round and dtype')
  parser.add_argument('--no-augment', action='store_true', help='stage 1 without augmentation')
  args = parser.parse_args(argv)
  for spec in filter(None, args.configs.split(',')):
    r = compare(spec, args.rounds, args.steps, not args.no_augment)
    print(f"{spec} (B={r['batch_size']}, images {r['image_shape']}, augment "
          f"{not args.no_augment}): stage-1 step float32 "
          f"{r['float32'] * 1e3:.1f} ms, bfloat16 {r['bfloat16'] * 1e3:.1f} ms, ratio "
          f"{r['ratio']:.2f} (rounds: {', '.join(f'{x:.2f}' for x in r['ratios'])}); loss after "
          f"the same steps: float32 {r['loss']['float32']:.4f}, bfloat16 "
          f"{r['loss']['bfloat16']:.4f}", flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
