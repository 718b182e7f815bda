"""`load` and `from_config`: one entry point that reads any dataset by name, resizes it if asked,
and carves the validation split."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from flig_jax.data import cowley_v4, digit69, npz, synthetic
from flig_jax.data.dataset import DataError, Dataset, Split, assemble, fold_ids

SYNTHETIC_OPTIONS = ('synthetic_mode', 'num_train', 'num_test', 'num_units', 'noise_std',
                     'nonlinearity')


@dataclasses.dataclass(frozen=True)
class Request:
  """What a loader may use (each reads the fields it needs): see `load` for their meanings."""
  dir: str | None
  path: str | None
  session: str | None
  image_size: int | None
  grayscale: bool
  seed: int
  split_seed: int
  synthetic_options: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Loader:
  """A dataset's loader: `read(request)` gives (train, test, meta) as stored; `sized`: it makes
  its images at `request.image_size` (config.data.image_size applies; others keep their size
  unless `load` is asked to resize)."""
  read: Callable[[Request], tuple[Split, Split, dict[str, Any]]]
  sized: bool = False


def _npz(r: Request) -> tuple[Split, Split, dict[str, Any]]:
  if not r.path:
    raise DataError('npz: no file given; set --config.data.path (or path=) to an .npz file')
  return npz.read(r.path, split_seed=r.split_seed)


# Dataset name -> its loader, the one list of datasets (config.data.name accepts these). A new
# dataset is a module that reads its files into train and test `Split`s, and one line here.
LOADERS: dict[str, Loader] = {
    'digit69': Loader(lambda r: digit69.read(digit69.find_file(r.dir))),
    'cowley_v4': Loader(lambda r: cowley_v4.read(cowley_v4.find_dir(r.dir), r.session,
                                                 image_size=r.image_size,
                                                 grayscale=r.grayscale), sized=True),
    'npz': Loader(_npz),
    'synthetic': Loader(lambda r: synthetic.generate(image_size=r.image_size, seed=r.seed,
                                                     **r.synthetic_options), sized=True),
}


def resize_split(split: Split, size: int) -> Split:
  """Resizes a split's images to size x size with PIL's antialiased bilinear filter."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  n, h, w, c = split.images.shape
  if (h, w) == (size, size):
    return split
  out = np.empty((n, size, size, c), np.float32)
  for i in range(n):
    for j in range(c):
      img = Image.fromarray(np.ascontiguousarray(split.images[i, :, :, j]), mode='F')
      out[i, :, :, j] = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
  return Split(np.clip(out, 0.0, 1.0), split.responses, split.labels)


def read_splits(name: str, *, dir: str | None, path: str | None, session: str | None,
                image_size: int | None, grayscale: bool, seed: int,
                synthetic_options: dict[str, Any],
                split_seed: int = 0) -> tuple[Split, Split, dict[str, Any]]:
  """Reads dataset `name` as stored: (train, test, meta). The parser `load` and TFDS share."""
  if name not in LOADERS:
    raise DataError(f'unknown dataset {name!r}; choose one of {tuple(LOADERS)}')
  if path and name != 'npz':
    raise DataError(f'path {path!r} is read only by the npz dataset, not {name!r}; '
                    'add --config.data.name=npz (or load it with name "npz")')
  unknown = sorted(set(synthetic_options) - set(SYNTHETIC_OPTIONS))
  if unknown:
    raise DataError(f'unknown data option(s) {unknown}; synthetic options are {SYNTHETIC_OPTIONS}')
  if synthetic_options and name != 'synthetic':
    raise DataError(f'option(s) {sorted(synthetic_options)} apply only to the synthetic dataset, '
                    f'not {name!r}')
  return LOADERS[name].read(Request(dir=dir, path=path, session=session, image_size=image_size,
                                    grayscale=grayscale, seed=seed, split_seed=split_seed,
                                    synthetic_options=synthetic_options))


def load(name: str, *, dir: str | None = None, path: str | None = None,
         session: str | None = None, image_size: int | None = None, grayscale: bool = True,
         seed: int = 0, val_fraction: float = 0.0, split_seed: int = 0,
         **synthetic_options: Any) -> Dataset:
  """Loads a dataset: train, validation (carved from train) and test splits.

  Args:
    name: a key of `LOADERS` ('digit69', 'cowley_v4', 'npz', 'synthetic').
    dir: the dataset's own folder (else $FLIG_DATA_DIR/<name>, else the cache; digit69 is fetched
      into the cache once).
    path: npz: the file.
    session: cowley_v4: e.g. '190927'.
    image_size: square side; cowley_v4 (default 32) and synthetic (default 16) are made at this
      size, digit69 and npz images are resized to it when given.
    grayscale: cowley_v4: one channel (True) or RGB.
    seed: seeds the validation carve and synthetic data.
    val_fraction: fraction of train moved to validation; 0 gives an empty validation split.
    split_seed: npz: draws the test split when the file has none (independent of `seed`, so
      that runs of every training seed are scored on one test split).
    **synthetic_options: synthetic only: synthetic_mode, num_train, num_test, num_units, noise_std,
      nonlinearity (see `synthetic.generate`).

  Returns:
    A `Dataset`; images float32 (N, H, W, C) in [0, 1], responses float32 (N, U).

  Raises:
    DataError: unknown name or option, missing data, bad file contents.
  """
  train, test, meta = read_splits(name, dir=dir, path=path, session=session,
                                  image_size=image_size, grayscale=grayscale, seed=seed,
                                  synthetic_options=synthetic_options, split_seed=split_seed)
  if image_size is not None and not LOADERS[name].sized:
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
      raise DataError(f'{name}: image_size must be a positive integer, got {image_size!r}')
    train, test = resize_split(train, int(image_size)), resize_split(test, int(image_size))
    meta['image_size'] = int(image_size)
  return assemble(name, train, test, meta, val_fraction=val_fraction, seed=seed)


def from_config(config: Any) -> Dataset:
  """Loads the dataset a config names (config.data.* and config.seed; see configs/default.py).

  `config.data.image_size` applies to cowley_v4 and synthetic only; digit69 and npz keep their
  stored size. Empty strings mean "not set". A config saved without `data.split_seed` drew an npz
  test split with `config.seed`, and gets that split again.
  """
  d = config.data
  name = d.name
  kwargs = {
      'dir': d.get('dir') or None,
      'path': d.get('path') or None,
      'session': str(d.get('session') or '') or None,
      'grayscale': bool(d.get('grayscale', True)),
      'seed': int(config.seed),
      'val_fraction': float(d.get('val_fraction', 0.0)),
      'split_seed': int(d.get('split_seed', config.seed)),
  }
  if LOADERS[name].sized and d.get('image_size'):
    kwargs['image_size'] = int(d.image_size)
  if name == 'synthetic':
    kwargs.update({k: d[k] for k in SYNTHETIC_OPTIONS if k in d})
  return load(name, **kwargs)


def config_fold_ids(config: Any, train: Split) -> np.ndarray | None:
  """(N,) the cross-validation fold of each training pair for a config (`data.folds` folds
  carved by stimulus, seeded by `config.seed`), or None when `data.folds` < 2. Training and
  evaluation both call this, so the folds that choose FLIG's steps also choose the baselines'
  penalties."""
  folds = int(config.data.get('folds', 0))
  return fold_ids(train, folds, int(config.seed)) if folds >= 2 else None
