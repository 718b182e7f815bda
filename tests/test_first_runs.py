"""A new user's first runs through train.py and evaluate.py: an own .npz file (10x10 images too),
the `:smoke` variant of configs/default.py, runs without a validation split, a bad --workdir,
Ctrl-C at any moment, and what the run says about TensorBoard, a kept closed-form start and its
figures."""

import importlib.util
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, subprocess_env, train, train_command
from PIL import Image

_LONG = ('--config.stage1.steps=300', '--config.stage2.steps=300',
         '--config.checkpoint.every_steps=10')


def _png_text(path: Path) -> dict[str, str]:
  """The text chunks of a PNG (its Title and Description)."""
  with Image.open(path) as im:
    im.load()
    return {k: v for k, v in im.text.items() if k != 'Software'}


def _evaluate(workdir: Path) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(ROOT / 'evaluate.py'), f'--ckpt={workdir}'],
                        env=subprocess_env(), cwd=ROOT, capture_output=True, text=True,
                        timeout=600, check=False)


@pytest.mark.slow
def test_a_data_path_without_the_npz_dataset_is_refused_in_one_line(tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / 'my.npz'
  np.savez(path, stimuli=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
           responses=rng.normal(size=(40, 5)))
  workdir = tmp_path / 'run'
  proc = train(workdir, f'--config.data.path={path}', check=False)
  assert proc.returncode == 1, proc.stdout[-2000:]
  assert 'Traceback' not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert errors == [(f"error: config.data.path = '{path}': read only by the npz dataset, and "
                     "config.data.name is 'synthetic'; add --config.data.name=npz")], proc.stderr
  assert not (workdir / 'checkpoints').exists()


@pytest.mark.slow
def test_an_npz_of_10x10_patterns_trains_and_evaluates(tmp_path):
  """Images smaller than SSIM's 11-pixel window, as in some fMRI sets: scored, and said so; and a
  test split of a few pairs, whose per-unit encoding PCCs are noted as saying little."""
  rng = np.random.default_rng(0)
  path = tmp_path / 'patterns.npz'
  stimuli = (rng.random((60, 10, 10)) < 0.5).astype(np.uint8) * 255
  np.savez(path, stimuli=stimuli, responses=stimuli.reshape(60, -1) @ rng.normal(size=(100, 30)),
           split=np.array(['train'] * 52 + ['test'] * 8))
  workdir = tmp_path / 'run'
  train(workdir, '--config.data.name=npz', f'--config.data.path={path}',
        config='configs/default.py:smoke')
  proc = _evaluate(workdir)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'SSIM with the largest Gaussian window that fits 10x10 images: 9 taps' in proc.stderr
  assert 'note: the test split holds 8 pairs' in proc.stderr
  scores = json.loads((workdir / 'eval_test' / 'metrics.json').read_text())['decoding']
  assert all(np.isfinite(row['ssim']) for row in scores.values())


@pytest.mark.slow
def test_default_config_has_a_smoke_variant_and_the_run_explains_what_it_kept(tmp_path):
  workdir = tmp_path / 'run'
  # A margin no gain can clear: stage 2 keeps its closed-form start in both directions.
  proc = train(workdir, '--config.stage2.select_margin=1e9', config='configs/default.py:smoke')
  assert 'done: training finished' in proc.stdout
  assert 'stage 1 6 steps of 8' in proc.stdout  # the smoke sizes, not the defaults
  assert ('note: FLIG equals its closed-form ridge start on this data, in both directions: no '
          'later step of stage 2 beat step 0 on 5-fold cross-validation over the training pairs '
          'by more than stage2.select_margin = 1e+09 jackknife standard errors') in proc.stdout
  # Each pixel path, when chosen, is named, not hidden behind the cae_ridge baseline.
  for direction, line in (('decoding', 'pixel path'), ('encoding', 'encoder pixel path')):
    weight = re.search(rf'^{line}: blend weight ([0-9.]+)', proc.stdout, re.MULTILINE)
    assert weight, proc.stdout
    blended = f'{direction} blends with its pixel path (weight {weight.group(1)})'
    assert (blended in proc.stdout) == (float(weight.group(1)) > 0)
  # The figures say which split and which step they show.
  assert _png_text(workdir / 'stage1_reconstructions.png')['Title'] == (
      'synthetic, train split: stage 1 at step 6')  # no validation split: 5 folds
  assert _png_text(workdir / 'stage2_decoding.png')['Title'] == (
      'synthetic, train split: stage 2, flow kept enc_pcc at step 0, dec_pcc at step 0')
  # TensorBoard is not a dependency: the closing lines say how to install it.
  hint = 'TensorBoard is not installed: pip install -e ".[tensorboard]"'
  assert (hint in proc.stdout) == (importlib.util.find_spec('tensorboard') is None)


def test_tensorboard_is_an_extra_and_part_of_dev():
  tomllib = pytest.importorskip('tomllib')  # Python 3.11+
  extras = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project'][
      'optional-dependencies']
  assert 'tensorboard' in extras['tensorboard'] and 'tensorboard' in extras['dev']


@pytest.mark.slow
@pytest.mark.parametrize('val_fraction, kept', [
    (0.0, ('no validation split (data.val_fraction) and no cross-validation (data.folds): '
           'stage 2 keeps its last step')),
    (0.002, ('a validation split of 1 image is too small to score (data.val_fraction) and no '
             'cross-validation (data.folds): stage 2 keeps its last step')),  # round(0.002 * 256)
])
def test_a_run_without_a_usable_validation_split_trains_saves_and_evaluates(
    tmp_path, val_fraction, kept):
  workdir = tmp_path / 'run'
  proc = train(workdir, f'--config.data.val_fraction={val_fraction}', '--config.data.folds=0',
               check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert kept in proc.stdout
  assert not list(workdir.rglob('*orbax-checkpoint-tmp*'))
  meta = json.loads(next(p for p in (workdir / 'checkpoints' / '12' / 'meta').iterdir()
                         if p.name != 'commit_success.txt').read_text())
  assert meta['finished'] and meta['selected_steps'] == [6, 6]  # the last step
  shown = 'val' if val_fraction else 'train'  # the validation pairs, if any, else training pairs
  assert _png_text(workdir / 'stage2_decoding.png')['Title'] == (
      f'synthetic, {shown} split: stage 2, flow kept enc_pcc at step 6, dec_pcc at step 6')
  proc = _evaluate(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _png_text(workdir / 'eval_test' / 'reconstructions.png')['Title'] == (
      'decoding: synthetic, test split (n = 64): checkpoint step 12')
  assert _png_text(workdir / 'eval_test' / 'encoding.png')['Title'] == (
      'encoding: synthetic, test split (n = 64): checkpoint step 12')


@pytest.mark.slow
def test_a_workdir_that_is_a_file_is_one_error_line(tmp_path):
  workdir = tmp_path / 'notes.txt'
  workdir.write_text('mine')
  proc = train(workdir, check=False)
  assert proc.returncode == 1
  assert 'Traceback' not in proc.stderr
  assert [line for line in proc.stderr.splitlines() if line.strip()] == [
      (f'error: --workdir {workdir}: a file is there, not a folder; name a new folder or the '
       'folder of a run to resume')]
  assert workdir.read_text() == 'mine'


def _interrupt_after(workdir: Path, seconds: float) -> tuple[int, str, str]:
  """Starts a long smoke run, sends Ctrl-C (SIGINT) after `seconds`; (exit status, out, err)."""
  proc = subprocess.Popen(train_command(workdir, 'configs/synthetic.py:smoke', *_LONG),
                          env=subprocess_env(), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    time.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
  finally:
    proc.kill()
  return proc.returncode, out, err


@pytest.mark.slow
@pytest.mark.parametrize('seconds', [0.3, 0.6, 1.0, 2.0, 4.0])
def test_ctrl_c_in_start_up_stops_the_run_cleanly(tmp_path, seconds):
  """Ctrl-C lands in imports, compiles or JAX's garbage-collection callbacks: wherever it lands,
  the run stops with one line and status 130 instead of training on."""
  returncode, out, err = _interrupt_after(tmp_path / 'run', seconds)
  assert returncode == 130, err[-3000:]
  assert 'Traceback' not in err and 'Exception ignored' not in err, err[-3000:]
  assert err.strip().splitlines()[-1].startswith('interrupted'), err[-3000:]
  assert 'done: training finished' not in out


@pytest.mark.slow
def test_ctrl_c_in_stage_2_names_the_checkpoint_on_disk(tmp_path):
  workdir = tmp_path / 'run'
  proc = subprocess.Popen(train_command(workdir, 'configs/synthetic.py:smoke', *_LONG),
                          env=subprocess_env(), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300
    while not (workdir / 'checkpoints' / '320').exists():  # stage 2, step 20
      assert proc.poll() is None, proc.stderr.read()[-3000:]
      assert time.time() < deadline, 'no checkpoint 320 after 300 s'
      time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 130, err[-3000:]
  line = next(line for line in out.splitlines() if line.startswith('interrupted: '))
  stage_step, path = line.removeprefix('interrupted: stage 2 step ').split(' saved as ')
  checkpoint = Path(path)
  assert checkpoint.parent == workdir / 'checkpoints' and checkpoint.is_dir()
  assert int(checkpoint.name) == 300 + int(stage_step)  # numbered after stage 1's 300 steps
  assert max(int(p.name) for p in checkpoint.parent.iterdir() if p.name.isdigit()) == int(
      checkpoint.name)
  assert err.strip().splitlines()[-1] == (
      f'interrupted; {checkpoint} is kept: run the same command to resume from it')


@pytest.mark.slow
def test_help_points_to_the_documented_fields_and_the_smoke_variants():
  proc = subprocess.run([sys.executable, str(ROOT / 'train.py'), '--help'], env=subprocess_env(),
                        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
  text = proc.stdout + proc.stderr
  assert 'configs/default.py' in text and ':smoke' in text
  assert '--config.' in text
