"""The PyTorch side of benchmarks/vs_torch.py: a long-lived process, run with the peer's Python.

  <peer python> benchmarks/peer_worker.py --peer-dir ../shared/peer_torch [--threads 2]

Reads one JSON command per line on stdin and answers one JSON line on stdout:
  {"cmd": "setup", "row": "s1_b32", "mode": "eager"}   builds the step (compiling it), warm-up
  {"cmd": "steps", "row": ..., "mode": ..., "n": 20}   seconds of n steps, each timed alone, on
                                                       batches built beforehand
  {"cmd": "loop", "row": ..., "mode": ..., "n": 20}    mean seconds per step of n steps that each
                                                       build their batch, as a training loop does
Rows: s1_b32 (digit69, 28x28), s1_v4 (32x32 grey, V4 sizes), s2_b32, s2_b256. Modes: eager,
compiled (torch.compile of the losses and optimiser steps), whole (stage 2 only: the entire step
as one torch.compile graph). Imports only torch, numpy and the peer's own modules.
"""

import argparse
import json
import os
import sys
import time

WARMUP = 3


def _images(n: int, size: int, seed: int = 0):
  """Smooth random images in [0, 1], (n, 1, size, size), as the peer's own random data."""
  import torch  # pylint: disable=g-import-not-at-top
  g = torch.Generator().manual_seed(seed)
  coarse = torch.randn(n, 1, size // 4, size // 4, generator=g)
  return torch.sigmoid(3.0 * torch.nn.functional.interpolate(
      coarse, size=(size, size), mode='bilinear', align_corners=False)).contiguous()


class Worker:
  """The peer's steps, built on demand and kept (compiled) for the life of the process."""

  def __init__(self, peer_dir: str):
    sys.path.insert(0, os.path.abspath(peer_dir))
    import bench  # pylint: disable=g-import-not-at-top
    import steps  # pylint: disable=g-import-not-at-top
    self.bench, self.steps = bench, steps
    self.data = bench.random_data()
    self.runs = {}   # (row, mode) -> (run(batch), stream, next batch index)

  def _build(self, row: str, mode: str):
    bench, steps = self.bench, self.steps
    if row == 's1_v4':  # the peer is written for 28x28; its modules read IMAGE_SHAPE when built
      steps.IMAGE_SHAPE = (32, 32, 1)
      try:
        stage = steps.Stage1(mode)
      finally:
        steps.IMAGE_SHAPE = (28, 28, 1)
      stream = bench.Batches({'images': _images(864, 32)}, 32, seed=0)
      return lambda b: stage.step(b['images']), stream
    variant = 'whole' if mode == 'whole' else 'func'
    make = bench._make  # pylint: disable=protected-access
    _, stream, run = make(row, 'compiled' if mode == 'whole' else mode, variant, self.data)
    return run, stream

  def setup(self, row: str, mode: str) -> dict:
    start = time.perf_counter()
    run, stream = self._build(row, mode)
    for i in range(WARMUP):
      float(run(stream.batch(i))[0])
    self.runs[(row, mode)] = [run, stream, WARMUP]
    return {'setup_s': time.perf_counter() - start}

  def _next(self, key, count: int) -> list:
    entry = self.runs[key]
    first, entry[2] = entry[2], entry[2] + count
    return list(range(first, first + count))

  def steps_timed(self, row: str, mode: str, n: int) -> dict:
    run, stream, _ = self.runs[(row, mode)]
    batches = [stream.batch(i) for i in self._next((row, mode), n)]
    times = []
    for b in batches:
      start = time.perf_counter()
      float(run(b)[0])   # CPU PyTorch is synchronous; reading the loss is the same wait as JAX's
      times.append(time.perf_counter() - start)
    return {'times': times}

  def loop(self, row: str, mode: str, n: int) -> dict:
    run, stream, _ = self.runs[(row, mode)]
    indices = self._next((row, mode), n)
    start = time.perf_counter()
    for i in indices:
      out = run(stream.batch(i))
    float(out[0])
    return {'step_s': (time.perf_counter() - start) / n}


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument('--peer-dir', required=True)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  args = parser.parse_args()
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  worker = Worker(args.peer_dir)
  print(json.dumps({'ready': True, 'torch': torch.__version__,
                    'threads': torch.get_num_threads()}), flush=True)
  for line in sys.stdin:
    job = json.loads(line)
    try:
      if job['cmd'] == 'setup':
        out = worker.setup(job['row'], job['mode'])
      elif job['cmd'] == 'steps':
        out = worker.steps_timed(job['row'], job['mode'], job['n'])
      elif job['cmd'] == 'loop':
        out = worker.loop(job['row'], job['mode'], job['n'])
      else:
        out = {'error': f"unknown command {job['cmd']!r}"}
    except Exception as e:  # noqa: BLE001 -- reported to the driver, which stops with it
      out = {'error': f'{type(e).__name__}: {e}'}
    print(json.dumps(out), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
