"""Cost curves toward NSD scale: step time and peak memory as the work grows, with the log-log
slope (the exponent) of each curve.

  pip install -e ".[bench]"   # grain, which the pairs curve reads through
  python benchmarks/scaling.py [--quick] [--curves images,units,dim,pairs] [--device cpu|cuda|tpu]
      [--out docs/scaling.json] [--md docs/scaling.md] [--plots docs]

Curves (full / --quick):
  images  stage-1 step (B=32) at 28, 64, 128 px colour images          / 28, 64 px
  units   adapter fit on N=9000 pairs, and encode / decode of 256 pairs, at 100 to 50k units
          (the old full-SVD fit too, where it takes ~a minute or less)  / N=2000, up to 15k
  dim     stage-2 step (B=32) at D = 32, 128, 512                         / 32, 128
  pairs   100, 1k, 10k synthetic pairs (64 px colour, 15k voxels) written once as array_record
          (under $FLIG_SCALING_DIR, else ~/.cache/flig_jax/scaling) and read back through grain:
          the stage-1 loop step reading each batch from disk, one E(x) pass over all pairs, and
          the adapter fit                                                / 100, 1k

Each point runs in a fresh child process (its own compiles and peak memory); a few steps per point:
these are cost curves, not training. On a shared CPU the timings are noisy: read the exponents,
not the third digit.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_MARK = 'SCALING_JSON '
STEPS = 3
BATCH = 32

# name: (x key, x label, [(y key, label)], the points of a full run, of a --quick run)
CURVES = {
    'images': ('pixels', 'pixels per image (H x W x 3)',
               [('step_s', 'stage-1 step, B=32')], (28, 64, 128), (28, 64)),
    'units': ('units', 'units (voxels / neurons)',
              [('fit_s', 'adapter fit'), ('full_svd_s', 'adapter fit by full SVD, for comparison'),
               ('encode_s', 'encode, 256 images'), ('decode_s', 'decode, 256 responses')],
              (100, 1000, 3000, 15_000, 50_000), (100, 3000, 15_000)),
    'dim': ('dim', 'D (feature and flow size)',
            [('step_s', 'stage-2 step, B=32')], (32, 128, 512), (32, 128)),
    'pairs': ('n', 'training pairs (64 px colour, 15k voxels)',
              [('loop_step_s', 'stage-1 loop step, read from disk'),
               ('features_s', 'E(x) pass over all pairs'), ('fit_s', 'adapter fit')],
              (100, 1000, 10_000), (100, 1000)),
}
UNITS_N = {'full': 9000, 'quick': 2000}
FULL_SVD_MAX_WORK = 1.5e10  # N U min(N, U): the old fit took ~100 s at 1.2e10
WRITE_KEYS = ('data_dir', 'n', 'image_size', 'num_units')
PAIRS_IMAGE_SIZE, PAIRS_UNITS = 64, 15_000


def _data_dir() -> str:
  return os.environ.get('FLIG_SCALING_DIR') or str(Path.home() / '.cache' / 'flig_jax' / 'scaling')


def _job(curve: str, x: int, quick: bool) -> dict:
  if curve == 'images':
    return {'fn': 'stage1_images', 'size': x, 'channels': 3, 'batch_size': BATCH, 'count': STEPS}
  if curve == 'units':
    n = UNITS_N['quick' if quick else 'full']
    return {'fn': 'units', 'n': n, 'num_units': x, 'dim': 32,
            'batch_size': 256, 'full_svd': n * x * min(n, x) <= FULL_SVD_MAX_WORK}
  if curve == 'dim':
    return {'fn': 'stage2_dim', 'dim': x, 'batch_size': BATCH, 'count': STEPS}
  return {'fn': 'pairs', 'data_dir': _data_dir(), 'n': x, 'image_size': PAIRS_IMAGE_SIZE,
          'num_units': PAIRS_UNITS, 'dim': 32, 'batch_size': BATCH, 'count': 2 * STEPS}


def _spawn(job: dict, platform: str, timeout: float = 600) -> dict:
  """Runs one point in a child process on `platform`; its JSON result, or {'error': ...}."""
  env = dict(os.environ, JAX_PLATFORMS=platform,
             PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))
  env.pop('JAX_COMPILATION_CACHE_DIR', None)  # compile times are cold
  try:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), '--child',
                           json.dumps(job)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return {'error': f'timed out after {timeout:.0f} s'}
  lines = [l for l in proc.stdout.splitlines() if l.startswith(_MARK)]
  if proc.returncode or not lines:
    tail = proc.stderr.strip().splitlines()[-1:] or ['(no output)']
    return {'error': f'exit {proc.returncode}: {tail[0][:300]}'}
  return json.loads(lines[-1][len(_MARK):])


def _child(job: dict) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_enable_compilation_cache', False)
  from benchmarks import costs  # pylint: disable=g-import-not-at-top
  fn = getattr(costs, job.pop('fn'))
  return {**fn(**job), 'device': costs.device()}


def exponent(xs: list[float], ys: list[float]) -> float | None:
  """The least-squares slope of log y against log x (None with fewer than two points)."""
  pairs = [(x, y) for x, y in zip(xs, ys) if y is not None and y > 0]
  if len(pairs) < 2:
    return None
  lx, ly = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
  return float(np.polyfit(lx, ly, 1)[0])


def _series(points: list[dict], x_key: str, y_key: str) -> tuple[list[float], list[float | None]]:
  good = [p for p in points if 'error' not in p]
  return [p[x_key] for p in good], [p.get(y_key) for p in good]


def summarise(curve: str, points: list[dict]) -> list[dict]:
  """One row per series of a curve (peak memory included): label, values and exponent."""
  x_key, _, series, _, _ = CURVES[curve]
  rows = []
  for y_key, label in series + [('peak_host_mib', 'peak host memory (MiB)'),
                                ('peak_device_mib', 'peak device memory (MiB)')]:
    xs, ys = _series(points, x_key, y_key)
    if any(y is not None for y in ys):
      rows.append({'series': y_key, 'label': label, 'x': xs, 'y': ys,
                   'exponent': exponent(xs, ys)})
  return rows


def plot(curve: str, rows: list[dict], device: str, path: Path) -> None:
  """Log-log plot of a curve: times on the left, peak memory on the right, slopes in the legend."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  x_label = CURVES[curve][1]
  fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 3.8))
  for row in rows:
    ax = ax_m if row['series'].startswith('peak') else ax_t
    xs = [x for x, y in zip(row['x'], row['y']) if y is not None]
    ys = [y for y in row['y'] if y is not None]
    slope = '' if row['exponent'] is None else f" (slope {row['exponent']:.2f})"
    ax.plot(xs, ys, 'o-', label=row['label'] + slope)
  for ax, y_label in ((ax_t, 'seconds'), (ax_m, 'MiB')):
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f'{curve}: cost as the work grows ({device}; benchmarks/scaling.py)', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def markdown(results: dict) -> str:
  """The exponents, then every point, as markdown tables."""
  command = f"python benchmarks/scaling.py {' '.join(results['argv'])}".strip()
  lines = [f"Cost curves on {results['device']} (`{command}`, {results['wall_s']:.0f} s)", '',
           '| curve | series | points | exponent (log-log slope) |', '|---|---|---|---|']
  for curve, r in results['curves'].items():
    for row in r['summary']:
      pts = ', '.join(f'{x}: {y:.3g}' for x, y in zip(row['x'], row['y']) if y is not None)
      e = '' if row['exponent'] is None else f"{row['exponent']:.2f}"
      lines.append(f"| {curve} | {row['label']} | {pts} | {e} |")
  errors = [(c, p) for c, r in results['curves'].items() for p in r['points'] if 'error' in p]
  for curve, p in errors:
    lines.append(f"\n{curve} {p['x']}: {p['error']}")
  return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--quick', action='store_true', help='fewer and smaller points (~2 min)')
  parser.add_argument('--curves', default=','.join(CURVES), help='comma-separated subset')
  parser.add_argument('--device', default='cpu',
                      help='the JAX platform the points run on: cpu, cuda, rocm or tpu')
  parser.add_argument('--out', default='', help='write the points and exponents to this JSON')
  parser.add_argument('--md', default='', help='write the tables to this markdown file')
  parser.add_argument('--plots', default='', help='write scaling_<curve>.png into this folder')
  parser.add_argument('--child', default='', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(_MARK + json.dumps(_child(json.loads(args.child))), flush=True)
    return 0
  curves = [c for c in args.curves.split(',') if c]
  unknown = sorted(set(curves) - set(CURVES))
  if unknown:
    parser.error(f'unknown curve(s) {unknown}; choose from {sorted(CURVES)}')
  if 'pairs' in curves and importlib.util.find_spec('grain') is None:
    print('error: the pairs curve reads its set through grain, which is not installed; install '
          'the benchmarks\' extra: pip install -e ".[bench]" (or leave the curve out: --curves '
          'images,units,dim)', file=sys.stderr)
    return 1
  start = time.perf_counter()
  results = {'argv': sys.argv[1:], 'curves': {}, 'device': args.device}
  for curve in curves:
    x_key, _, _, full, quick = CURVES[curve]
    points = []
    for x in (quick if args.quick else full):
      job = _job(curve, x, args.quick)
      if curve == 'pairs':  # written once, outside the measured child
        written = _spawn({'fn': 'write_pairs', **{k: job[k] for k in WRITE_KEYS}}, args.device)
        print(f"  pairs: {x} pairs in {job['data_dir']} ({written})", flush=True)
      point = {'x': x, **_spawn(job, args.device)}
      points.append(point)
      results['device'] = point.get('device', results['device'])
      shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in point.items()}
      print(f'{curve} {x_key}={x}: {shown}', flush=True)
    rows = summarise(curve, points)
    results['curves'][curve] = {'points': points, 'summary': rows}
    for row in rows:
      e = 'n/a' if row['exponent'] is None else f"{row['exponent']:.2f}"
      print(f"  {curve}: {row['label']}: exponent {e}", flush=True)
    results['wall_s'] = time.perf_counter() - start
    _write(results, args)  # after every curve, so a long run keeps what it has measured
  print(f"total wall time {results['wall_s']:.0f} s")
  return 0


def _write(results: dict, args: argparse.Namespace) -> None:
  if args.plots:
    Path(args.plots).mkdir(parents=True, exist_ok=True)
    for curve, r in results['curves'].items():
      plot(curve, r['summary'], results['device'], Path(args.plots) / f'scaling_{curve}.png')
  if args.out:
    Path(args.out).write_text(json.dumps(results, indent=1))
  if args.md:
    Path(args.md).write_text(markdown(results))


if __name__ == '__main__':
  sys.exit(main())
