"""Shared pytest fixtures: where the real (read-only) datasets live, a compilation cache shared by
every test process, and one smoke-trained model that several test files read."""

import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Tests start many short training runs of the same tiny programs: XLA's persistent cache lets every
# process after the first load them instead of compiling again (seconds each on a 2-core CPU).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      str(pathlib.Path(tempfile.gettempdir()) / 'flig_jax_test_xla_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.3')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')


def subprocess_env(devices: int = 1, **extra: str) -> dict[str, str]:
  """The environment of a child process: `devices` fake CPU devices, the repo importable."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['PYTHONPATH'] = str(ROOT)
  env.update(extra)
  return env


def train_command(workdir: pathlib.Path, config: str = 'configs/synthetic.py:smoke',
                  *overrides: str) -> list[str]:
  return [sys.executable, str(ROOT / 'train.py'), f'--config={ROOT / config}',
          f'--workdir={workdir}', *overrides]


def train(workdir: pathlib.Path, *overrides: str, config: str = 'configs/synthetic.py:smoke',
          devices: int = 1, timeout: float = 300, check: bool = True,
          **env: str) -> subprocess.CompletedProcess:
  """Runs train.py in a child process; asserts success unless `check` is False."""
  proc = subprocess.run(train_command(workdir, config, *overrides),
                        env=subprocess_env(devices, **env), cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, check=False)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope='session')
def data_root() -> pathlib.Path:
  """The shared data root ($FLIG_DATA_DIR, else ../shared/data beside the repo); skips if absent."""
  default = ROOT / '..' / 'shared' / 'data'
  root = pathlib.Path(os.environ.get('FLIG_DATA_DIR') or default).resolve()
  if not root.is_dir():
    pytest.skip(f'no shared data at {root} (set FLIG_DATA_DIR)')
  return root


@pytest.fixture(scope='session')
def smoke_workdir(tmp_path_factory) -> pathlib.Path:
  """A run of `train.py --config configs/synthetic.py:smoke`, made once per test process."""
  workdir = tmp_path_factory.mktemp('smoke') / 'run'
  train(workdir)
  return workdir
