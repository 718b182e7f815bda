"""TFDS builders for digit69 and cowley_v4 (one config per session), written as array_record with
plain Tensor features so `tfds.data_source(...)` reads them without TensorFlow.

Importing this module registers the builders. They read through `loading.read_splits`, the same
parser as `data.load`, and store the splits as stored (train, test); carve validation at use.

  builder = Digit69(data_dir='/tmp/tfds', source_dir='/path/to/digit69')
  builder.download_and_prepare(file_format='array_record')
  source = tfds.data_source('digit69', data_dir='/tmp/tfds')   # source['train'][i]['image']
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from flig_jax.data import cowley_v4, digit69
from flig_jax.data.dataset import Split
from flig_jax.data.loading import read_splits

FILE_FORMAT = 'array_record'
# Units per session of the published cowley_v4 recordings (neurons x images arrays).
COWLEY_UNITS = {'190925': 36, '190927': 31, '190928': 24, '190929': 33, '210224': 67,
                '210305': 70, '210322': 59, '210621': 51}


def _features(image_shape: tuple[int, int, int], num_units: int,
              with_label: bool) -> tfds.features.FeaturesDict:
  spec = {
      'image': tfds.features.Tensor(shape=image_shape, dtype=np.float32),
      'response': tfds.features.Tensor(shape=(num_units,), dtype=np.float32),
      'index': tfds.features.Scalar(dtype=np.int64),
  }
  if with_label:
    spec['label'] = tfds.features.Scalar(dtype=np.int32)
  return tfds.features.FeaturesDict(spec)


def _examples(split: Split) -> Iterator[tuple[int, dict[str, Any]]]:
  """Yields (key, example) in the split's order; `index` is the row within the split."""
  for i in range(len(split)):
    example = {'image': split.images[i], 'response': split.responses[i], 'index': i}
    if split.labels is not None:
      example['label'] = split.labels[i]
    yield i, example


class _FligBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared parts: a `source_dir` (the dataset's own folder; default: data.load's search)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES: ClassVar[dict[str, str]] = {'1.0.0': 'First release.'}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10 looks a package's builder up through `importlib_resources`, which it only
    # requires on Python < 3.9 (ModuleNotFoundError here); its own fallback is this file path.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, source_dir: str | None = None, **kwargs: Any):
    kwargs.setdefault('file_format', FILE_FORMAT)
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _info_from(self, features: tfds.features.FeaturesDict, description: str,
                 homepage: str) -> tfds.core.DatasetInfo:
    # Examples keep the stored order, so source[split][i] is row i of data.load's split.
    return tfds.core.DatasetInfo(builder=self, description=description, features=features,
                                 supervised_keys=('response', 'image'), homepage=homepage,
                                 disable_shuffling=True)

  def _read(self) -> tuple[Split, Split]:
    raise NotImplementedError

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The loaders find (or fetch) the files themselves.
    train, test = self._read()
    return {'train': self._generate_examples(train), 'test': self._generate_examples(test)}

  def _generate_examples(self, split: Split):
    return _examples(split)


class Digit69(_FligBuilder):
  """digit69: fMRI (3092 voxels, V1-V3) of 100 handwritten 6s and 9s, 28x28; 90 train / 10 test."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self._info_from(
        _features((digit69.SIDE, digit69.SIDE, 1), 3092, with_label=True),
        'fMRI responses to handwritten 6s (label 1) and 9s (label 2); images in [0, 1].',
        'https://github.com/ChangdeDu/DGMM')

  def _read(self) -> tuple[Split, Split]:
    train, test, _ = read_splits('digit69', dir=self._source_dir, path=None, session=None,
                                 image_size=None, grayscale=True, seed=0, synthetic_options={})
    return train, test


@dataclasses.dataclass
class CowleyConfig(tfds.core.BuilderConfig):
  """One cowley_v4 session at one image size and colour mode."""
  session: str = ''
  num_units: int = 0
  image_size: int = cowley_v4.DEFAULT_IMAGE_SIZE
  grayscale: bool = True


class CowleyV4(_FligBuilder):
  """cowley_v4: macaque V4 mean spike counts to natural images; image index % 5 == 4 is test."""

  BUILDER_CONFIGS: ClassVar[list[CowleyConfig]] = [
      CowleyConfig(name=s, session=s, num_units=u, description=f'Session {s}, 32x32 grey.')
      for s, u in COWLEY_UNITS.items()
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    channels = 1 if c.grayscale else 3
    return self._info_from(
        _features((c.image_size, c.image_size, channels), c.num_units, with_label=False),
        f'Macaque V4 repeat-averaged spike counts per 100 ms, session {c.session} '
        '(Cowley, Stan, Pillow, Smith 2023); images in [0, 1].',
        'https://github.com/cowleygroup/V4_compact_models')

  def _read(self) -> tuple[Split, Split]:
    c = self.builder_config
    train, test, _ = read_splits('cowley_v4', dir=self._source_dir, path=None, session=c.session,
                                 image_size=c.image_size, grayscale=c.grayscale, seed=0,
                                 synthetic_options={})
    return train, test
