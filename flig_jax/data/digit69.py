"""Reads digit69 (fMRI of 100 handwritten 6s and 9s, 28x28, V1-V3 voxels) from its .mat file,
fetching the public copy into the cache when no local copy is found."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from flig_jax.data import locate
from flig_jax.data.dataset import DataError, Split, check_split, to_unit_images

NAME = 'digit69'
FILE_NAME = 'digit69_28x28.mat'
SHA256 = '44513e09ad2398566aedd550088b817a3c0bf9cd7873f87078ecd7fdf170b22d'
URLS = [
    ('https://raw.githubusercontent.com/ChangdeDu/DGMM/'
     '286503c79b010fd285065da7092ca43f873c1f58/digit69_28x28.mat'),
    'https://raw.githubusercontent.com/ChangdeDu/DGMM/master/digit69_28x28.mat',
]
SIDE = 28
KEYS = ('stimTrn', 'stimTest', 'fmriTrn', 'fmriTest')
LABEL_KEYS = ('labelTrn', 'labelTest')
LABEL_NAMES = {1: '6', 2: '9'}  # As stored: label 1 marks the 6s, label 2 the 9s.


def find_file(dir: str | None = None, *, allow_fetch: bool = True) -> pathlib.Path:
  """Returns the path of digit69_28x28.mat.

  Looks in `dir` (the dataset's own folder) if given, else in $FLIG_DATA_DIR/digit69, else in the
  cache, where the public copy is downloaded once (sha256 checked) when `allow_fetch`.

  Raises:
    DataError: not found (and, without `dir`, not fetchable).
  """
  try:
    return locate.find_dataset_dir(NAME, dir, FILE_NAME) / FILE_NAME
  except DataError as e:
    if dir or not allow_fetch:
      raise
    not_found = e
  try:
    return locate.fetch(URLS, locate.cache_root() / NAME / FILE_NAME, SHA256)
  except DataError as e:
    raise DataError(f'{not_found} Fetching the public copy failed too: {e}') from e


def stimuli_to_images(rows: np.ndarray, source: str, key: str) -> np.ndarray:
  """(N, 784) column-major pixel rows -> upright (N, 28, 28, 1) float32 images in [0, 1]."""
  if rows.ndim != 2 or rows.shape[1] != SIDE * SIDE:
    raise DataError(f'{source}: {key!r} has shape {rows.shape}, want (N, {SIDE * SIDE})')
  images = to_unit_images(rows, source, key)
  # Rows are stored column-major (MATLAB order): reshape then transpose, or digits lie sideways.
  return images.reshape(-1, SIDE, SIDE).transpose(0, 2, 1)[..., None]


def read(path: str | pathlib.Path) -> tuple[Split, Split, dict[str, Any]]:
  """Reads digit69 from `path` as stored: 90 train and 10 test pairs.

  Returns:
    (train, test, meta): images (N, 28, 28, 1) in [0, 1], responses (N, 3092) float32 and labels
    (1 = six, 2 = nine); meta holds 'source', 'label_names' and 'response_kind'.

  Raises:
    DataError: unreadable file, missing key, wrong shape, counts that disagree, NaN/Inf, an
      empty split.
  """
  import scipy.io  # pylint: disable=g-import-not-at-top

  source = str(path)
  if not pathlib.Path(path).is_file():
    raise DataError(f'{source}: no such file')
  try:
    mat = scipy.io.loadmat(source)
  except Exception as e:  # scipy raises several types for a corrupt file; all mean the same here.
    raise DataError(f'{source}: cannot read as a MATLAB .mat file ({e})') from e
  missing = [k for k in KEYS if k not in mat]
  if missing:
    present = sorted(k for k in mat if not k.startswith('__'))
    raise DataError(f'{source}: missing key(s) {missing}; the file holds {present}')
  splits = []
  for split_name, stim_key, fmri_key, label_key in (
      ('train', 'stimTrn', 'fmriTrn', 'labelTrn'), ('test', 'stimTest', 'fmriTest', 'labelTest')):
    stim, fmri = np.asarray(mat[stim_key]), np.asarray(mat[fmri_key])
    if fmri.ndim != 2:
      raise DataError(f'{source}: {fmri_key!r} has shape {fmri.shape}, want (N, voxels)')
    if len(stim) != len(fmri):
      raise DataError(f'{source}: {stim_key!r} has {len(stim)} stimuli but {fmri_key!r} has '
                      f'{len(fmri)} responses')
    if len(stim) == 0:
      raise DataError(f'{source}: the {split_name} split ({stim_key!r}) is empty')
    images = stimuli_to_images(stim, source, stim_key)
    labels = np.asarray(mat[label_key]) if label_key in mat else None
    splits.append(check_split(source, split_name, images, fmri, labels))
  meta = {'source': source, 'label_names': dict(LABEL_NAMES), 'response_kind': 'fmri'}
  return splits[0], splits[1], meta
