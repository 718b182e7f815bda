"""Reads one session of the Cowley et al. (2023) macaque V4 data: natural images straight from the
session's zip, and repeat-averaged spike counts per 100 ms."""

from __future__ import annotations

import io
import pathlib
import re
import zipfile
from typing import Any

import numpy as np

from flig_jax.data import locate
from flig_jax.data.dataset import DataError, Split, check_split

NAME = 'cowley_v4'
IMAGE_DIR = 'images'
RESPONSE_DIR = 'responses_repeat_averaged'
SHARED_SESSIONS = ('190925', '190927', '190928', '190929', '210224', '210305', '210322', '210621')
DEFAULT_IMAGE_SIZE = 32
TEST_EVERY, TEST_REMAINDER = 5, 4  # Image index % 5 == 4 is test.
_IMAGE_NAME = re.compile(r'^image(\d+)\.jpe?g$', re.IGNORECASE)
_ZIP_NAME = re.compile(r'^images_(.+)\.zip$')


def find_dir(dir: str | None = None) -> pathlib.Path:
  """The folder holding images/ and responses_repeat_averaged/.

  Looks in `dir`, else $FLIG_DATA_DIR/cowley_v4, else the cache.

  Raises:
    DataError: no candidate folder holds images/.
  """
  return locate.find_dataset_dir(NAME, dir, IMAGE_DIR)


def zip_path(folder: pathlib.Path, session: str) -> pathlib.Path:
  return pathlib.Path(folder) / IMAGE_DIR / f'images_{session}.zip'


def response_path(folder: pathlib.Path, session: str) -> pathlib.Path:
  return pathlib.Path(folder) / RESPONSE_DIR / f'responses_{session}.npy'


def available_sessions(folder: str | pathlib.Path) -> list[str]:
  """Sessions in `folder` that have both an image zip and a response file, sorted."""
  folder = pathlib.Path(folder)
  if not (folder / IMAGE_DIR).is_dir():
    return []
  found = []
  for p in (folder / IMAGE_DIR).iterdir():
    m = _ZIP_NAME.match(p.name)
    if m and response_path(folder, m.group(1)).is_file():
      found.append(m.group(1))
  return sorted(found)


def image_members(archive: zipfile.ZipFile, source: str) -> list[str]:
  """The zip's imageNNNN.jpg members (in any sub-folder), sorted by their number.

  Raises:
    DataError: no images, or two members with the same number.
  """
  numbered = {}
  for info in archive.infolist():
    base = info.filename.rsplit('/', 1)[-1]
    m = _IMAGE_NAME.match(base)
    if info.is_dir() or not m or info.filename.startswith('__MACOSX/'):
      continue
    number = int(m.group(1))
    if number in numbered:
      raise DataError(f'{source}: two members are image number {number}: '
                      f'{numbered[number]!r} and {info.filename!r}')
    numbered[number] = info.filename
  if not numbered:
    raise DataError(f'{source}: holds no imageNNNN.jpg members')
  return [numbered[k] for k in sorted(numbered)]


def read_images(path: pathlib.Path, image_size: int, grayscale: bool) -> np.ndarray:
  """Decodes every imageNNNN.jpg of the zip at `path`, in name order, to (N, S, S, C) uint8.

  Images are converted to one channel (ITU-R 601 luma) when `grayscale`, then resized to
  `image_size` square with PIL's antialiased bilinear filter.

  Raises:
    DataError: not a zip, no images, or a member that does not decode.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  source = str(path)
  try:
    archive = zipfile.ZipFile(path)
  except (OSError, zipfile.BadZipFile) as e:
    raise DataError(f'{source}: cannot open as a zip file ({e})') from e
  with archive:
    names = image_members(archive, source)
    channels = 1 if grayscale else 3
    out = np.empty((len(names), image_size, image_size, channels), np.uint8)
    for i, name in enumerate(names):
      try:
        with Image.open(io.BytesIO(archive.read(name))) as img:
          img = img.convert('L' if grayscale else 'RGB')
          if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
          pixels = np.asarray(img)
      except (OSError, SyntaxError, ValueError, zipfile.BadZipFile) as e:  # PIL's decode errors.
        raise DataError(f'{source}: member {name!r} is not a decodable image ({e})') from e
      out[i] = pixels.reshape(image_size, image_size, channels)
  return out


def read_responses(path: pathlib.Path) -> np.ndarray:
  """Loads responses_<session>.npy, stored (neurons, images), and returns (images, neurons)."""
  source = str(path)
  try:
    responses = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise DataError(f'{source}: cannot read as a .npy array ({e})') from e
  if responses.ndim != 2:
    raise DataError(f'{source}: has shape {responses.shape}, want (neurons, images)')
  return responses.T


def read(folder: str | pathlib.Path, session: str | None, *, image_size: int | None = None,
         grayscale: bool = True) -> tuple[Split, Split, dict[str, Any]]:
  """Reads one session: image index % 5 == 4 is test, the rest train.

  Args:
    folder: the dataset's own folder (holding images/ and responses_repeat_averaged/).
    session: e.g. '190927'.
    image_size: square side after resizing (default 32).
    grayscale: one channel (True) or RGB.

  Returns:
    (train, test, meta); meta holds 'source', 'session', 'image_size', 'grayscale',
    'response_kind' ('spikes').

  Raises:
    DataError: missing or unknown session, missing file, unreadable data, counts that disagree.
  """
  folder = pathlib.Path(folder)
  image_size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
  if not isinstance(image_size, (int, np.integer)) or image_size < 1:
    raise DataError(f'{NAME}: image_size must be a positive integer, got {image_size!r}')
  sessions = available_sessions(folder)
  if not session:
    raise DataError(f'{folder}: {NAME} needs a session (--config.data.session=...); '
                    f'available: {", ".join(sessions) or "none"}')
  zpath, rpath = zip_path(folder, session), response_path(folder, session)
  if not zpath.is_file() and not rpath.is_file():
    raise DataError(f'{folder}: no session {session!r} ({zpath.name} and {rpath.name} are both '
                    f'missing); available: {", ".join(sessions) or "none"}')
  for p in (zpath, rpath):
    if not p.is_file():
      raise DataError(f'{p}: missing (session {session!r}); available: '
                      f'{", ".join(sessions) or "none"}')
  responses = read_responses(rpath)
  images = read_images(zpath, int(image_size), grayscale)
  if len(images) != len(responses):
    raise DataError(f'{zpath}: holds {len(images)} images but {rpath} has responses to '
                    f'{len(responses)}')
  is_test = np.arange(len(images)) % TEST_EVERY == TEST_REMAINDER
  pixels = images.astype(np.float32) / np.float32(255.0)
  source = f'{zpath} + {rpath.name}'
  train = check_split(source, 'train', pixels[~is_test], responses[~is_test])
  test = check_split(source, 'test', pixels[is_test], responses[is_test])
  meta = {'source': str(folder), 'session': str(session), 'image_size': int(image_size),
          'grayscale': bool(grayscale), 'response_kind': 'spikes'}
  return train, test, meta
