"""Benchmarks of flig_jax on this machine: compile and step times, samples/s, FLOP/s as a fraction
of the measured matmul rate, peak host memory; scaling over fake CPU devices; model throughput.

  python benchmarks/bench.py [--configs fmri,spikes] [--steps 5] [--out results.json]
      [--scaling] [--throughput [--ckpt DIR]]

Every measurement runs in a fresh child process (cold compiles, its own peak memory, its own fake
device count), with XLA's persistent compilation cache off. The default configs (fmri,
spikes) read their data from $FLIG_DATA_DIR; `--configs synthetic` needs no files.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_MARK = 'BENCH_JSON '
SCALING_DEVICES = (1, 2, 4, 8)
THROUGHPUT_BATCHES = (1, 64, 1024)


def _child_env(devices: int) -> dict[str, str]:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = env.get('JAX_PLATFORMS', 'cpu')
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
  env.pop('JAX_COMPILATION_CACHE_DIR', None)  # compile times must be cold
  return env


def _spawn(job: dict, devices: int = 1, timeout: float = 900) -> dict:
  """Runs `job` in a child process with `devices` fake CPU devices; returns its JSON result."""
  proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), '--child', json.dumps(job)],
                        env=_child_env(devices), cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(_MARK)]
  if proc.returncode or not lines:
    raise RuntimeError(f'benchmarks/bench.py: child {job} on {devices} device(s) failed '
                       f'(exit {proc.returncode}):\n{proc.stderr[-3000:]}')
  return json.loads(lines[-1][len(_MARK):])


def _child(job: dict) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_enable_compilation_cache', False)
  from benchmarks import measure  # pylint: disable=g-import-not-at-top
  if job['kind'] == 'config':
    return measure.bench_config(job['config'], job['steps'], job.get('evaluation', True),
                                job.get('fused', 0), job.get('wide_batch', 0))
  if job['kind'] == 'throughput':
    return measure.bench_throughput(job['config'], job.get('ckpt'), tuple(job['batches']))
  raise ValueError(f"benchmarks/bench.py: unknown child job kind {job['kind']!r}")


# --- printing ---

def _stage_row(name: str, s: dict) -> str:
  loop = f"{s['loop_step_s'] * 1e3:8.2f}" if 'loop_step_s' in s else f"{'':8s}"
  flops = (f"{s['flops'] / 1e9:8.3f} {s['flop_per_s'] / 1e9:7.2f} {100 * s['flop_fraction']:6.1f}%"
           if 'flops' in s else '')
  return (f"  {name:<22s}{s['compile_s']:8.2f} {s['step_s'] * 1e3:8.2f} {loop} "
          f"{s['samples_per_s']:10.0f}  {flops}")


def print_config(r: dict) -> None:
  peak = r['matmul_flop_per_s']
  print(f"\n{r['config']}: {r['devices']} device(s); matmul f32 2048^2: {peak / 1e9:.1f} GFLOP/s; "
        f"peak host memory {r['peak_host_mib']:.0f} MiB; stage-2 setup (features, adapter) "
        f"{r['stage2_setup_s']:.1f} s")
  print(f"  {'':22s}{'compile':>8s} {'step ms':>8s} {'loop ms':>8s} {'samples/s':>10s}  "
        f"{'GFLOP':>8s} {'GFLOP/s':>7s} {'of mm':>7s}")
  print(_stage_row(f"stage 1 (B={r['stage1']['batch_size']})", r['stage1']))
  print(_stage_row(f"stage 2 (B={r['stage2']['batch_size']})", r['stage2']))
  if 'stage2_wide' in r:
    print(_stage_row(f"stage 2 (B={r['stage2_wide']['batch_size']})", r['stage2_wide']))
  if 'evaluation' in r:
    e = r['evaluation']
    print(f"  {'eval decode+encode':<22s}{e['decode_compile_s'] + e['encode_compile_s']:8.2f} "
          f"{e['step_s'] * 1e3:8.2f} {'':8s} {e['samples_per_s']:10.0f}  (test split, n={e['n']}; "
          f"compile decode {e['decode_compile_s']:.2f} s, encode {e['encode_compile_s']:.2f} s)")
  for name in ('stage1', 'stage2'):
    s = r[name]
    print(f"  {name}: building a batch on the host {s['batch_s'] * 1e3:.2f} ms"
          + (f"; {name} fused in lax.scan: {s['fused_step_s'] * 1e3:.2f} ms/step "
             f"(compile {s['fused_compile_s']:.1f} s)" if 'fused_step_s' in s else ''))


def print_scaling(spec: str, rows: dict) -> None:
  base = rows['1']
  print(f'\nscaling, {spec} (fake CPU devices on one host; same global batch):')
  print(f"  {'devices':>7s} {'stage1 ms':>10s} {'ratio':>6s} {'stage2 ms':>10s} {'ratio':>6s} "
        f"{'max|dloss| s1':>14s} {'max|dloss| s2':>14s}")
  for n, r in rows.items():
    cells = []
    for name in ('stage1', 'stage2'):
      step, ratio = r[name]['step_s'], r[name]['step_s'] / base[name]['step_s']
      cells.append(f'{step * 1e3:10.2f} {ratio:6.2f}')
    diffs = [max(abs(a - b) for a, b in zip(r[name]['losses'], base[name]['losses']))
             for name in ('stage1', 'stage2')]
    print(f"  {n:>7s} {' '.join(cells)} {diffs[0]:14.2e} {diffs[1]:14.2e}")


def print_throughput(r: dict) -> None:
  source = r['ckpt'] if r['train_s'] == 0 else f"{r['config']}, trained in {r['train_s']:.0f} s"
  print(f"\nModel throughput ({source}; images {tuple(r['image_shape'])}, "
        f"{r['num_units']} units):")
  print(f"  {'batch':>6s} {'decode/s':>10s} {'ms':>8s} {'encode/s':>10s} {'ms':>8s} "
        f"{'compile d/e s':>14s}")
  for size, row in r['batches'].items():
    d, e = row['decode'], row['encode']
    print(f"  {size:>6s} {d['samples_per_s']:10.0f} {d['step_s'] * 1e3:8.2f} "
          f"{e['samples_per_s']:10.0f} {e['step_s'] * 1e3:8.2f} "
          f"{d['compile_s']:6.2f}/{e['compile_s']:.2f}")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--configs', default='fmri,spikes',
                      help='comma-separated configs/<name>.py (name:arg allowed, e.g. fmri:smoke)')
  parser.add_argument('--steps', type=int, default=5, help='timed steps per stage (after warm-up)')
  parser.add_argument('--out', default='', help='write every figure to this JSON file')
  parser.add_argument('--scaling', action='store_true',
                      help=f'also time the steps on {SCALING_DEVICES} fake CPU devices')
  parser.add_argument('--throughput', action='store_true',
                      help=f'also time Model.decode/encode at batch sizes {THROUGHPUT_BATCHES}')
  parser.add_argument('--ckpt', default='', help='--throughput: a trained workdir to load')
  parser.add_argument('--fused', type=int, default=10,
                      help='also time stage 2 run this many steps per lax.scan (0: skip)')
  parser.add_argument('--wide-batch', type=int, default=256,
                      help='also time stage 2 at this batch size (0: skip)')
  parser.add_argument('--child', default='', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(_MARK + json.dumps(_child(json.loads(args.child))), flush=True)
    return 0
  if args.steps < 1:
    parser.error('--steps must be >= 1')
  specs = [s for s in args.configs.split(',') if s]
  start = time.perf_counter()
  results = {'configs': {}, 'argv': sys.argv[1:]}
  for spec in specs:
    r = _spawn({'kind': 'config', 'config': spec, 'steps': args.steps, 'fused': args.fused,
                'wide_batch': args.wide_batch})
    results['configs'][spec] = r
    print_config(r)
  if args.scaling:
    results['scaling'] = {}
    for spec in specs[:1]:
      rows = {str(n): _spawn({'kind': 'config', 'config': spec, 'steps': args.steps,
                              'evaluation': False}, devices=n) for n in SCALING_DEVICES}
      results['scaling'][spec] = rows
      print_scaling(spec, rows)
  if args.throughput:
    spec = f"{specs[0].partition(':')[0]}:smoke"
    r = _spawn({'kind': 'throughput', 'config': spec, 'ckpt': args.ckpt or None,
                'batches': list(THROUGHPUT_BATCHES)})
    results['throughput'] = r
    print_throughput(r)
  results['wall_s'] = time.perf_counter() - start
  print(f"\ntotal wall time {results['wall_s']:.0f} s")
  if args.out:
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f'wrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
