"""evaluate.py and `flig_jax.evaluation.run`: metrics.json's shape, figures, the round trip, the
baselines' validation discipline and the command line's one-line errors, on a smoke-trained
model."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import train

from flig_jax import data, model, ridge
from flig_jax.evaluation import baselines, report, run

ROOT = Path(__file__).resolve().parents[1]
MODELS = ('flig', 'ridge', 'mlp', 'cae_ridge', 'cae_mlp')


@pytest.fixture
def workdir(smoke_workdir) -> Path:
  """The session's synthetic smoke run (conftest.py)."""
  return smoke_workdir


def _evaluate_cli(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, str(ROOT / 'evaluate.py'), *args], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=180, check=False)


def _assert_one_error_line(proc: subprocess.CompletedProcess, fragment: str) -> None:
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, proc.stderr[-2000:]
  assert fragment in errors[0], errors[0]
  assert 'decoding' not in proc.stdout


@pytest.mark.slow
def test_cli_writes_metrics_of_design_shape_and_figures(workdir):
  proc = _evaluate_cli(f'--ckpt={workdir}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = workdir / 'eval_test'
  metrics = json.loads((out / 'metrics.json').read_text())
  report.validate_metrics(metrics)
  assert (metrics['dataset'], metrics['split'], metrics['n']) == ('synthetic', 'test', 64)
  for section, keys in (('decoding', report.DECODING_KEYS), ('encoding', report.ENCODING_KEYS)):
    assert set(metrics[section]) == set(MODELS), section
    for name in MODELS:
      row = metrics[section][name]
      assert set(row) == set(keys)
      assert all(isinstance(v, float) and math.isfinite(v) for v in row.values()), row
  for name in MODELS:
    assert 0.0 <= metrics['decoding'][name]['identification'] <= 1.0
    assert -1.0 <= metrics['decoding'][name]['pcc'] <= 1.0
  assert isinstance(metrics['roundtrip_max_abs_err'], float)
  assert metrics['roundtrip_max_abs_err'] < 1e-5
  assert metrics['checkpoint_step'] > 0
  assert metrics['baseline_hparams']['chosen_on'].startswith('train (5-fold cross-validation')
  assert metrics['baseline_hparams']['ridge']['decoding_alpha'] > 0
  for png in ('reconstructions.png', 'encoding.png'):
    assert (out / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', png
  assert 'decoding (response -> image)' in proc.stdout
  assert 'cae_ridge' in proc.stdout
  assert 'Traceback' not in proc.stderr


@pytest.mark.slow
def test_cli_errors_without_a_checkpoint(tmp_path):
  _assert_one_error_line(_evaluate_cli(f'--ckpt={tmp_path / "nowhere"}'), 'no checkpoint')


@pytest.mark.slow
def test_cli_errors_on_a_bad_split(workdir, tmp_path):
  proc = _evaluate_cli(f'--ckpt={workdir}', '--split=train', f'--out={tmp_path}')
  _assert_one_error_line(proc, "'train'")
  assert not (tmp_path / 'metrics.json').exists()


@pytest.mark.slow
def test_cli_errors_on_missing_data(workdir, tmp_path):
  m = model.load(workdir)
  config = m.config.copy_and_resolve_references()
  config.data.name = 'digit69'
  config.data.dir = ''
  model.save(tmp_path / 'ckpt', config, m.variables, m.meta, step=1)
  missing = tmp_path / 'no_such_folder'
  proc = _evaluate_cli(f'--ckpt={tmp_path / "ckpt"}', f'--data_dir={missing}')
  _assert_one_error_line(proc, str(missing))


@pytest.mark.slow
def test_cli_says_why_a_cross_validated_run_has_no_val_split(workdir, tmp_path):
  proc = _evaluate_cli(f'--ckpt={workdir}', '--split=val', f'--out={tmp_path}')
  _assert_one_error_line(proc, 'data.folds = 5 cross-validates over the training pairs')


def _record_validation_inputs(monkeypatch) -> list[tuple[str, object, object]]:
  """Wraps the baseline fits (and the ridge fits of `cae_ridge`, `closed_form.fit_maps`) so that
  each call's validation inputs are recorded as (fit, x_val, y_val); the fits still run."""
  seen = []

  def recording(module, name):
    fit = getattr(module, name)

    def spy(x, y, x_val=None, y_val=None, *args, **kwargs):
      seen.append((name, x_val, y_val))
      return fit(x, y, x_val, y_val, *args, **kwargs)
    return spy

  for module, name in ((baselines, 'fit_ridge'), (baselines, 'fit_mlp'), (ridge, 'fit_ridge')):
    monkeypatch.setattr(module, name, recording(module, name))
  return seen


def _same(a, b) -> bool:
  return a is not None and np.shape(a) == np.shape(b) and np.array_equal(a, b)


@pytest.fixture(scope='module')
def val_workdir(tmp_path_factory) -> Path:
  """A smoke run that selects on a validation split (data.folds 0) instead of by folds."""
  workdir = tmp_path_factory.mktemp('val') / 'run'
  train(workdir, '--config.data.folds=0', '--config.data.val_fraction=0.1')
  return workdir


@pytest.mark.slow
def test_baselines_choose_hyper_parameters_on_val_never_on_test(val_workdir, monkeypatch):
  ds = data.from_config(model.load(val_workdir).config)
  seen = _record_validation_inputs(monkeypatch)
  _, _, hparams = run.fit_baselines(model.load(val_workdir), ds, 'test', mlp_steps=10)
  assert hparams['chosen_on'] == 'val'
  assert sorted(name for name, _, _ in seen) == ['fit_mlp'] * 4 + ['fit_ridge'] * 4
  # ridge and mlp (pixels and responses) see the validation split itself; cae_ridge and cae_mlp
  # its features and adapted responses. None sees the test split.
  on_val = [c for c in seen if all(_same(a, ds.val.responses) or _same(a, ds.val.images)
                                   for a in c[1:])]
  assert len(on_val) == 4
  for _, x_val, y_val in seen:
    assert len(x_val) == len(y_val) == len(ds.val) != len(ds.test)
    for arr in (x_val, y_val):
      assert not _same(arr, ds.test.responses) and not _same(arr, ds.test.images)


@pytest.mark.slow
def test_evaluate_on_val_keeps_val_out_of_the_baselines(val_workdir, tmp_path, monkeypatch):
  workdir = val_workdir
  seen = _record_validation_inputs(monkeypatch)
  metrics = run.evaluate(workdir, split='val', out=tmp_path, mlp_steps=10, verbose=False)
  # Scoring val, no fit sees it: they pick hyper-parameters inside the training split.
  assert len(seen) == 8 and all(x is None and y is None for _, x, y in seen)
  assert metrics['split'] == 'val'
  assert metrics['n'] == len(data.from_config(model.load(workdir).config).val) > 1
  # The scored split must not choose the baselines' hyper-parameters.
  assert metrics['baseline_hparams']['chosen_on'] != 'val'
  assert set(metrics['decoding']) == set(MODELS) == set(metrics['encoding'])
  assert metrics['roundtrip_max_abs_err'] < 1e-5
  written = json.loads((tmp_path / 'metrics.json').read_text())
  for name in MODELS:
    assert written['decoding'][name] == pytest.approx(metrics['decoding'][name])
    assert written['encoding'][name] == pytest.approx(metrics['encoding'][name])
  assert (tmp_path / 'reconstructions.png').is_file() and (tmp_path / 'encoding.png').is_file()


def test_evaluate_rejects_a_bad_split_before_loading(tmp_path):
  with pytest.raises(ValueError, match='unknown split'):
    run.evaluate(tmp_path / 'nowhere', split='train', verbose=False)


def test_data_dir_points_an_npz_run_at_its_moved_file(tmp_path):
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.data.name, config.data.path = 'npz', '/where/it/was/mine.npz'
  assert run._data_config(config, str(tmp_path)).data.path == str(tmp_path / 'mine.npz')
  moved = str(tmp_path / 'renamed.npz')
  assert run._data_config(config, moved).data.path == moved
  assert run._data_config(config, None).data.path == '/where/it/was/mine.npz'
