"""Shared pytest fixtures: where the real (read-only) datasets live."""

import os
import pathlib

import pytest


@pytest.fixture(scope='session')
def data_root() -> pathlib.Path:
  """The shared data root ($FLIG_DATA_DIR, else ../shared/data beside the repo); skips if absent."""
  default = pathlib.Path(__file__).parents[1] / '..' / 'shared' / 'data'
  root = pathlib.Path(os.environ.get('FLIG_DATA_DIR') or default).resolve()
  if not root.is_dir():
    pytest.skip(f'no shared data at {root} (set FLIG_DATA_DIR)')
  return root
