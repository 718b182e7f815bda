"""Tests for the TFDS builders: build digit69 and one cowley_v4 session as array_record, read them
back with TFDS's TensorFlow-free reader (TensorFlow is not a dependency: an import of it would
fail the build), and compare every row with `data.load`."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import require_data

from flig_jax import data

BUILD_AND_READ = '''
import sys
import numpy as np
import tensorflow_datasets as tfds
from flig_jax.data import tfds_builders
builder_name, config, source_dir, data_dir = sys.argv[1:]
builder = getattr(tfds_builders, builder_name)
kwargs = {'config': config} if config else {}
built = builder(data_dir=data_dir, source_dir=source_dir, **kwargs)
built.download_and_prepare()
source = tfds.data_source(built.info.full_name.rsplit('/', 1)[0], data_dir=data_dir)
for split in ('train', 'test'):
  rows = [source[split][i] for i in range(len(source[split]))]
  np.savez(f'{data_dir}/{split}.npz', **{k: np.stack([r[k] for r in rows]) for k in rows[0]})
'''

# (data.load name, builder class, builder config, session); 210305 is the smallest session.
CASES = [('digit69', 'Digit69', '', None), ('cowley_v4', 'CowleyV4', '210305', '210305')]


@pytest.mark.slow   # builds array_record files in a child process
@pytest.mark.parametrize('name, builder, config, session', CASES)
def test_builder_round_trip(name, builder, config, session, data_root, tmp_path):
  folder = require_data(data_root / name, name)
  done = subprocess.run([sys.executable, '-c', BUILD_AND_READ, builder, config, str(folder),
                         str(tmp_path)], capture_output=True, text=True, timeout=240,
                        check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert list(tmp_path.glob(f'{name}/**/*.array_record-*'))
  ds = data.load(name, dir=str(folder), session=session)
  for split_name, split in (('train', ds.train), ('test', ds.test)):
    with np.load(tmp_path / f'{split_name}.npz') as got:
      np.testing.assert_array_equal(got['index'], np.arange(len(split)))
      np.testing.assert_array_equal(got['image'], split.images)
      np.testing.assert_array_equal(got['response'], split.responses)
      if split.labels is not None:
        np.testing.assert_array_equal(got['label'], split.labels)
