"""Results over seeds: trains and evaluates every dataset with the shipped configs, then tabulates.

  python scripts/results.py                      # all datasets, 3 seeds (2-5 min a run on 2 cores)
  python scripts/results.py --datasets digit69,v4_190927 --seeds 5
  python scripts/results.py --smoke              # :smoke configs, 2 seeds, synthetic + digit69
  python scripts/results.py --stage1_from runs/results_before   # its autoencoders, stage 2 anew

For each dataset and seed k, `train.py --config <shipped config> --config.seed=k` then
`evaluate.py` (test split) run in `<root>/<dataset>/seed<k>`; a run whose eval_test/metrics.json
exists is skipped, and train.py resumes an unfinished one, so an interrupted call picks up where it
stopped. Then every metrics.json is aggregated (flig_jax.evaluation.aggregate): mean ± sd over
seeds for FLIG and every baseline, written to `<out>/summary.json` and `<out>/summary.md`, and
FLIG minus the best baseline per dataset and metric drawn in `--figure`.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

V4_SESSIONS = ('190925', '190927', '190928', '190929', '210224', '210305', '210322', '210621')
# name -> (config file, overrides): the shipped configs, the same for every V4 session.
DATASETS = {
    'digit69': ('configs/fmri.py', ()),
    **{f'v4_{s}': ('configs/spikes.py', (f'data.session={s}',)) for s in V4_SESSIONS},
    'synthetic': ('configs/synthetic.py', ()),
    'patterns': ('configs/synthetic.py:patterns', ()),
}
DEFAULT = tuple(name for name in DATASETS if name != 'patterns')
SMOKE = ('synthetic', 'digit69')

_DATASETS = flags.DEFINE_list('datasets', None, f'Datasets to run, of {list(DATASETS)} '
                              f'(default: {list(DEFAULT)}; with --smoke {list(SMOKE)}).')
_SEEDS = flags.DEFINE_integer('seeds', None, 'Seeds 0..S-1 per dataset (default 3; --smoke 2).')
_SMOKE = flags.DEFINE_bool('smoke', False, 'Use each config\'s :smoke variant (seconds per run) '
                           'and the runs/results_smoke and results_smoke defaults: a check of '
                           'this script.')
_ROOT = flags.DEFINE_string('root', None, 'Run directories (default runs/results, or '
                            'runs/results_smoke with --smoke).')
_OUT = flags.DEFINE_string('out', None, 'Where summary.json and summary.md go (default results, '
                           'or results_smoke with --smoke).')
_FIGURE = flags.DEFINE_string('figure', None, 'The FLIG-minus-best-baseline figure (default '
                              'docs/flig_minus_best.png, or <out>/flig_minus_best.png with '
                              '--smoke).')
_STAGE1_FROM = flags.DEFINE_string(
    'stage1_from', None, 'The root of an earlier sweep: each run takes the trained autoencoder of '
    'the same dataset and seed there, when that run finished (config.stage1.init_from), and '
    'trains stage 2 only.')
_AGGREGATE_ONLY = flags.DEFINE_bool('aggregate_only', False, 'Train and evaluate nothing; '
                                        'aggregate the metrics already there.')


def _config_spec(config: str, smoke: bool) -> str:
  if not smoke:
    return config
  path, _, variant = config.partition(':')
  return f'{path}:{",".join(filter(None, [variant, "smoke"]))}'


def _run(command: list[str], log: pathlib.Path) -> None:
  """Runs one command with its output in `log`; exits with one error line if it fails."""
  env = {**os.environ, 'PYTHONPATH': str(ROOT)}
  with open(log, 'a') as f:
    f.write(f'$ {" ".join(command)}\n')
    f.flush()
    code = subprocess.run(command, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                          check=False).returncode
  if code != 0:
    tail = log.read_text().strip().splitlines()[-3:]
    raise SystemExit(f'error: {" ".join(command)} exited with {code}; see {log}:\n'
                     + '\n'.join(tail))


def train_and_evaluate(name: str, seed: int, workdir: pathlib.Path, smoke: bool,
                       stage1_from: pathlib.Path | None = None) -> str:
  """Trains and evaluates one dataset and seed unless done; returns what it did."""
  metrics = workdir / 'eval_test' / 'metrics.json'
  if metrics.is_file():
    return 'done before'
  config, overrides = DATASETS[name]
  what = 'trained and evaluated'
  if stage1_from is not None and (stage1_from / 'eval_test' / 'metrics.json').is_file():
    overrides = (*overrides, f'stage1.init_from={stage1_from.resolve()}')
    what = f'stage 2 trained on the autoencoder of {stage1_from}, and evaluated'
  workdir.mkdir(parents=True, exist_ok=True)
  log = workdir / 'results.log'
  _run([sys.executable, str(ROOT / 'train.py'), f'--config={ROOT / _config_spec(config, smoke)}',
        f'--workdir={workdir}', f'--config.seed={seed}',
        *[f'--config.{o}' for o in overrides]], log)
  _run([sys.executable, str(ROOT / 'evaluate.py'), f'--ckpt={workdir}', '--split=test'], log)
  return what


def kept(workdir: pathlib.Path) -> dict[str, float] | None:
  """What a finished run's model selection kept: the stage-2 step of the encoder and the decoder
  (0: the closed-form start) and the pixel paths' blend weights (0 without them); None where the
  workdir holds metrics but no checkpoint."""
  from flig_jax import model  # pylint: disable=g-import-not-at-top

  try:
    m = model.load(workdir)
  except FileNotFoundError:
    return None
  steps = dict(zip(('encoder', 'decoder'), m.meta.selected_steps))
  paths = m.variables.get('pixel_path', {})
  return {**steps, 'pixel_weight': float(paths.get('weight', 0.0)),
          'encoder_pixel_weight': float(paths.get('enc_weight', 0.0))}


def kept_table(selections: dict[str, list[dict[str, float]]]) -> str:
  """Markdown: per dataset, on how many runs stage 2 kept a later step than its start (encoder,
  decoder) and each pixel path a weight above 0."""
  header = ('| dataset | runs | encoder: later step kept | decoder: later step kept | '
            'encoder pixel path weight > 0 | decoder pixel path weight > 0 |')
  lines = [header, '|---|---|---|---|---|---|']
  totals = [0, 0, 0, 0, 0]
  for name, runs in selections.items():
    counts = [len(runs), sum(r.get('encoder', 0) > 0 for r in runs),
              sum(r.get('decoder', 0) > 0 for r in runs),
              sum(r.get('encoder_pixel_weight', 0) > 0 for r in runs),
              sum(r['pixel_weight'] > 0 for r in runs)]
    totals = [t + c for t, c in zip(totals, counts)]
    lines.append(f'| {name} | ' + ' | '.join(map(str, counts)) + ' |')
  lines.append('| all | ' + ' | '.join(map(str, totals)) + ' |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from flig_jax import plotting  # pylint: disable=g-import-not-at-top
  from flig_jax.evaluation import aggregate  # pylint: disable=g-import-not-at-top

  smoke = _SMOKE.value
  names = _DATASETS.value or list(SMOKE if smoke else DEFAULT)
  unknown = [n for n in names if n not in DATASETS]
  if unknown:
    raise SystemExit(f'error: unknown dataset(s) {unknown}; choose from {list(DATASETS)}')
  seeds = _SEEDS.value if _SEEDS.value is not None else (2 if smoke else 3)
  if seeds < 1:
    raise SystemExit(f'error: --seeds must be >= 1, got {seeds}')
  root = pathlib.Path(_ROOT.value or ('runs/results_smoke' if smoke else 'runs/results'))
  out = pathlib.Path(_OUT.value or ('results_smoke' if smoke else 'results'))
  figure = _FIGURE.value or str(out / 'flig_minus_best.png' if smoke
                                else 'docs/flig_minus_best.png')

  summaries, selections = {}, {}
  for name in names:
    runs = []
    for seed in range(seeds):
      workdir = root / name / f'seed{seed}'
      if not _AGGREGATE_ONLY.value:
        start = time.perf_counter()
        source = (pathlib.Path(_STAGE1_FROM.value) / name / f'seed{seed}'
                  if _STAGE1_FROM.value else None)
        what = train_and_evaluate(name, seed, workdir, smoke, source)
        print(f'{name} seed {seed}: {what} ({time.perf_counter() - start:.0f} s)', flush=True)
      path = workdir / 'eval_test' / 'metrics.json'
      if path.is_file():
        runs.append(aggregate.read_metrics(path))
        selection = kept(workdir)
        if selection is not None:
          selections.setdefault(name, []).append(selection)
    if runs:
      summaries[name] = aggregate.aggregate(runs)
      print(aggregate.format_table(summaries[name]) + '\n', flush=True)
  if not summaries:
    raise SystemExit(f'error: no metrics under {root} to aggregate')

  out.mkdir(parents=True, exist_ok=True)
  with open(out / 'summary.json', 'w') as f:
    json.dump(aggregate.to_json(summaries), f, indent=2)
    f.write('\n')
  tables = (aggregate.markdown_table(summaries) + '\n\nFLIG minus `cae_ridge` and minus the best '
            'baseline (mean ± standard error of the differences paired by seed):\n\n'
            + aggregate.differences_table(summaries))
  if selections:
    tables += ('\n\nWhat model selection kept (cross-validated over the training pairs):\n\n'
               + kept_table(selections))
  (out / 'summary.md').write_text(tables + '\n')
  differences = {name: aggregate.flig_minus_best(s) for name, s in summaries.items()}
  plotting.differences_figure(differences, aggregate.HEADLINE_KEYS, figure, tie=aggregate.TIE)
  print(tables)
  print(f'\nwrote {out / "summary.json"}, {out / "summary.md"} and {figure}')


if __name__ == '__main__':
  app.run(main)
