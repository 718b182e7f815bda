"""Datasets for flig_jax: `load` / `from_config` give train, validation and test splits of paired
images and neural responses; `BatchStream` serves seeded, resumable batches.

TFDS builders live in `flig_jax.data.tfds_builders` (imported on demand; never TensorFlow).
"""

from flig_jax.data.dataset import DataError, Dataset, Split, fold_ids
from flig_jax.data.loading import LOADERS, config_fold_ids, from_config, load
from flig_jax.data.pipeline import BatchStream

__all__ = ['LOADERS', 'BatchStream', 'DataError', 'Dataset', 'Split', 'config_fold_ids', 'fold_ids',
           'from_config', 'load']
