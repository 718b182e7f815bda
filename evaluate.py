"""Scores a trained FLIG checkpoint beside the ridge, MLP and CAE + ridge baselines on one split.

  python evaluate.py --ckpt runs/fmri [--split test|val] [--out DIR] [--data_dir DIR]
  python evaluate.py --ckpt runs/a --ckpt runs/b --ckpt runs/c   # and mean ± sd over the three

Config, parameters and adapter come from the newest checkpoint that restores (a damaged newer one
is skipped with a note); a run that has not finished training is refused unless --allow_unfinished.
Baselines are fitted on the training split, their hyper-parameters chosen by the run's
cross-validation folds over it (data.folds), or on the validation split in a run without folds.
Prints the tables and writes metrics.json, reconstructions.png and encoding.png to --out (default
<ckpt>/eval_<split>). Given several checkpoints (e.g. seeds of one config), it evaluates each into
its own <ckpt>/eval_<split>, then prints every model's metrics as mean ± sd over them.
"""

import sys

from absl import app, flags, logging

_CKPT = flags.DEFINE_multi_string('ckpt', None, 'The run\'s workdir (or its checkpoints/ '
                                  'directory); repeat it to aggregate several runs.')
_SPLIT = flags.DEFINE_string('split', 'test', 'The split to score: test or val (val only in a '
                             'run with data.folds 0 or 1 and data.val_fraction > 0).')
_OUT = flags.DEFINE_string('out', None, 'Output directory (default: <ckpt>/eval_<split>; one '
                           '--ckpt only).')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'The dataset\'s own folder, overriding the '
                                'checkpoint\'s config.data.dir (for an npz run: its .npz file, or '
                                'the folder now holding it, overriding config.data.path).')
_ALLOW_UNFINISHED = flags.DEFINE_bool('allow_unfinished', False, 'Score a run that has not '
                                      'finished training (its newest checkpoint holding a '
                                      'model, saved from stage 2 on).')
flags.mark_flags_as_required(['ckpt'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  ckpts = _CKPT.value
  if len(ckpts) > 1 and _OUT.value:
    raise app.UsageError('--out takes one --ckpt; several write to <ckpt>/eval_<split> each')
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  from flig_jax import cli  # imported here so --help stays fast
  if len(ckpts) == 1:
    sys.exit(cli.run_evaluation(ckpts[0], split=_SPLIT.value, out=_OUT.value,
                                data_dir=_DATA_DIR.value,
                                allow_unfinished=_ALLOW_UNFINISHED.value))
  sys.exit(cli.run_evaluations(ckpts, split=_SPLIT.value, data_dir=_DATA_DIR.value,
                               allow_unfinished=_ALLOW_UNFINISHED.value))


if __name__ == '__main__':
  from flig_jax import cli
  cli.set_jax_environment()  # before JAX is imported
  app.run(main, flags_parser=cli.parse_flags)
