"""flig_jax's training steps under several XLA_FLAGS settings, interleaved.

  python benchmarks/xla_flags.py [--rows s1_b32,s1_v4] [--rounds 6] [--steps 10] -- \
      '' '--xla_cpu_use_onednn=true' '--xla_cpu_use_xnnpack=false'

XLA reads its flags once per process, so each setting (the first is the baseline; '' is XLA's
defaults) gets a long-lived worker process that builds the rows' steps as `benchmarks/vs_torch.py`
does (the steps `train.py` runs, on the real data in $FLIG_DATA_DIR). Each round then times, row by
row and setting by setting in a rotating order, a block of steps each waited on alone (`step`) and
a block run as a training loop (`loop`); only one worker runs at a time. Prints the median ms per
step of each setting and its median ratio to the baseline over rounds (with the range of the
per-round ratios), so every setting sees the same machine load.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from benchmarks import vs_torch  # after the path is set


def worker() -> int:
  """Builds rows on demand and times them: one JSON command per stdin line, one answer each."""
  rows = vs_torch.JaxRows(Path(tempfile.mkdtemp(prefix='xla_flags_')))
  print(json.dumps({'ready': True}), flush=True)
  for line in sys.stdin:
    job = json.loads(line)
    if job['cmd'] == 'setup':
      out = rows.setup(job['row'])
    elif job['cmd'] == 'step':
      out = {'s': statistics.median(rows.steps(job['row'], job['n']))}
    else:
      out = {'s': rows.loop(job['row'], job['n'])[0]}
    print(json.dumps(out), flush=True)
  return 0


class Worker(vs_torch.Peer):
  """A worker process running under one XLA_FLAGS value (JSON lines in and out, as the peer)."""

  def __init__(self, flags: str):  # pylint: disable=super-init-not-called
    env = {**os.environ, 'XLA_FLAGS': flags, 'PYTHONPATH': str(ROOT)}
    env.setdefault('JAX_THREEFRY_PARTITIONABLE', '0')  # as train.py runs
    self.proc = subprocess.Popen([sys.executable, __file__, '--worker'], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env=env)
    self._read()

  def _read(self) -> dict:
    while True:  # progress lines of the set-up may come first
      line = self.proc.stdout.readline()
      if not line:
        raise RuntimeError(f'benchmarks/xla_flags.py: a worker exited (status '
                           f'{self.proc.wait()}); see its stderr above')
      if line.startswith('{'):
        return json.loads(line)


def main(argv: list[str] | None = None) -> int:
  if argv is None and sys.argv[1:] == ['--worker']:
    return worker()
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--rows', default='s1_b32,s1_v4', help=f'of {",".join(vs_torch.ROWS)}')
  parser.add_argument('--rounds', type=int, default=6)
  parser.add_argument('--steps', type=int, default=10, help='steps per timed block')
  parser.add_argument('settings', nargs='*', help="XLA_FLAGS values, the baseline first")
  args = parser.parse_args(argv)
  rows = [r for r in args.rows.split(',') if r]
  if any(r not in vs_torch.ROWS for r in rows):
    parser.error(f'unknown rows in {args.rows!r}; known: {", ".join(vs_torch.ROWS)}')
  settings = args.settings or ['']
  workers = []
  try:
    for flags in settings:
      workers.append(Worker(flags))
      for row in rows:
        workers[-1](cmd='setup', row=row)
    times = {(i, r, k): [] for i in range(len(settings)) for r in rows for k in ('step', 'loop')}
    load = [os.getloadavg()[0]]
    for rnd in range(args.rounds):
      for row in rows:
        order = list(range(len(settings)))
        order = order[rnd % len(order):] + order[:rnd % len(order)]
        for i in order:
          for kind in ('step', 'loop'):
            times[(i, row, kind)].append(workers[i](cmd=kind, row=row, n=args.steps)['s'])
      load.append(os.getloadavg()[0])
      print(f'  round {rnd + 1}/{args.rounds} (load {load[-1]:.1f})', flush=True)
  finally:
    for w in workers:
      w.close()
  print(f'\nmedian ms per step over {args.rounds} interleaved rounds (load {min(load):.1f}-'
        f'{max(load):.1f}); ratio: median over rounds of setting / baseline (range)\n')
  for row in rows:
    for kind in ('step', 'loop'):
      for i, flags in enumerate(settings):
        own, base = times[(i, row, kind)], times[(0, row, kind)]
        ratios = [a / b for a, b in zip(own, base)]
        print(f'{row:7s} {kind:4s} {statistics.median(own) * 1e3:8.2f}  '
              f'x{statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})  '
              f'{flags or "(defaults)"}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
