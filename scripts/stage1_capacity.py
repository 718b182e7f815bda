"""Stage-1 capacity: validation reconstruction of the autoencoder G(E(x)) for several feature
sizes D.

  python scripts/stage1_capacity.py --config configs/fmri.py --dims 32,64,128
  python scripts/stage1_capacity.py --config configs/spikes.py --set data.session=210224
  python scripts/stage1_capacity.py --config configs/synthetic.py:patterns

Each D is one `train.py` run with `--config.model.feature_dim=D` and a one-step stage 2 (stage 1
as configured), in `<root>/<tag>_D<D>`; a finished run is reused. Reconstructions are scored on the
VALIDATION split carved from train (never test): mean per-image PCC (± its standard error over
images), pixel MSE and SSIM, and the paired per-image PCC difference to the best D (± its standard
error: a D whose difference is within about two of them is as good as the best). One line per D is
printed and appended to `<root>/capacity.jsonl`.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
from absl import app, flags, logging

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_CONFIG = flags.DEFINE_string('config', None, 'Config spec, e.g. configs/spikes.py or '
                              'configs/synthetic.py:patterns.')
_DIMS = flags.DEFINE_list('dims', ['32', '64', '128'], 'Feature sizes D to try.')
_SET = flags.DEFINE_multi_string('set', [], 'Extra config overrides for every run, e.g. '
                                 'data.session=210224 or model.cae_widths=(16,32,64).')
_ROOT = flags.DEFINE_string('root', 'runs/stage1_capacity', 'Where the runs go.')
_TAG = flags.DEFINE_string('tag', None, 'Run-name prefix (default: from --config and --set).')
flags.mark_flags_as_required(['config'])


def _tag() -> str:
  if _TAG.value:
    return _TAG.value
  name = pathlib.Path(_CONFIG.value.split(':')[0]).stem
  variant = _CONFIG.value.partition(':')[2].replace(',', '_')
  extra = [s.split('=', 1)[1] for s in _SET.value if '=' in s]
  return '_'.join(filter(None, [name, variant, *extra])).replace('/', '_').replace(' ', '')


def _train(workdir: pathlib.Path, dim: int) -> float:
  """Trains stage 1 (and one stage-2 step, so the checkpoint loads as a model); returns seconds."""
  command = [sys.executable, str(ROOT / 'train.py'), f'--config={ROOT / _CONFIG.value}',
             f'--workdir={workdir}', f'--config.model.feature_dim={dim}',
             '--config.stage2.steps=1', *[f'--config.{s}' for s in _SET.value]]
  env = {**os.environ, 'PYTHONPATH': str(ROOT)}
  start = time.perf_counter()
  proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise SystemExit(f'error: {" ".join(command)} failed:\n{proc.stderr[-2000:]}')
  return time.perf_counter() - start


def _score(workdir: pathlib.Path) -> dict[str, float]:
  """Validation reconstruction of the run at `workdir`."""
  from flig_jax import data, model  # pylint: disable=g-import-not-at-top
  from flig_jax.evaluation import metrics  # pylint: disable=g-import-not-at-top

  m = model.load(workdir)
  val = data.from_config(m.config).val
  if len(val) < 2:
    raise SystemExit(f'error: {workdir}: the validation split has {len(val)} images; set '
                     'data.val_fraction > 0')
  per_image = metrics.decoding_metrics(m.reconstruct(val.images), val.images, per_image=True)
  pcc = per_image['pcc']
  return {'n_val': len(val), 'pcc': float(pcc.mean()), 'pcc_values': pcc.tolist(),
          'pcc_sem': float(pcc.std(ddof=1) / np.sqrt(len(pcc))),
          'mse': float(per_image['mse'].mean()), 'ssim': float(per_image['ssim'].mean()),
          'stage1_steps': int(m.config.stage1.steps)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  root = pathlib.Path(_ROOT.value)
  root.mkdir(parents=True, exist_ok=True)
  tag = _tag()
  rows = []
  for dim in (int(d) for d in _DIMS.value):
    workdir = root / f'{tag}_D{dim}'
    timing = workdir / 'train_seconds.txt'
    if not (timing.is_file() and _finished(workdir)):
      timing.write_text(f'{_train(workdir, dim):.1f}\n')
    seconds = float(timing.read_text())
    rows.append({'run': workdir.name, 'config': _CONFIG.value, 'set': _SET.value,
                 'feature_dim': dim, **_score(workdir), 'train_seconds': seconds})
    print(f'{workdir.name}: trained and scored', flush=True)
  best = max(rows, key=lambda r: r['pcc'])
  print(f'{"run":<36} {"D":>4} {"n_val":>5} {"pcc ± sem":>13} {"mse":>7} {"ssim":>6} '
        f'{"pcc - best ± sem":>17} {"train s":>7}')
  for row in rows:
    diff = np.subtract(row['pcc_values'], best['pcc_values'])
    row['pcc_minus_best'] = float(diff.mean())
    row['pcc_minus_best_sem'] = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    print(f'{row["run"]:<36} {row["feature_dim"]:>4} {row["n_val"]:>5} '
          f'{row["pcc"]:>6.3f} ± {row["pcc_sem"]:.3f} {row["mse"]:>7.4f} {row["ssim"]:>6.3f} '
          f'{row["pcc_minus_best"]:>+8.3f} ± {row["pcc_minus_best_sem"]:.3f} '
          f'{row["train_seconds"]:>7.0f}')
  with open(root / 'capacity.jsonl', 'a') as f:
    for row in rows:
      f.write(json.dumps(row) + '\n')


def _finished(workdir: pathlib.Path) -> bool:
  try:
    from flig_jax import model  # pylint: disable=g-import-not-at-top
    return model.load(workdir).meta.finished
  except (FileNotFoundError, ValueError):
    return False


if __name__ == '__main__':
  app.run(main)
