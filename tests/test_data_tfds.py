"""Tests for the TFDS builders: build digit69 as array_record, read it back without TensorFlow."""

import subprocess
import sys

import numpy as np
import pytest

from flig_jax import data

BUILD_AND_READ = '''
import sys
import numpy as np
import tensorflow_datasets as tfds
from flig_jax.data import tfds_builders
source_dir, data_dir = sys.argv[1], sys.argv[2]
tfds_builders.Digit69(data_dir=data_dir, source_dir=source_dir).download_and_prepare()
source = tfds.data_source('digit69', data_dir=data_dir)
for split in ('train', 'test'):
  rows = [source[split][i] for i in range(len(source[split]))]
  np.savez(f'{data_dir}/{split}.npz', **{k: np.stack([r[k] for r in rows]) for k in rows[0]})
assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'
'''


def test_digit69_round_trip(data_root, tmp_path):
  folder = data_root / 'digit69'
  if not folder.is_dir():
    pytest.skip('no digit69 in the shared data')
  # A fresh interpreter, so the check that TensorFlow stays unimported means something.
  done = subprocess.run([sys.executable, '-c', BUILD_AND_READ, str(folder), str(tmp_path)],
                        capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert list(tmp_path.glob('digit69/1.0.0/digit69-train.array_record-*'))
  ds = data.load('digit69', dir=str(folder))
  for name, split in (('train', ds.train), ('test', ds.test)):
    with np.load(tmp_path / f'{name}.npz') as got:
      np.testing.assert_array_equal(got['index'], np.arange(len(split)))
      np.testing.assert_array_equal(got['image'], split.images)
      np.testing.assert_array_equal(got['response'], split.responses)
      np.testing.assert_array_equal(got['label'], split.labels)
