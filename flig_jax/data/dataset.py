"""The containers every loader returns (`Split`, `Dataset`), the one error type (`DataError`),
and the checks and validation carving that all datasets share."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


class DataError(ValueError):
  """Bad input data or a bad data option; the message names the file (or option) and the fault."""


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """Paired stimuli and responses of one split.

  Attributes:
    images: (N, H, W, C) float32 in [0, 1].
    responses: (N, U) float32.
    labels: (N,) int32 class labels, or None where the dataset has none.
  """
  images: np.ndarray
  responses: np.ndarray
  labels: np.ndarray | None = None

  def __post_init__(self):
    if self.images.ndim != 4 or self.responses.ndim != 2:
      raise DataError(
          f'Split: images must be (N, H, W, C) and responses (N, U); got {self.images.shape} and '
          f'{self.responses.shape}')
    if len(self.images) != len(self.responses):
      raise DataError(f'Split: {len(self.images)} images but {len(self.responses)} responses')
    if self.labels is not None and self.labels.shape != (len(self.images),):
      raise DataError(f'Split: labels have shape {self.labels.shape}, want ({len(self.images)},)')

  def __len__(self) -> int:
    return len(self.images)

  def __repr__(self) -> str:
    return (f'Split({len(self)} pairs, images {tuple(self.images.shape[1:])}, '
            f'{self.responses.shape[1]} units{", labelled" if self.labels is not None else ""})')

  def take(self, indices: np.ndarray) -> Split:
    """Returns the rows `indices` of this split (a copy)."""
    labels = None if self.labels is None else self.labels[indices]
    return Split(self.images[indices], self.responses[indices], labels)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A named dataset: train, validation (carved from train; may be empty) and test splits.

  `meta` holds at least 'name', 'num_units', 'image_shape' (H, W, C), 'source' (a path, or
  'embedded') and, where the dataset has sessions, 'session'.
  """
  name: str
  train: Split
  val: Split
  test: Split
  meta: dict[str, Any]

  @property
  def num_units(self) -> int:
    return int(self.train.responses.shape[1])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(int(s) for s in self.train.images.shape[1:])

  def __repr__(self) -> str:
    session = f', session {self.meta["session"]}' if self.meta.get('session') else ''
    return (f'Dataset({self.name!r}{session}: train {len(self.train)}, val {len(self.val)}, test '
            f'{len(self.test)}; {self.num_units} units, images {self.image_shape})')


def to_unit_images(stimuli: np.ndarray, source: str, key: str = 'stimuli') -> np.ndarray:
  """Converts stimuli stored as uint8 0-255 (any integer type) or float 0-1 to float32 in [0, 1].

  Args:
    stimuli: array of any shape.
    source: the file the array came from (for error messages).
    key: the array's name in that file.

  Returns:
    float32 array of the same shape with values in [0, 1].

  Raises:
    DataError: non-numeric dtype, NaN/Inf, or values outside 0-255 (integers) / 0-1 (floats).
  """
  if np.issubdtype(stimuli.dtype, np.integer):
    lo, hi = (int(stimuli.min()), int(stimuli.max())) if stimuli.size else (0, 0)
    if lo < 0 or hi > 255:
      raise DataError(f'{source}: {key!r} holds integers in [{lo}, {hi}], want 0-255')
    return stimuli.astype(np.float32) / np.float32(255.0)
  if not np.issubdtype(stimuli.dtype, np.floating):
    raise DataError(f'{source}: {key!r} has dtype {stimuli.dtype}, want uint8 0-255 or float 0-1')
  if not np.all(np.isfinite(stimuli)):
    raise DataError(f'{source}: {key!r} contains NaN or Inf')
  lo, hi = (float(stimuli.min()), float(stimuli.max())) if stimuli.size else (0.0, 0.0)
  if lo < -1e-6 or hi > 1 + 1e-6:
    raise DataError(
        f'{source}: {key!r} holds floats in [{lo:g}, {hi:g}], want 0-1 (or uint8 0-255)')
  return np.clip(stimuli, 0.0, 1.0).astype(np.float32)


def check_split(source: str, split_name: str, images: np.ndarray, responses: np.ndarray,
                labels: np.ndarray | None = None) -> Split:
  """Validates one split read from `source` and returns it as a `Split` of float32 arrays.

  Args:
    source: the file the arrays came from (named in every error).
    split_name: 'train' or 'test' (named in every error).
    images: (N, H, W, C) in [0, 1].
    responses: (N, U) numeric.
    labels: optional (N,) or (N, 1) integers.

  Raises:
    DataError: wrong ndim, counts that disagree, an empty split, NaN/Inf, out-of-range pixels.
  """
  where = f'{source}: {split_name} split'
  if images.ndim != 4:
    raise DataError(f'{where}: images have shape {images.shape}, want (N, H, W, C)')
  if responses.ndim != 2:
    raise DataError(f'{where}: responses have shape {responses.shape}, want (N, units)')
  if len(images) != len(responses):
    raise DataError(f'{where}: {len(images)} stimuli but {len(responses)} responses')
  if len(images) == 0:
    raise DataError(f'{where} is empty')
  if 0 in images.shape[1:]:
    raise DataError(f'{where}: images have zero size (shape {images.shape})')
  if responses.shape[1] == 0:
    raise DataError(f'{where}: responses have no units (shape {responses.shape})')
  if not (np.issubdtype(responses.dtype, np.integer)
          or np.issubdtype(responses.dtype, np.floating)):
    raise DataError(f'{where}: responses have dtype {responses.dtype}, want real numbers')
  responses = responses.astype(np.float32)
  if not np.all(np.isfinite(responses)):
    raise DataError(f'{where}: responses contain NaN or Inf')
  images = images.astype(np.float32, copy=False)
  if not np.all(np.isfinite(images)):
    raise DataError(f'{where}: images contain NaN or Inf')
  if images.min() < 0.0 or images.max() > 1.0:
    raise DataError(f'{where}: images are outside [0, 1]')
  if labels is not None:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
      labels = labels[:, 0]
    if labels.shape != (len(images),):
      raise DataError(f'{where}: labels have shape {labels.shape}, want ({len(images)},)')
    whole = np.issubdtype(labels.dtype, np.integer) or (
        np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)))
    if not whole:
      raise DataError(f'{where}: labels must be integers, got dtype {labels.dtype}')
    labels = labels.astype(np.int32)
  return Split(np.ascontiguousarray(images), np.ascontiguousarray(responses), labels)


def empty_like(split: Split) -> Split:
  """Returns a split with zero rows and the trailing shapes and dtypes of `split`."""
  return split.take(np.zeros((0,), np.int64))


# Images whose root-mean-square pixel difference is below this (on [0, 1] pixels, at most 16 px a
# side) count as one stimulus. Some Cowley sessions show the same image under several indices
# (190925), or variants of one image 1-5% apart (210305). Grouped this way, no stimulus of the
# shared datasets sits within 0.051 of another, and 95% sit 0.06 or more from their nearest.
DUPLICATE_RMS = 0.05
_DUPLICATE_SIDE = 16


def _small(images: np.ndarray) -> np.ndarray:
  """(N, <= 256 * C) float64: the images block-averaged to at most 16 pixels a side, flattened."""
  n, h, w, c = images.shape
  fy, fx = -(-h // _DUPLICATE_SIDE), -(-w // _DUPLICATE_SIDE)
  small = images[:, :h - h % fy, :w - w % fx]
  small = small.reshape(n, small.shape[1] // fy, fy, small.shape[2] // fx, fx, c).mean((2, 4))
  return small.reshape(n, -1).astype(np.float64)


def median_nearest_rms(images: np.ndarray, reference: np.ndarray) -> float:
  """The median over `images` of the RMS pixel distance to the nearest `reference` image (both
  block-averaged as in `duplicate_groups`); NaN when either is empty."""
  if not len(images) or not len(reference):
    return float('nan')
  a, b = _small(images), _small(reference)
  nearest = [np.min(np.sum(a[i:i + 256, None] ** 2, -1) + np.sum(b * b, 1)[None]
                    - 2.0 * a[i:i + 256] @ b.T, axis=1) for i in range(0, len(a), 256)]
  return float(np.median(np.sqrt(np.maximum(np.concatenate(nearest), 0.0) / a.shape[1])))


def duplicate_groups(images: np.ndarray, rms: float = DUPLICATE_RMS) -> np.ndarray:
  """(N,) group ids: images within `rms` of each other (transitively) share one.

  The images are block-averaged to at most 16 pixels a side first, so the cost stays
  N^2 * 256 * C however large the images are.
  """
  n = len(images)
  flat = _small(images)
  sq = np.sum(flat * flat, axis=1)
  limit = rms * rms * flat.shape[1]
  parent = np.arange(n)

  def root(i):
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  for start in range(0, n, 1024):
    block = flat[start:start + 1024]
    d2 = sq[start:start + 1024, None] + sq[None] - 2.0 * block @ flat.T
    for i, j in zip(*np.nonzero(d2 < limit)):
      a, b = root(start + i), root(j)
      if a != b:
        parent[max(a, b)] = min(a, b)
  return np.array([root(i) for i in range(n)])


def carve_validation(train: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
  """Moves a seeded random `val_fraction` of `train` into a validation split.

  Near-copies (`duplicate_groups`, within `DUPLICATE_RMS`) go to the same side, as the test split
  keeps apart from train: a validation image shown again in training would reward memorising.
  Rows are taken in a seeded random order, each with its group where the group still fits;
  without duplicates that is the first `round(val_fraction * N)` rows of the permutation. Both
  returned splits keep the original row order. `val_fraction == 0` gives an empty validation
  split; any positive fraction takes at least one row and leaves at least one.

  Raises:
    DataError: `val_fraction` outside [0, 1), or a train split too small to carve.
  """
  if not 0.0 <= val_fraction < 1.0:
    raise DataError(f'val_fraction must be in [0, 1), got {val_fraction}')
  n = len(train)
  if val_fraction == 0.0:
    return train, empty_like(train)
  n_val = max(1, round(val_fraction * n))
  if n_val >= n:
    raise DataError(
        f'val_fraction={val_fraction} of {n} training pairs leaves no training data')
  perm = np.random.default_rng([int(seed), 1]).permutation(n)
  groups = duplicate_groups(train.images)
  sizes = np.bincount(groups, minlength=n)
  in_val = np.zeros(n, bool)
  taken, count = set(), 0
  for i in perm:
    g = groups[i]
    if g not in taken and count + sizes[g] <= n_val:
      taken.add(g)
      in_val |= groups == g
      count += sizes[g]
      if count == n_val:
        break
  if count == 0 or count == n:
    raise DataError(f'val_fraction={val_fraction} of {n} training pairs: their images form '
                    f'{len(set(groups.tolist()))} distinct stimuli, too few to carve')
  return train.take(np.nonzero(~in_val)[0]), train.take(np.nonzero(in_val)[0])


def fold_ids(train: Split, folds: int, seed: int) -> np.ndarray:
  """(N,) cross-validation fold ids in 0..folds-1 of the training pairs, carved by stimulus.

  Near-copies (`duplicate_groups`) share a fold, as they share a side of the validation carve: a
  held-out image shown again in training would reward memorising. Groups are dealt in a seeded
  random order, each to the fold with the fewest pairs so far, so fold sizes differ by at most the
  largest group. Only the training split is read; the test split never enters a fold.

  Raises:
    DataError: `folds` < 2, or fewer distinct stimuli than folds.
  """
  if folds < 2:
    raise DataError(f'data.folds must be at least 2 for cross-validation, got {folds}')
  groups = duplicate_groups(train.images)
  unique = np.unique(groups)
  if len(unique) < folds:
    raise DataError(f'data.folds={folds}: the {len(train)} training pairs show '
                    f'{len(unique)} distinct stimuli, fewer than the folds')
  sizes = np.bincount(groups, minlength=len(train))
  ids = np.full(len(train), -1, np.int64)
  filled = np.zeros(folds, np.int64)
  for g in np.random.default_rng([int(seed), 2]).permutation(unique):
    f = int(np.argmin(filled))
    ids[groups == g] = f
    filled[f] += sizes[g]
  return ids


def assemble(name: str, train: Split, test: Split, meta: dict[str, Any], *, val_fraction: float,
             seed: int) -> Dataset:
  """Carves validation from `train`, checks the splits agree, and fills the common `meta` keys."""
  if train.images.shape[1:] != test.images.shape[1:]:
    raise DataError(f'{meta.get("source", name)}: train images {train.images.shape[1:]} and test '
                    f'images {test.images.shape[1:]} differ in shape')
  if train.responses.shape[1] != test.responses.shape[1]:
    raise DataError(f'{meta.get("source", name)}: train has {train.responses.shape[1]} units but '
                    f'test has {test.responses.shape[1]}')
  if len(train) > 1 and np.all(train.responses == train.responses[:1]):
    raise DataError(f'{meta.get("source", name)}: every response unit is constant across the '
                    f'{len(train)} training pairs; there is no signal to decode from or encode')
  train, val = carve_validation(train, val_fraction, seed)
  meta = dict(meta)
  meta.update(name=name, num_units=int(train.responses.shape[1]),
              image_shape=tuple(int(s) for s in train.images.shape[1:]),
              num_train=len(train), num_val=len(val), num_test=len(test),
              val_fraction=float(val_fraction), seed=int(seed),
              # How far validation and test stimuli sit from the training ones (model selection
              # trusts validation only if it is about as far as test).
              val_to_train_rms=median_nearest_rms(val.images, train.images),
              test_to_train_rms=median_nearest_rms(test.images, train.images))
  return Dataset(name=name, train=train, val=val, test=test, meta=meta)
