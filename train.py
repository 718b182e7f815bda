"""Trains FLIG (stage 1: autoencoder; stage 2: cross-modal flow) and writes orbax checkpoints.

  python train.py --config configs/fmri.py --workdir runs/fmri [--config.stage2.steps=2000]
  python train.py --config configs/synthetic.py:smoke --workdir /tmp/smoke   # seconds

Every config field is listed, with what it does, in configs/default.py; any of them can be set
with --config.<section>.<field>=<value> (e.g. --config.data.name=npz --config.data.path=my.npz
for an own recording). Every config file has a `:smoke` variant (configs/default.py:smoke too)
that shrinks the model and the steps to a run of seconds.

Running it again with the same --workdir resumes from the newest checkpoint that restores; the
fields of the config that shape the model, data or optimiser must then be those saved with it
(--allow_config_change overrides that). One run at a time may use a workdir. Ctrl-C or SIGTERM
saves a checkpoint at the next step and stops (exit status 130 or 143).
"""

import time

_STARTED = time.perf_counter()  # the run's time breakdown counts from here

import sys

from flig_jax import interrupts

interrupts.install()  # first: a Ctrl-C from here on ends the run with one line

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/fmri.py or configs/synthetic.py:smoke; its fields '
    '(all listed in configs/default.py) are set with --config.<section>.<field>=<value>.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and figures go '
                               '(default: runs/<dataset>).')
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Resume even if config fields that shape the model, data or '
    'optimiser differ from those saved with the checkpoint (e.g. a new learning rate).')
flags.mark_flags_as_required(['config'])


def _config_source() -> str:
  """The config file (and variant) and the --config.* overrides, as given."""
  overrides = [a for a in sys.argv[1:] if a.startswith('--config.')]
  return ' '.join([flags.FLAGS['config'].config_filename, *overrides])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from flig_jax import cli  # imported here so --help stays fast
  config = _CONFIG.value
  workdir = _WORKDIR.value or f'runs/{config.data.name}'
  cli.exit_with(cli.run_training(config, workdir, source=_config_source(),
                                allow_config_change=_ALLOW_CONFIG_CHANGE.value,
                                started=_STARTED))


if __name__ == '__main__':
  from flig_jax import cli
  cli.set_jax_environment()  # before JAX is imported
  app.run(main, flags_parser=cli.parse_flags)
