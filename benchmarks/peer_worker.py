"""The PyTorch side of benchmarks/vs_torch.py: a long-lived process that runs the steps of
benchmarks/torch_port, so torch and JAX never share a process (or its threads).

  python benchmarks/peer_worker.py [--threads 2]

Reads one JSON command per line on stdin and answers one JSON line on stdout:
  {"cmd": "setup", "row": "s1_b32", "mode": "eager", "spec": {...}}   builds the step (compiling
      it in 'compiled' mode) and warms it up; `spec` gives the sizes and the stage's config fields
      (see vs_torch.JaxRows.spec)
  {"cmd": "steps", "row": ..., "mode": ..., "n": 20}   seconds of n steps, each timed alone, on
                                                       batches built beforehand
  {"cmd": "loop", "row": ..., "mode": ..., "n": 20}    mean seconds per step of n steps that each
                                                       build their batch, as a training loop does
  {"cmd": "run", "mode": "eager", "stages": [{"spec": {...}, "steps": 1000}, ...]}   a whole run:
      builds each stage in turn and runs its steps as `loop` does, with no warm-up; the seconds of
      each stage's build and steps
The data are random stand-ins with the row's shapes (step time does not depend on the values).
"""

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

WARMUP = 3


class Batches:
  """Row `i` of batch `step` as flig_jax's BatchStream picks it: one seeded permutation per epoch,
  cut into batches (rows repeat within a batch when there are fewer rows than one batch)."""

  def __init__(self, arrays: dict, batch_size: int, seed: int = 0):
    self.arrays, self.batch_size, self.seed = arrays, batch_size, seed
    self.n = len(next(iter(arrays.values())))

  def batch(self, step: int) -> dict:
    import torch  # pylint: disable=g-import-not-at-top
    pos = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
    if self.n >= self.batch_size:  # whole batches per epoch; the remainder is dropped
      per_epoch = self.n // self.batch_size
      epoch, within = divmod(step, per_epoch)
      pos = epoch * self.n + within * self.batch_size + np.arange(self.batch_size)
    epochs, offsets = np.divmod(pos, self.n)
    rows = np.concatenate([np.random.default_rng([self.seed, int(e)]).permutation(self.n)[
        offsets[epochs == e]] for e in np.unique(epochs)])
    index = torch.from_numpy(rows)
    return {k: v[index] for k, v in self.arrays.items()}


def _data(spec: dict) -> dict:
  """Random stand-ins: smooth images in [0, 1] (N, H, W, C), standardised features (N, D) and
  adapted responses (N, D), zero past the adapter's k signal coordinates."""
  import torch  # pylint: disable=g-import-not-at-top
  g = torch.Generator().manual_seed(0)
  n, (h, w, c), d, k = spec['num_train'], spec['image_shape'], spec['feature_dim'], spec['k']
  coarse = torch.randn(n, c, -(-h // 4), -(-w // 4), generator=g)
  images = torch.sigmoid(3.0 * torch.nn.functional.interpolate(
      coarse, size=(h, w), mode='bilinear', align_corners=False)).permute(0, 2, 3, 1)
  features = torch.randn(n, d, generator=g)
  adapted = 0.6 * features + 0.8 * torch.randn(n, d, generator=g)
  adapted[:, k:] = 0.0
  return {'images': images.contiguous(), 'features': features, 'adapted': adapted}


class Worker:
  """The port's steps, built on demand and kept (compiled) for the life of the process."""

  def __init__(self):
    self.runs = {}  # (row, mode) -> [run(batch) -> loss, batches, next batch index]

  @staticmethod
  def _build(spec: dict, mode: str):
    import torch  # pylint: disable=g-import-not-at-top

    from benchmarks.torch_port import nets, steps  # pylint: disable=g-import-not-at-top
    torch.manual_seed(0)
    data = _data(spec)
    cfg = types.SimpleNamespace(**spec['cfg'])
    image_shape, d = tuple(spec['image_shape']), spec['feature_dim']
    if spec['stage'] == 1:
      ae = nets.Autoencoder(image_shape, d, tuple(spec['cae_widths']))
      trainer = steps.Stage1(ae, cfg, mode)
      stream = Batches({'images': data['images']}, spec['batch_size'])
      return lambda b: trainer.step(b['images'])['loss'], stream
    flow = nets.Flow(d, spec['flow_blocks'], spec['flow_hidden'],
                     augmented=spec['flow_type'] == 'augmented',
                     dropout=spec.get('flow_dropout', 0.0))
    flow.data_init(data['features'][:spec['batch_size']])
    disc = nets.Discriminator(d, spec['disc_hidden'])
    mask = (torch.arange(d) < spec['k']).float()
    trainer = steps.Stage2(flow, disc, mask, cfg, mode)
    stream = Batches({'features': data['features'], 'adapted': data['adapted']},
                     spec['batch_size'])
    return lambda b: trainer.step(b['features'], b['adapted'])['loss'], stream

  def setup(self, row: str, mode: str, spec: dict) -> dict:
    start = time.perf_counter()
    run, stream = self._build(spec, mode)
    for i in range(WARMUP):
      float(run(stream.batch(i)))
    self.runs[(row, mode)] = [run, stream, WARMUP]
    return {'setup_s': time.perf_counter() - start}

  def _next(self, key, count: int) -> range:
    entry = self.runs[key]
    entry[2] += count
    return range(entry[2] - count, entry[2])

  def steps_timed(self, row: str, mode: str, n: int) -> dict:
    run, stream, _ = self.runs[(row, mode)]
    batches = [stream.batch(i) for i in self._next((row, mode), n)]
    times = []
    for b in batches:
      start = time.perf_counter()
      float(run(b))  # CPU torch is synchronous; reading the loss is the same wait as JAX's
      times.append(time.perf_counter() - start)
    return {'times': times}

  def loop(self, row: str, mode: str, n: int) -> dict:
    run, stream, _ = self.runs[(row, mode)]
    start = time.perf_counter()
    for i in self._next((row, mode), n):
      loss = run(stream.batch(i))
    float(loss)
    return {'step_s': (time.perf_counter() - start) / n}


  def run(self, mode: str, stages: list[dict]) -> dict:
    out = []
    for stage in stages:
      start = time.perf_counter()
      run, stream = self._build(stage['spec'], mode)
      built, loss = time.perf_counter(), 0.0
      for i in range(stage['steps']):
        loss = run(stream.batch(i))
      float(loss)  # CPU torch is synchronous; reading the last loss waits for the stage
      out.append({'build_s': built - start, 'steps_s': time.perf_counter() - built})
    return {'stages': out}


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  args = parser.parse_args()
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  worker = Worker()
  print(json.dumps({'ready': True, 'torch': torch.__version__,
                    'threads': torch.get_num_threads()}), flush=True)
  for line in sys.stdin:
    job = json.loads(line)
    try:
      if job['cmd'] == 'setup':
        out = worker.setup(job['row'], job['mode'], job['spec'])
      elif job['cmd'] == 'steps':
        out = worker.steps_timed(job['row'], job['mode'], job['n'])
      elif job['cmd'] == 'loop':
        out = worker.loop(job['row'], job['mode'], job['n'])
      elif job['cmd'] == 'run':
        out = worker.run(job['mode'], job['stages'])
      else:
        out = {'error': f"unknown command {job['cmd']!r}"}
    except Exception as e:  # noqa: BLE001 -- reported to the driver, which stops with it
      out = {'error': f'{type(e).__name__}: {e}'}
    print(json.dumps(out), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
