"""Finds a file dataset's folder (explicit dir, else $FLIG_DATA_DIR/<name>, else the cache) and
fetches public copies into the cache once, checking their sha256."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import tempfile
import urllib.request

from flig_jax.data.dataset import DataError

DATA_DIR_ENV = 'FLIG_DATA_DIR'
CACHE_DIR_ENV = 'FLIG_CACHE_DIR'


def cache_root() -> pathlib.Path:
  """The cache root: $FLIG_CACHE_DIR, else ~/.cache/flig_jax."""
  env = os.environ.get(CACHE_DIR_ENV)
  return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / '.cache' / 'flig_jax'


def candidate_dirs(name: str, dir: str | None) -> list[tuple[str, pathlib.Path]]:
  """The folders that may hold dataset `name`, best first, each with how it was chosen.

  An explicit `dir` is the only candidate; else $FLIG_DATA_DIR/<name> (when the variable is set)
  and then the cache folder.
  """
  if dir:
    return [('dir', pathlib.Path(dir).expanduser())]
  out = []
  root = os.environ.get(DATA_DIR_ENV)
  if root:
    out.append((f'${DATA_DIR_ENV}/{name}', pathlib.Path(root).expanduser() / name))
  out.append(('cache', cache_root() / name))
  return out


def find_dataset_dir(name: str, dir: str | None, required: str) -> pathlib.Path:
  """Returns the first candidate folder of `name` that holds `required` (a relative path).

  Raises:
    DataError: no candidate holds it; the message lists the paths tried and how to point at data.
  """
  tried = []
  for _, folder in candidate_dirs(name, dir):
    if (folder / required).exists():
      return folder
    tried.append(str(folder / required))
  raise DataError(
      f'{name}: cannot find {required!r}; tried: {", ".join(tried)}. Pass the dataset\'s own '
      f'folder (train.py --config.data.dir=..., evaluate.py --data_dir=..., or dir=... in '
      f'Python), or set ${DATA_DIR_ENV} to a root holding a {name}/ folder.')


def sha256_of(path: pathlib.Path) -> str:
  """The hex sha256 of a file."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def fetch(urls: list[str], target: pathlib.Path, sha256: str,
          timeout: float = 60.0) -> pathlib.Path:
  """Downloads the first of `urls` that works to `target` (once), checking its sha256.

  An existing `target` with the right checksum is reused. The download goes to a temporary file
  that is renamed into place only after its checksum matches.

  Raises:
    DataError: every URL failed or returned the wrong bytes; the message says where to put the file.
  """
  if target.exists():
    got = sha256_of(target)
    if got == sha256:
      return target
    raise DataError(f'{target}: sha256 is {got}, want {sha256}; delete the file to fetch it again')
  faults = []
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise DataError(f'{target.parent}: cannot create the cache folder ({e}); set '
                    f'${CACHE_DIR_ENV} to a writable folder') from e
  for url in urls:
    fd, name = tempfile.mkstemp(dir=target.parent, suffix='.part')
    tmp_path = pathlib.Path(name)
    try:
      with os.fdopen(fd, 'wb') as out, urllib.request.urlopen(url, timeout=timeout) as response:
        shutil.copyfileobj(response, out)
    except (OSError, ValueError) as e:  # URLError, timeouts: OSError; a malformed URL: ValueError.
      tmp_path.unlink(missing_ok=True)
      faults.append(f'{url}: {e}')
      continue
    got = sha256_of(tmp_path)
    if got != sha256:
      tmp_path.unlink(missing_ok=True)
      faults.append(f'{url}: sha256 {got}, want {sha256}')
      continue
    os.replace(tmp_path, target)
    return target
  raise DataError(
      f'{target}: could not fetch the public copy ({"; ".join(faults)}). Download it by hand and '
      f'put it at {target}, or pass the folder holding it with --config.data.dir / dir=, or set '
      f'${DATA_DIR_ENV} to a root holding a {target.parent.name}/ folder.')
