"""flig_jax's training steps against their PyTorch port (benchmarks/torch_port), side by side.

  pip install -e ".[torch]"
  python benchmarks/vs_torch.py [--rounds 7] [--rows s1_b32,s1_v4,s2_b32,s2_b256]
      [--modes eager,compiled] [--startup fmri:smoke] [--fullrun fmri] [--out results.json]
      [--torch-python PY]
  python benchmarks/vs_torch.py --fullrun fmri --rows '' --startup '' --rounds 3   # whole runs only

The port (the same layers, initialisation, losses and optimisers; tests/test_torch_port.py checks
its losses equal flig_jax's) runs at the sizes of each row's config in a long-lived child process
(benchmarks/peer_worker.py, under this Python unless `--torch-python` names another), so torch is
never imported here. flig_jax's steps are the ones `train.py` runs, built by `training.loop` on
the real data ($FLIG_DATA_DIR).
Every step is compiled and warmed up first; then each round times, for every row and every
implementation in turn, a block of steps each waited on alone (`step`) and a block run as a training
loop (`loop`: each batch built on the host and fed as `train.py` feeds it, one wait at the end).
The table gives the median over rounds, so both sides see the same machine load. Stage 1 runs
without augmentation, which the port does not have.

`--startup SPEC` also times `train.py --config configs/<SPEC>` twice with an empty compilation
cache: cold (every program compiled) and warm (read from the cache the first run wrote).

`--fullrun SPEC` times whole runs in `--rounds` interleaved rounds: `train.py --config
configs/<SPEC> --config.stage1.augment=False` in a fresh workdir with an empty compilation cache
(cold) and with the cache that cold run filled (warm), against the port's eager run of the same
config's stage-1 steps then stage-2 steps at its batch sizes, timed from launching a fresh worker
process (torch's import, the stand-in data, each stage's build) to the end of its last step. It
prints the medians and flig_jax / port, cold and warm; the JSON also holds each run's breakdown
(train.py's `time_s` row, the port's build and step seconds per stage).
"""

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

ROWS = {  # name: (config, stage, batch size, label)
    's1_b32': ('fmri', 1, 32, 'stage 1, B=32 (digit69, 28x28)'),
    's1_v4': ('spikes', 1, 32, 'stage 1, B=32 (V4, 32x32)'),
    's2_b32': ('fmri', 2, 32, 'stage 2, B=32'),
    's2_b256': ('fmri', 2, 256, 'stage 2, B=256'),
}
MODES = {'eager': 'torch eager', 'compiled': 'torch.compile'}
BLOCK = {1: 10, 2: 40}  # steps per timed block, by stage


class Peer:
  """The PyTorch worker process: one JSON line in, one JSON line out."""

  def __init__(self, python: str, threads: int):
    self.proc = subprocess.Popen(
        [python, str(ROOT / 'benchmarks' / 'peer_worker.py'), '--threads', str(threads)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, 'TORCHINDUCTOR_CACHE_DIR': tempfile.mkdtemp(prefix='inductor_')})
    self.info = self._read()

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f'benchmarks/vs_torch.py: the peer worker exited '
                         f'(status {self.proc.wait()}); see its stderr above')
    out = json.loads(line)
    if 'error' in out:
      raise RuntimeError(f"benchmarks/vs_torch.py: peer worker: {out['error']}")
    return out

  def __call__(self, **job) -> dict:
    self.proc.stdin.write(json.dumps(job) + '\n')
    self.proc.stdin.flush()
    return self._read()

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait(timeout=60)


class JaxRows:
  """flig_jax's compiled steps for each row, built as `train.py` builds them."""

  def __init__(self, workdir: Path):
    self.workdir, self.rows, self._contexts = workdir, {}, {}

  def _context(self, name: str):
    from benchmarks import measure  # pylint: disable=g-import-not-at-top
    from flig_jax.training import context  # pylint: disable=g-import-not-at-top
    if name not in self._contexts:
      config = measure.load_config(name)
      config.stage1.augment = False  # the port has no augmentation
      config.data.folds = 0  # the steps are timed, not chosen: no cross-validation runs
      self._contexts[name] = context.make_context(config, self.workdir / name)
    return self._contexts[name]

  def spec(self, row: str) -> dict:
    """What the torch port needs to build the row's step: sizes and the stage's config fields."""
    config_name, stage_number, batch_size, _ = ROWS[row]
    return self.port_spec(config_name, stage_number, batch_size)

  def port_spec(self, config_name: str, stage_number: int, batch_size: int) -> dict:
    """The port's spec of a stage's step of configs/<config_name> (`name` or `name:arg`)."""
    ctx = self._context(config_name)
    config, model, dataset = ctx.config, ctx.config.model, ctx.dataset
    cfg = config.stage1 if stage_number == 1 else config.stage2
    return {'stage': stage_number, 'batch_size': batch_size, 'cfg': cfg.to_dict(),
            'image_shape': list(dataset.image_shape), 'num_train': len(dataset.train),
            'feature_dim': model.feature_dim, 'cae_widths': list(model.cae_widths),
            'flow_type': model.flow_type, 'flow_blocks': model.flow_blocks,
            'flow_hidden': model.flow_hidden, 'flow_dropout': model.get('flow_dropout', 0.0),
            'disc_hidden': model.disc_hidden,
            'k': min(model.feature_dim, dataset.num_units, len(dataset.train) - 1)}

  def setup(self, row: str) -> dict:
    import jax  # pylint: disable=g-import-not-at-top

    from flig_jax.training import loop  # pylint: disable=g-import-not-at-top
    config_name, stage_number, batch_size, _ = ROWS[row]
    ctx = self._context(config_name)
    start = time.perf_counter()
    stage = loop.stage1(ctx, loop.restore_or_init(ctx))
    if stage_number == 2:
      config = ctx.config.copy_and_resolve_references()
      config.stage2.batch_size = batch_size
      stage = loop.stage2(dataclasses.replace(ctx, config=config), stage.state)
    state = stage.state
    for i in range(3):
      state, metrics = stage.step_fn(state, self._batch(stage, ctx.mesh, i))
    jax.block_until_ready(metrics)
    self.rows[row] = [stage, ctx.mesh, state, 3]
    return {'setup_s': time.perf_counter() - start}

  @staticmethod
  def _batch(stage, mesh, i: int):
    from flig_jax.training import parallel  # pylint: disable=g-import-not-at-top
    return parallel.global_batch(stage.stream.batch(i), mesh)

  def _take(self, row: str, n: int) -> range:
    entry = self.rows[row]
    entry[3] += n
    return range(entry[3] - n, entry[3])

  def steps(self, row: str, n: int) -> list[float]:
    """Seconds of `n` steps, each waited on alone, on batches already on the device."""
    import jax  # pylint: disable=g-import-not-at-top
    stage, mesh, state, _ = self.rows[row]
    batches = [self._batch(stage, mesh, i) for i in self._take(row, n)]
    jax.block_until_ready(batches)
    times = []
    for batch in batches:
      start = time.perf_counter()
      state, metrics = stage.step_fn(state, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    self.rows[row][2] = state
    return times

  def loop(self, row: str, n: int) -> tuple[float, float]:
    """Mean seconds per step of `n` steps fed as `training.loop.run_stage` feeds them (batches
    built ahead by `training.prefetch`), waited on once at the end, and the cores this process
    kept busy meanwhile (its CPU time over the wall time: XLA's threads, the batch thread)."""
    import jax  # pylint: disable=g-import-not-at-top

    from flig_jax.training import prefetch  # pylint: disable=g-import-not-at-top
    stage, mesh, state, _ = self.rows[row]
    first = self._take(row, n).start
    start, cpu = time.perf_counter(), time.process_time()
    with prefetch.DeviceBatches(stage.stream, first, mesh) as batches:
      for _ in range(n):
        state, metrics = stage.step_fn(state, next(batches))
      jax.block_until_ready((state, metrics))
    wall = time.perf_counter() - start
    self.rows[row][2] = state
    return wall / n, (time.process_time() - cpu) / wall


def _has_data(config_name: str) -> bool:
  from benchmarks import measure  # pylint: disable=g-import-not-at-top
  from flig_jax import data  # pylint: disable=g-import-not-at-top
  try:
    data.from_config(measure.load_config(config_name))
  except (data.DataError, FileNotFoundError, ValueError):
    return False
  return True


def compare(peer: Peer, rows: list[str], modes: list[str], rounds: int) -> dict:
  """Interleaved rounds over every (row, implementation); returns every timing."""
  jax_rows = JaxRows(Path(tempfile.mkdtemp(prefix='vs_torch_')))
  impls = {row: ['jax'] + list(modes) for row in rows}
  setup, failed = {}, {}
  for row in rows:
    for impl in list(impls[row]):
      try:
        out = (jax_rows.setup(row) if impl == 'jax'
               else peer(cmd='setup', row=row, mode=impl, spec=jax_rows.spec(row)))
      except RuntimeError as e:  # a torch mode that cannot build this step: its cell stays empty
        if impl == 'jax':
          raise
        failed[f'{row}/{impl}'] = str(e).splitlines()[0][:300]
        impls[row].remove(impl)
        print(f'  set up {row} {impl}: failed ({failed[f"{row}/{impl}"]})', flush=True)
        continue
      setup[f'{row}/{impl}'] = out['setup_s']
      print(f'  set up {row} {impl}: {out["setup_s"]:.1f} s', flush=True)
  times = {f'{row}/{impl}': {'step': [], 'loop': []} for row in rows for impl in impls[row]}
  cores: dict[str, list[float]] = {row: [] for row in rows}
  for r in range(rounds):
    for row in rows:
      n = BLOCK[ROWS[row][1]]
      order = impls[row][r % len(impls[row]):] + impls[row][:r % len(impls[row])]
      for impl in order:
        cell = times[f'{row}/{impl}']
        if impl == 'jax':
          cell['step'].append(statistics.median(jax_rows.steps(row, n)))
          step_s, busy = jax_rows.loop(row, n)
          cell['loop'].append(step_s)
          cores[row].append(busy)
        else:
          peer_times = peer(cmd='steps', row=row, mode=impl, n=n)['times']
          cell['step'].append(statistics.median(peer_times))
          cell['loop'].append(peer(cmd='loop', row=row, mode=impl, n=n)['step_s'])
    print(f'  round {r + 1}/{rounds} done (load {os.getloadavg()[0]:.1f})', flush=True)
  medians = {k: {kind: statistics.median(v) for kind, v in cell.items()}
             for k, cell in times.items()}
  return {'setup_s': setup, 'times': times, 'median': medians, 'impls': impls, 'failed': failed,
          'jax_loop_cores': cores}


def table(result: dict) -> str:
  """The comparison as a Markdown table: median ms per step, and flig_jax / the fastest torch."""
  med, impls = result['median'], result['impls']
  modes = [m for m in MODES if any(m in v for v in impls.values())]
  head = ['step', 'flig_jax'] + [MODES[m] for m in modes] + ['flig_jax / fastest torch']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for kind in ('step', 'loop'):
    for row, row_impls in impls.items():
      cells = [ROWS[row][3] + (', loop' if kind == 'loop' else '')]
      ms = {impl: med[f'{row}/{impl}'][kind] * 1e3 for impl in row_impls}
      cells.append(f"{ms['jax']:.2f}")
      cells += [f'{ms[m]:.2f}' if m in ms else '-' for m in modes]
      fastest = min((v for k, v in ms.items() if k != 'jax'), default=None)
      cells.append(f"{ms['jax'] / fastest:.2f}" if fastest else '-')
      lines.append('| ' + ' | '.join(cells) + ' |')
  ratios = ', '.join(f"{row} {med[f'{row}/jax']['loop'] / med[f'{row}/jax']['step']:.2f}"
                     for row in impls)
  busy = ', '.join(f'{row} {statistics.median(v):.2f}'
                   for row, v in result.get('jax_loop_cores', {}).items() if v)
  return ('\n'.join(lines) + f'\n\nflig_jax loop / step: {ratios}'
          + (f'\nflig_jax cores busy in the loop (CPU time / wall time): {busy}' if busy else ''))


def _config_arg(spec: str) -> str:
  name, _, arg = spec.partition(':')
  return f"configs/{name}.py{':' + arg if arg else ''}"


def train_run(spec: str, xla_cache: Path, workdir: Path, *overrides: str) -> dict:
  """Runs `train.py --config configs/<spec> --workdir <workdir> <overrides>` with its compilation
  cache in `xla_cache`; returns its wall seconds (launch to exit) and the breakdown that ends its
  metrics.jsonl."""
  env = {**os.environ, 'FLIG_XLA_CACHE_DIR': str(xla_cache),
         'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))}
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  cmd = [sys.executable, str(ROOT / 'train.py'), f'--config={ROOT / _config_arg(spec)}',
         f'--workdir={workdir}', *overrides]
  start = time.perf_counter()
  proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(f'benchmarks/vs_torch.py: {" ".join(cmd)} failed:\n{proc.stderr[-2000:]}')
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return {'wall_s': wall, 'parts_s': next((r['time_s'] for r in reversed(rows) if 'time_s' in r),
                                          {})}


def startup(spec: str) -> dict:
  """Wall seconds of `train.py --config configs/<spec>`: cold (an empty compilation cache), then
  warm (the cache the cold run filled)."""
  with tempfile.TemporaryDirectory() as tmp:
    return {kind: train_run(spec, Path(tmp) / 'xla', Path(tmp) / kind)['wall_s']
            for kind in ('cold', 'warm')}


def port_run(python: str, threads: int, specs: list[dict], steps: list[int]) -> dict:
  """The port's whole run in eager mode: a fresh worker process that builds and runs each stage's
  `steps` in turn; wall seconds from the process's launch to the end of its last step, and the
  seconds of each stage's build and steps as the worker measured them."""
  start = time.perf_counter()
  peer = Peer(python, threads)
  try:
    out = peer(cmd='run', mode='eager', stages=[
        {'spec': spec, 'steps': n} for spec, n in zip(specs, steps, strict=True)])
    wall = time.perf_counter() - start
  finally:
    peer.close()
  return {'wall_s': wall, 'stages': out['stages']}


FULLRUN_ORDERS = (('cold', 'warm', 'port'), ('port', 'cold', 'warm'), ('cold', 'port', 'warm'))


def fullrun(spec: str, python: str, threads: int, rounds: int) -> dict:
  """Whole runs in interleaved rounds: `train.py --config configs/<spec>` without augmentation
  with an empty compilation cache (cold) and with the cache that cold run filled (warm), each in a
  fresh workdir, against the port's eager run of the config's stage-1 then stage-2 steps at the
  config's batch sizes (`port_run`). Returns every timing, the medians and flig_jax / port."""
  from benchmarks import measure  # pylint: disable=g-import-not-at-top
  jax_rows = JaxRows(Path(tempfile.mkdtemp(prefix='vs_torch_')))
  cfg = measure.load_config(spec)
  specs = [jax_rows.port_spec(spec, 1, cfg.stage1.batch_size),
           jax_rows.port_spec(spec, 2, cfg.stage2.batch_size)]
  steps = [cfg.stage1.steps, cfg.stage2.steps]
  times = {'cold': [], 'warm': [], 'port': []}
  parts = {'cold': [], 'warm': [], 'port': []}
  for r in range(rounds):
    with tempfile.TemporaryDirectory() as tmp:
      for kind in FULLRUN_ORDERS[r % len(FULLRUN_ORDERS)]:
        if kind == 'port':
          out = port_run(python, threads, specs, steps)
          parts[kind].append(out['stages'])
        else:
          out = train_run(spec, Path(tmp) / 'xla', Path(tmp) / kind,
                          '--config.stage1.augment=False')  # the port has no augmentation
          parts[kind].append(out['parts_s'])
        times[kind].append(out['wall_s'])
        print(f'  round {r + 1}/{rounds}: {kind} {out["wall_s"]:.1f} s', flush=True)
    print(f'  round {r + 1}/{rounds} done (load {os.getloadavg()[0]:.1f})', flush=True)
  median = {k: statistics.median(v) for k, v in times.items()}
  return {'spec': spec, 'steps': steps, 'batch_sizes': [s['batch_size'] for s in specs],
          'times': times, 'parts': parts, 'median': median,
          'ratio': {'cold/port': median['cold'] / median['port'],
                    'warm/port': median['warm'] / median['port']}}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--torch-python', default=sys.executable,
                      help='the Python that runs the torch port (default: this one)')
  parser.add_argument('--rows', default=','.join(ROWS))
  parser.add_argument('--modes', default=','.join(MODES))
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--threads', type=int, default=os.cpu_count(), help='torch threads')
  parser.add_argument('--startup', default='fmri:smoke',
                      help="time train.py cold and warm on this config ('' to skip)")
  parser.add_argument('--fullrun', default='', metavar='SPEC',
                      help='time whole runs of train.py on configs/SPEC.py (cold and warm '
                           "compilation cache) against the port's eager run of the same steps, "
                           "in --rounds interleaved rounds (default '': off)")
  parser.add_argument('--out', default='', help='also write every timing to this JSON file')
  args = parser.parse_args(argv)
  rows = [r for r in args.rows.split(',') if r]
  modes = [m for m in args.modes.split(',') if m]
  bad = [r for r in rows if r not in ROWS] + [m for m in modes if m not in MODES]
  if bad:
    parser.error(f'unknown rows or modes: {bad} (rows: {list(ROWS)}; modes: {list(MODES)})')
  probe = subprocess.run([args.torch_python, '-c', 'import torch'], capture_output=True,
                         check=False)
  if probe.returncode:
    parser.error(f'{args.torch_python} cannot import torch: pip install -e ".[torch]" (or name '
                 'another Python with --torch-python)')
  if args.fullrun:
    from benchmarks import measure  # pylint: disable=g-import-not-at-top
    try:
      measure.load_config(args.fullrun)
    except ValueError as e:
      parser.error(f'--fullrun {args.fullrun}: {e}')
  if args.fullrun and not _has_data(args.fullrun):
    parser.error(f'--fullrun {args.fullrun}: no data for {_config_arg(args.fullrun)} '
                 '(set FLIG_DATA_DIR)')
  missing = [r for r in rows if not _has_data(ROWS[r][0])]
  if missing:
    print(f'skipping {missing}: no data for their configs (set FLIG_DATA_DIR)', file=sys.stderr)
    rows = [r for r in rows if r not in missing]
  result = {'argv': sys.argv[1:], 'load_start': os.getloadavg()}
  if args.startup:
    result['startup'] = startup(args.startup)
    s = result['startup']
    print(f"train.py --config {_config_arg(args.startup)}: cold {s['cold']:.1f} s, "
          f"warm {s['warm']:.1f} s", flush=True)
  if args.fullrun:
    result['fullrun'] = fullrun(args.fullrun, args.torch_python, args.threads, args.rounds)
    med, ratio = result['fullrun']['median'], result['fullrun']['ratio']
    print(f"\nwhole runs, median of {args.rounds} interleaved rounds: train.py --config "
          f"{_config_arg(args.fullrun)} --config.stage1.augment=False cold {med['cold']:.1f} s, "
          f"warm {med['warm']:.1f} s; the port's eager run {med['port']:.1f} s; flig_jax / port: "
          f"cold {ratio['cold/port']:.2f}, warm {ratio['warm/port']:.2f}\n", flush=True)
  import jax  # pylint: disable=g-import-not-at-top
  result['jax'] = jax.__version__
  if rows:
    peer = Peer(args.torch_python, args.threads)
    try:
      result['peer'] = peer.info
      result.update(compare(peer, rows, modes, args.rounds))
    finally:
      peer.close()
    print(f"\nmedian ms per step over {args.rounds} interleaved rounds (jax {jax.__version__}, "
          f"torch {peer.info['torch']} on {peer.info['threads']} threads; load "
          f"{result['load_start'][0]:.1f} -> {os.getloadavg()[0]:.1f}):\n")
    print(table(result))
  result['load_end'] = os.getloadavg()
  if args.out:
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f'\nwrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
