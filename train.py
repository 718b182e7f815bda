"""Trains FLIG (stage 1: autoencoder; stage 2: cross-modal flow) and writes orbax checkpoints.

  python train.py --config configs/fmri.py --workdir runs/fmri [--config.stage2.steps=2000]

Running it again with the same --workdir resumes from the latest checkpoint.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/fmri.py.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and figures go '
                               '(default: runs/<dataset>).')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from flig_jax import cli  # imported here so --help stays fast
  config = _CONFIG.value
  workdir = _WORKDIR.value or f'runs/{config.data.name}'
  sys.exit(cli.run_training(config, workdir))


if __name__ == '__main__':
  from flig_jax import cli
  app.run(main, flags_parser=cli.parse_flags)
