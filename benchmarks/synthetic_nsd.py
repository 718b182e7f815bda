"""An NSD-sized synthetic paired set for the cost curves: written once as array_record files (one
record per pair: the float32 image bytes, then the float32 response bytes) and read back through
grain row by row, so a run never holds all the images in memory.

TFDS's builders (flig_jax/data/tfds_builders.py) write the same file format, but their per-example
protobuf serialisation ran at about 15 pairs/s for 64 px images and 15k voxels here (11 minutes for
10k pairs); raw records write in seconds.

Pairs are generated in chunks from (seed, chunk): one to three soft bars and blobs
(`synthetic.make_images`) tinted with a random colour, and responses that are a fixed random linear
map of the 8x8-pooled image plus noise (so the pairs carry signal, as voxels do).

  source, write_s = prepare('/tmp/flig_nsd', num_pairs=10_000, image_size=64, num_units=15_000)
  pair = source[0]   # {'image': (64, 64, 3) float32 in [0, 1], 'response': (15000,) float32}
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from flig_jax.data import synthetic

POOL = 8      # responses see the image pooled to POOL x POOL x 3
CHUNK = 256   # pairs generated at once
RECORDS = 'pairs.array_record'


class PairSource:
  """Random access to the pairs of one written set (a grain `RandomAccessDataSource`)."""

  def __init__(self, folder: Path):
    import grain  # pylint: disable=g-import-not-at-top
    meta = json.loads((folder / 'meta.json').read_text())
    self.image_shape = tuple(meta['image_shape'])
    self.num_units = int(meta['num_units'])
    self._image_size = int(np.prod(self.image_shape))
    self._records = grain.sources.ArrayRecordDataSource([str(folder / RECORDS)])

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    flat = np.frombuffer(self._records[index], np.float32)
    return {'image': flat[:self._image_size].reshape(self.image_shape),
            'response': flat[self._image_size:]}


def _chunk(start: int, count: int, image_size: int, weights: np.ndarray,
           seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng([seed, start])
  grey = synthetic.make_images(count, image_size, rng)                       # (n, H, W, 1)
  images = grey * rng.uniform(0.3, 1.0, size=(count, 1, 1, 3)).astype(np.float32)
  cell = image_size // POOL
  pooled = images.reshape(count, POOL, cell, POOL, cell, 3).mean((2, 4)).reshape(count, -1)
  noise = rng.standard_normal((count, weights.shape[1]), dtype=np.float32)
  return images.astype(np.float32), (pooled @ weights + 0.5 * noise).astype(np.float32)


def write(folder: Path, num_pairs: int, image_size: int, num_units: int, seed: int = 0) -> None:
  """Writes `num_pairs` pairs into `folder` (meta.json last, so a half-written set is not used)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  if image_size % POOL:
    raise ValueError(f'benchmarks/synthetic_nsd.py: image_size must be a multiple of {POOL}, '
                     f'got {image_size}')
  folder.mkdir(parents=True, exist_ok=True)
  weights = np.random.default_rng([seed, 2 ** 31]).standard_normal(
      (POOL * POOL * 3, num_units), dtype=np.float32) / POOL
  writer = array_record_module.ArrayRecordWriter(str(folder / RECORDS), 'group_size:1')
  for start in range(0, num_pairs, CHUNK):
    images, responses = _chunk(start, min(CHUNK, num_pairs - start), image_size, weights, seed)
    for image, response in zip(images, responses):
      writer.write(image.tobytes() + response.tobytes())
  writer.close()
  meta = {'num_pairs': num_pairs, 'image_shape': [image_size, image_size, 3],
          'num_units': num_units, 'seed': seed}
  (folder / 'meta.json').write_text(json.dumps(meta))


def prepare(data_dir: str, num_pairs: int, image_size: int,
            num_units: int) -> tuple[PairSource, float]:
  """Writes the set once (kept under `data_dir` for later runs) and opens it.

  Returns:
    The pairs and the seconds spent writing them (0.0 when they were already there).
  """
  folder = Path(data_dir) / f'nsd_n{num_pairs}_px{image_size}_u{num_units}'
  write_s = 0.0
  if not (folder / 'meta.json').is_file():
    start = time.perf_counter()
    write(folder, num_pairs, image_size, num_units)
    write_s = time.perf_counter() - start
  return PairSource(folder), write_s


def batches(source: PairSource, batch_size: int, shuffle_seed: int | None = 0) -> Any:
  """A grain `MapDataset` of batches of the pairs, read from disk when indexed: shuffled with
  `shuffle_seed` (a short last batch dropped), or in order when it is None (all pairs kept)."""
  import grain  # pylint: disable=g-import-not-at-top
  dataset = grain.MapDataset.source(source)
  if shuffle_seed is None:
    return dataset.batch(batch_size)
  return dataset.shuffle(seed=shuffle_seed).batch(batch_size, drop_remainder=True)
