"""S independent models trained in one compiled program (`training.seeds`): median ms per step of
stage 1 and stage 2 for each S, and the ratio to one seed trained alone.

  FLIG_DATA_DIR=/path/to/data python benchmarks/seeds.py [--config fmri] [--seeds 1,4,8]
      [--modes vmap,unrolled] [--steps 10] [--rounds 3] [--out seeds.json]

Model s is `configs/<config>.py` with seed s: its own initial parameters, batch order and step keys
(in stage 2 also its own frozen parts, fitted on its own fresh stage-1 autoencoder), all built by
`training.loop` as `train.py` builds them, on the same training data. Each S and mode gets one
program per stage (`seeds.jit_step` over the pure steps of `training.steps`; mode `vmap`: the step
vmapped over the models, `unrolled`: S copies of the step side by side), compiled and warmed up
first.
Then each round times, for each stage and each S in turn, `--steps` steps each waited on alone, on
batches already on the device; the table gives the median over every round, so every S sees the
same machine load. Row `1 (train.py)` is the step `train.py` runs (`parallel.jit_step`, no vmap):
the one-seed time that every ratio divides by.
"""

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import jax
import ml_collections

from benchmarks import measure, timing
from flig_jax import data
from flig_jax.training import context, loop, parallel, seeds, steps

WARMUP = 2
PLAIN = '1 (train.py)'
MODES = {'vmap': True, 'unrolled': False}  # name: seeds.jit_step's `vectorize`


@dataclasses.dataclass
class Program:
  """One compiled step of one stage, its (stacked) state and the streams that feed its models.

  Attributes:
    step: the jitted step, then its compiled program.
    state: the current state (stacked over the models unless `plain`).
    streams: one batch stream per model.
    mesh: the device mesh.
    plain: whether `step` is `train.py`'s own step (one model, no seed axis).
    compile_s: seconds to compile `step`.
    times: seconds of every timed step.
  """
  step: Any
  state: Any
  streams: list[data.BatchStream]
  mesh: Any
  plain: bool = False
  compile_s: float = 0.0
  times: list[float] = dataclasses.field(default_factory=list)
  _next: int = 0

  def _batches(self, n: int) -> list[dict[str, jax.Array]]:
    """The next `n` batches of every model, on the device."""
    first, self._next = self._next, self._next + n
    out = []
    for i in range(first, first + n):
      local = [stream.batch(i) for stream in self.streams]
      out.append(parallel.global_batch(local[0], self.mesh) if self.plain
                 else seeds.global_batch(local, self.mesh))
    return jax.block_until_ready(out)

  def compile(self) -> None:
    """Compiles the step and runs WARMUP steps."""
    batches = self._batches(WARMUP)
    self.step, self.compile_s = timing.compile_timed(self.step, self.state, batches[0])
    for batch in batches:
      self.state, metrics = self.step(self.state, batch)
    jax.block_until_ready(metrics)

  def run(self, n: int) -> None:
    """Times `n` steps, each waited on alone."""
    for batch in self._batches(n):
      start = time.perf_counter()
      self.state, metrics = self.step(self.state, batch)
      jax.block_until_ready(metrics)
      self.times.append(time.perf_counter() - start)


def _pure_steps(ctx: context.Context) -> tuple[Any, Any]:
  """The unjitted stage-1 and stage-2 steps with the model and config `train.py` binds (the
  optimisers come with the states)."""
  config = ctx.config
  return (functools.partial(steps.stage1_step, model=ctx.module, cfg=config.stage1),
          functools.partial(steps.stage2_step, model=ctx.module, cfg=config.stage2))


def _with_seed(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  config = config.copy_and_resolve_references()
  config.seed = seed
  return config


def build(ctx: context.Context, counts: list[int],
          modes: list[str]) -> dict[str, dict[str, Program]]:
  """Every program to time: for each stage, `train.py`'s own step and one step per S and mode."""
  stages = []  # per model: (stage 1, stage 2), as training.loop builds them
  for seed in range(max(counts)):
    seeded = dataclasses.replace(ctx, config=_with_seed(ctx.config, seed))
    first = loop.stage1(seeded, loop.restore_or_init(seeded))
    stages.append((first, loop.stage2(seeded, first.state)))
  pure = _pure_steps(ctx)
  programs = {}
  for number in (1, 2):
    own = [pair[number - 1] for pair in stages]
    rows = {PLAIN: Program(own[0].step_fn, jax.tree.map(lambda x: x.copy(), own[0].state),
                           [own[0].stream], ctx.mesh, plain=True)}
    for mode in modes:
      for count in counts:
        rows[f'{count} {mode}'] = Program(
            seeds.jit_step(pure[number - 1], ctx.mesh, vectorize=MODES[mode]),
            seeds.stack([s.state for s in own[:count]], ctx.mesh),
            [s.stream for s in own[:count]], ctx.mesh)
    programs[f'stage{number}'] = rows
  return programs


def measure_seeds(config: ml_collections.ConfigDict, counts: list[int], modes: list[str],
                  steps_per_round: int, rounds: int) -> dict:
  """Compiles every program, then times `rounds` interleaved rounds; returns every figure."""
  with tempfile.TemporaryDirectory() as workdir:
    ctx = context.make_context(config, workdir)
    try:
      start = time.perf_counter()
      programs = build(ctx, counts, modes)
      setup_s = time.perf_counter() - start
      for stage, rows in programs.items():
        for name, program in rows.items():
          program.compile()
          print(f'  compiled {name:>12} (stage {stage[-1]}): '
                f'{program.compile_s:.1f} s', flush=True)
      for r in range(rounds):
        for rows in programs.values():
          for program in rows.values():
            program.run(steps_per_round)
        print(f'  round {r + 1}/{rounds} done (load {os.getloadavg()[0]:.1f})', flush=True)
    finally:
      ctx.mgr.wait_until_finished()
      ctx.log.close()
  return {'setup_s': setup_s, 'stages': {
      stage: {name: {'models': len(p.streams), 'compile_s': p.compile_s, 'times': p.times,
                     'step_s': statistics.median(p.times)} for name, p in rows.items()}
      for stage, rows in programs.items()}}


def table(result: dict) -> str:
  """Median ms per step by S and stage, the ratio to one seed alone, and ms per model."""
  stages = result['stages']
  head = ['S models']
  for number in (1, 2):
    head += [f'stage {number} ms/step', f'stage {number} / one seed',
             f'stage {number} ms per model', f'stage {number} compile s']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for name in stages['stage1']:
    cells = [name]
    for stage in ('stage1', 'stage2'):
      row, one = stages[stage][name], stages[stage][PLAIN]['step_s']
      cells += [f"{row['step_s'] * 1e3:.2f}", f"{row['step_s'] / one:.2f}",
                f"{row['step_s'] / row['models'] * 1e3:.2f}", f"{row['compile_s']:.1f}"]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='fmri', help='configs/<name>.py[:variant]')
  parser.add_argument('--seeds', default='1,4,8', help='the model counts S to time')
  parser.add_argument('--modes', default=','.join(MODES), help='how S models share a program')
  parser.add_argument('--steps', type=int, default=10, help='timed steps per round and program')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--out', default='', help='also write every timing to this JSON file')
  args = parser.parse_args(argv)
  try:
    counts = [int(s) for s in args.seeds.split(',') if s]
  except ValueError:
    counts = []
  if not counts or min(counts) < 1:
    parser.error(f'--seeds must be positive integers separated by commas, got {args.seeds!r}')
  modes = [m for m in args.modes.split(',') if m]
  if not modes or set(modes) - set(MODES):
    parser.error(f'--modes must name some of {", ".join(MODES)}, got {args.modes!r}')
  if args.steps < 1 or args.rounds < 1:
    parser.error('--steps and --rounds must be at least 1')
  try:
    config = measure.load_config(args.config)
    data.from_config(config)  # fails here, with its own message, when the data is missing
  except (ValueError, FileNotFoundError, data.DataError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  load_start = os.getloadavg()
  result = measure_seeds(config, counts, modes, args.steps, args.rounds)
  result.update({'argv': sys.argv[1:], 'jax': jax.__version__, 'load_start': load_start,
                 'load_end': os.getloadavg()})
  print(f"\n{args.config}: median ms per step over {args.rounds} interleaved rounds of "
        f"{args.steps} steps (jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} "
        f"device(s); load {load_start[0]:.1f} -> {result['load_end'][0]:.1f}; setup of "
        f"{max(counts)} models {result['setup_s']:.1f} s):\n")
  print(table(result))
  if args.out:
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f'\nwrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
