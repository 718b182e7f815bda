"""Reads any paired stimulus/response set saved as one .npz file (`stimuli`, `responses`, optional
`split` and `labels`)."""

from __future__ import annotations

import pathlib
import zipfile
from typing import Any

import numpy as np

from flig_jax.data.dataset import DataError, Split, check_split, to_unit_images

TEST_FRACTION = 0.2  # Used when the file has no `split`.


def seeded_test_mask(n: int, seed: int, source: str) -> np.ndarray:
  """A boolean mask marking a seeded random 20% (at least one, at most n - 1) of n rows as test."""
  if n < 2:
    raise DataError(f'{source}: {n} pair(s) cannot be split into non-empty train and test')
  n_test = min(n - 1, max(1, round(TEST_FRACTION * n)))
  mask = np.zeros(n, bool)
  mask[np.random.default_rng([int(seed), 0]).permutation(n)[:n_test]] = True
  return mask


def split_mask(split: np.ndarray, n: int, source: str) -> np.ndarray:
  """The stored `split` array ('train'/'test' per row) as a boolean test mask."""
  if split.shape != (n,):
    raise DataError(f'{source}: "split" has shape {split.shape}, want ({n},)')
  values = np.char.strip(split.astype(str))
  bad = sorted(set(values.tolist()) - {'train', 'test'})
  if bad:
    raise DataError(f'{source}: "split" holds {bad[:5]}; each entry must be "train" or "test"')
  return values == 'test'


def read(path: str | pathlib.Path, split_seed: int = 0) -> tuple[Split, Split, dict[str, Any]]:
  """Reads the pairs in the .npz at `path`.

  The file holds `stimuli` (N, H, W) or (N, H, W, C) with C 1 or 3, uint8 0-255 or float 0-1;
  `responses` (N, U); optionally `split` (N,) of 'train'/'test' (else a random 80/20 split drawn
  with `split_seed`, which the training seed does not change: runs of several seeds share one test
  split) and `labels` (N,).

  Returns:
    (train, test, meta); meta holds 'source'.

  Raises:
    DataError: missing file or key, wrong shapes (or channel counts), counts that disagree,
      NaN/Inf, an empty split.
  """
  source = str(path)
  if not pathlib.Path(path).is_file():
    raise DataError(f'{source}: no such file (set --config.data.path to an .npz file)')
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise DataError(f'{source}: cannot read as an .npz file ({e})') from e
  missing = [k for k in ('stimuli', 'responses') if k not in arrays]
  if missing:
    raise DataError(f'{source}: missing key(s) {missing}; the file holds {sorted(arrays)}')
  stimuli, responses = arrays['stimuli'], arrays['responses']
  if stimuli.ndim == 3:
    stimuli = stimuli[..., None]
  if stimuli.ndim != 4:
    raise DataError(
        f'{source}: "stimuli" has shape {stimuli.shape}, want (N, H, W) or (N, H, W, C)')
  if 0 in stimuli.shape[1:]:
    raise DataError(f'{source}: "stimuli" has shape {stimuli.shape}: the images have zero size')
  if stimuli.shape[-1] not in (1, 3):
    raise DataError(
        f'{source}: "stimuli" has shape {stimuli.shape}: the last axis holds the channels, want 1 '
        '(grey) or 3 (colour); move channels last if they come first, as in (N, C, H, W)')
  if responses.ndim != 2:
    raise DataError(f'{source}: "responses" has shape {responses.shape}, want (N, units)')
  n = len(stimuli)
  if len(responses) != n:
    raise DataError(f'{source}: {n} stimuli but {len(responses)} responses')
  labels = arrays.get('labels')
  if labels is not None and labels.shape != (n,):
    raise DataError(f'{source}: "labels" has shape {labels.shape}, want ({n},)')
  images = to_unit_images(stimuli, source, 'stimuli')
  if 'split' in arrays:
    is_test = split_mask(arrays['split'], n, source)
  else:
    is_test = seeded_test_mask(n, split_seed, source)
  splits = [
      check_split(source, name, images[mask], responses[mask],
                  None if labels is None else labels[mask])
      for name, mask in (('train', ~is_test), ('test', is_test))
  ]
  split_from = 'file' if 'split' in arrays else f'split_seed {int(split_seed)}'
  meta = {'source': source, 'split_from': split_from}
  return splits[0], splits[1], meta
