"""An embedded, seeded dataset: procedural images (bars and blobs, or random binary patterns) and
responses simulated from a known population model (fMRI-like Gaussian receptive fields, or
linear-nonlinear-Poisson spikes)."""

from __future__ import annotations

from typing import Any

import numpy as np

from flig_jax.data.dataset import DataError, Split, check_split

MODES = ('fmri', 'spikes', 'patterns')
NONLINEARITIES = ('softplus', 'exp')
DEFAULT_IMAGE_SIZE = 16
PATTERN_CELLS = 10  # 'patterns': a PATTERN_CELLS x PATTERN_CELLS grid of random binary cells
_REFERENCE_IMAGES = 256  # Fixes each unit's response scale, independent of the split sizes.
# Independent random streams, so that e.g. changing num_test leaves the training pairs unchanged.
_TRAIN_IMAGES, _TEST_IMAGES, _MODEL, _REFERENCE, _TRAIN_NOISE, _TEST_NOISE = range(10, 16)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates in [0, 1], as (1, size*size) rows for y and x."""
  c = (np.arange(size) + 0.5) / size
  y, x = np.meshgrid(c, c, indexing='ij')
  return y.reshape(1, -1), x.reshape(1, -1)


def make_images(n: int, size: int, rng: np.random.Generator, max_shapes: int = 3) -> np.ndarray:
  """Draws n images of 1 to `max_shapes` soft bars and blobs on black, (n, size, size, 1) in [0, 1].

  Each image is the pixelwise maximum of its shapes; a bar is a line segment with a Gaussian
  cross-section, a blob an isotropic Gaussian.
  """
  k = max_shapes
  y, x = _grid(size)  # (1, P)
  shape = (n * k, 1)
  cy, cx = rng.uniform(0.2, 0.8, shape), rng.uniform(0.2, 0.8, shape)
  angle = rng.uniform(0.0, np.pi, shape)
  half_length = rng.uniform(0.15, 0.4, shape)
  width = rng.uniform(0.04, 0.08, shape)
  blob_sigma = rng.uniform(0.06, 0.14, shape)
  is_bar = rng.random(shape) < 0.65
  amplitude = rng.uniform(0.6, 1.0, shape)
  num_shapes = rng.integers(1, k + 1, (n, 1))
  amplitude *= (np.arange(k)[None, :] < num_shapes).reshape(shape)  # unused shapes get amplitude 0
  dy, dx = y - cy, x - cx  # (n*k, P)
  along = np.clip(dy * np.sin(angle) + dx * np.cos(angle), -half_length, half_length)
  off2 = (dy - along * np.sin(angle)) ** 2 + (dx - along * np.cos(angle)) ** 2
  bar = np.exp(-off2 / (2 * width ** 2))
  blob = np.exp(-(dy ** 2 + dx ** 2) / (2 * blob_sigma ** 2))
  shapes = amplitude * np.where(is_bar, bar, blob)
  images = shapes.reshape(n, k, size, size).max(axis=1)
  return np.clip(images, 0.0, 1.0)[..., None].astype(np.float32)


def make_patterns(n: int, size: int, rng: np.random.Generator,
                  cells: int = PATTERN_CELLS) -> np.ndarray:
  """Draws n random binary patterns, (n, size, size, 1) in {0, 1}.

  Each of the cells x cells grid cells is on with probability 1/2, independently, and the grid is
  upsampled to size x size by nearest neighbour (cells of size // cells or one pixel more): an
  image with cells**2 degrees of freedom, which no smooth low-dimensional code captures.
  """
  grid = rng.random((n, cells, cells)) < 0.5
  index = np.arange(size) * cells // size  # the cell each pixel row (and column) falls in
  return grid[:, index][:, :, index][..., None].astype(np.float32)


def make_filters(mode: str, num_units: int, size: int, rng: np.random.Generator) -> np.ndarray:
  """The population's linear filters, (num_units, size*size).

  'fmri': Gaussian receptive fields (positive weights summing to one per unit).
  'patterns': the same, smaller (sigma 0.04-0.1 of the image, about one pattern cell) and spread
  over the whole image, so that a large population resolves every cell.
  'spikes': Gabor filters (an oriented grating under a Gaussian envelope).
  """
  y, x = _grid(size)
  shape = (num_units, 1)
  if mode == 'patterns':
    cy, cx = rng.uniform(0.05, 0.95, shape), rng.uniform(0.05, 0.95, shape)
    sigma = rng.uniform(0.04, 0.1, shape)
  else:
    cy, cx = rng.uniform(0.15, 0.85, shape), rng.uniform(0.15, 0.85, shape)
    sigma = rng.uniform(0.08, 0.2, shape)
  envelope = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma ** 2))
  if mode in ('fmri', 'patterns'):
    return envelope / envelope.sum(axis=1, keepdims=True)
  angle = rng.uniform(0.0, np.pi, shape)
  cycles = rng.uniform(0.5, 1.5, shape) / (2 * sigma)  # half to one and a half cycles per 2 sigma
  phase = rng.uniform(0.0, 2 * np.pi, shape)
  grating = np.cos(2 * np.pi * cycles * ((y - cy) * np.sin(angle) + (x - cx) * np.cos(angle))
                   + phase)
  gabor = envelope * grating
  return gabor / np.abs(gabor).sum(axis=1, keepdims=True)


def _check_options(mode, num_train, num_test, num_units, image_size, noise_std, nonlinearity):
  if mode not in MODES:
    raise DataError(f'synthetic: synthetic_mode must be one of {MODES}, got {mode!r}')
  if nonlinearity not in NONLINEARITIES:
    raise DataError(
        f'synthetic: nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}')
  for name, value, least in (('num_train', num_train, 1), ('num_test', num_test, 1),
                             ('num_units', num_units, 1), ('image_size', image_size, 4)):
    if not isinstance(value, (int, np.integer)) or value < least:
      raise DataError(f'synthetic: {name} must be an integer >= {least}, got {value!r}')
  if mode == 'patterns' and image_size < PATTERN_CELLS:
    raise DataError(f'synthetic: patterns need image_size >= {PATTERN_CELLS} (one pixel per '
                    f'cell), got {image_size}')
  if not noise_std >= 0:
    raise DataError(f'synthetic: noise_std must be >= 0, got {noise_std!r}')


def generate(*, synthetic_mode: str = 'fmri', num_train: int = 256, num_test: int = 64,
             num_units: int = 48, image_size: int | None = None, seed: int = 0,
             noise_std: float = 0.5, nonlinearity: str = 'softplus',
             ) -> tuple[Split, Split, dict[str, Any]]:
  """Simulates a paired dataset.

  Each unit's drive is its filter applied to the image, standardized by the drive's mean and
  standard deviation over a fixed set of reference images. Then
  'fmri': response = drive + noise_std * N(0, 1) (a Gaussian-weighted sum of pixels plus noise);
  'patterns': the same linear-Gaussian population, on random binary 10x10 patterns (see
  `make_patterns`) with small receptive fields: pixel ridge decodes it well, while an autoencoder
  must keep 100 degrees of freedom per image;
  'spikes': counts ~ Poisson(base_rate * g(drive)) with g(d) = softplus(gain * d) or
  exp(clip(gain * d / 2, -3, 3)) (a linear-nonlinear-Poisson neuron), returned as float32.

  Args:
    synthetic_mode: 'fmri', 'spikes' or 'patterns'.
    num_train: number of training pairs.
    num_test: number of test pairs.
    num_units: voxels or neurons.
    image_size: square side in pixels (default 16).
    seed: everything is a pure function of the options and this seed.
    noise_std: 'fmri' and 'patterns' noise relative to the unit-variance signal.
    nonlinearity: 'spikes' nonlinearity, 'softplus' or 'exp'.

  Returns:
    (train, test, meta); images (N, S, S, 1) in [0, 1], responses (N, num_units) float32.
  """
  size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
  _check_options(synthetic_mode, num_train, num_test, num_units, size, noise_std, nonlinearity)

  def stream(key: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), key])

  make = make_patterns if synthetic_mode == 'patterns' else make_images
  model_rng = stream(_MODEL)
  filters = make_filters(synthetic_mode, num_units, size, model_rng)
  reference = make(_REFERENCE_IMAGES, size, stream(_REFERENCE))
  ref_drive = reference.reshape(_REFERENCE_IMAGES, -1) @ filters.T
  mean, std = ref_drive.mean(axis=0), ref_drive.std(axis=0) + 1e-8
  gain = model_rng.uniform(0.8, 1.5, num_units)
  base_rate = model_rng.uniform(2.0, 6.0, num_units)

  def simulate(n: int, image_key: int, noise_key: int) -> tuple[np.ndarray, np.ndarray]:
    images = make(n, size, stream(image_key))
    drive = (images.reshape(n, -1) @ filters.T - mean) / std
    noise_rng = stream(noise_key)
    if synthetic_mode != 'spikes':
      return images, drive + noise_std * noise_rng.standard_normal(drive.shape)
    if nonlinearity == 'softplus':
      rate = base_rate * np.logaddexp(0.0, gain * drive)
    else:
      rate = base_rate * np.exp(np.clip(0.5 * gain * drive, -3.0, 3.0))  # bounded: at most 20x
    return images, noise_rng.poisson(rate).astype(np.float32)

  train = check_split('synthetic', 'train', *simulate(num_train, _TRAIN_IMAGES, _TRAIN_NOISE))
  test = check_split('synthetic', 'test', *simulate(num_test, _TEST_IMAGES, _TEST_NOISE))
  kind = 'spikes' if synthetic_mode == 'spikes' else 'fmri'
  meta = {'source': 'embedded', 'response_kind': kind, 'image_size': int(size),
          'synthetic_mode': synthetic_mode, 'noise_std': float(noise_std),
          'nonlinearity': nonlinearity}
  return train, test, meta
