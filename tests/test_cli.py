"""Where the command-line tools keep XLA's compiled programs."""

import os
import subprocess
import sys

import pytest

from flig_jax import cli


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
  for name in ('JAX_COMPILATION_CACHE_DIR', cli.XLA_CACHE_ENV):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('FLIG_CACHE_DIR', str(tmp_path / 'root'))
  return monkeypatch


def test_default_is_under_the_flig_cache(clean_env, tmp_path):
  assert cli.compilation_cache_dir() == tmp_path / 'root' / 'xla'


def test_flig_variable_overrides_the_default(clean_env, tmp_path):
  clean_env.setenv(cli.XLA_CACHE_ENV, str(tmp_path / 'mine'))
  assert cli.compilation_cache_dir() == tmp_path / 'mine'


def test_jax_variable_wins(clean_env, tmp_path):
  clean_env.setenv(cli.XLA_CACHE_ENV, str(tmp_path / 'mine'))
  clean_env.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'jax'))
  assert cli.compilation_cache_dir() == tmp_path / 'jax'


@pytest.mark.parametrize('value', ['off', '', 'none'])
def test_cache_can_be_turned_off(clean_env, value):
  clean_env.setenv(cli.XLA_CACHE_ENV, value)
  assert cli.compilation_cache_dir() is None


@pytest.mark.slow   # compiles in a child process
def test_enabled_cache_stores_compiled_programs(tmp_path):
  """In a fresh process, as train.py and evaluate.py call it: a jitted function lands on disk,
  however quick its compile."""
  from tests import conftest
  env = conftest.subprocess_env(FLIG_XLA_CACHE_DIR=str(tmp_path / 'xla'))
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  env.pop('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', None)  # the tests' own threshold
  code = ('from flig_jax import cli; print(cli.enable_compilation_cache()); import jax; '
          'jax.jit(lambda x: x * 2 + 1)(1.0).block_until_ready()')
  proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                        timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == str(tmp_path / 'xla')
  assert any(p.name.endswith('-cache') for p in (tmp_path / 'xla').iterdir())


def test_blas_runs_on_one_thread_unless_the_user_chose(monkeypatch):
  monkeypatch.setenv('JAX_THREEFRY_PARTITIONABLE', '0')  # restored after, as the others are
  for name in cli._BLAS_THREAD_VARS:  # pylint: disable=protected-access
    monkeypatch.delenv(name, raising=False)
  cli.set_jax_environment()
  assert os.environ['OPENBLAS_NUM_THREADS'] == '1'
  monkeypatch.delenv('OPENBLAS_NUM_THREADS')
  monkeypatch.setenv('OMP_NUM_THREADS', '2')  # OpenBLAS reads this one too: the user's choice
  cli.set_jax_environment()
  assert 'OPENBLAS_NUM_THREADS' not in os.environ
  monkeypatch.setenv('OPENBLAS_NUM_THREADS', '4')
  cli.set_jax_environment()
  assert os.environ['OPENBLAS_NUM_THREADS'] == '4'
