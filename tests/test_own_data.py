"""A new user's first runs through train.py: an own .npz file named without its dataset, and the
`:smoke` variant of configs/default.py."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, subprocess_env, train


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
def test_default_config_has_a_smoke_variant(tmp_path):
  proc = train(tmp_path / 'run', config='configs/default.py:smoke')
  assert 'done: training finished' in proc.stdout
  assert 'stage 1 6 steps of 8' in proc.stdout  # the smoke sizes, not the defaults


@pytest.mark.slow
def test_help_points_to_the_documented_fields_and_the_smoke_variants():
  proc = subprocess.run([sys.executable, str(ROOT / 'train.py'), '--help'], env=subprocess_env(),
                        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
  text = proc.stdout + proc.stderr
  assert 'configs/default.py' in text and ':smoke' in text
  assert '--config.' in text
