"""Shared pytest fixtures: where the real (read-only) datasets live, a compilation cache shared by
every test process, and one smoke-trained model that several test files read (their tests are
marked slow here).

Tiers: `-m "not slow"` is the quick check; a test that trains a model, starts training or
evaluation processes, or runs for more than a few seconds on two cores carries the `slow` marker.
Every test has pytest-timeout's limit (pyproject.toml); those that train several runs in a row
raise it with `pytest.mark.timeout`."""

import os
import pathlib
import subprocess
import sys
import tempfile
import time

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
  env.setdefault('JAX_THREEFRY_PARTITIONABLE', '0')  # as train.py and evaluate.py set it
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


def signal_at_checkpoint(workdir: pathlib.Path, step: int, sig: int, *overrides: str,
                         timeout: float = 120) -> tuple[int, str]:
  """Starts train.py on the synthetic smoke config, sends `sig` once checkpoint `step` exists and
  returns the exit code and stderr of the run."""
  proc = subprocess.Popen(train_command(workdir, 'configs/synthetic.py:smoke', *overrides),
                          env=subprocess_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 180
    while not (workdir / 'checkpoints' / str(step)).exists():
      assert proc.poll() is None, 'run ended before the signal: ' + proc.stderr.read()[-3000:]
      assert time.time() < deadline, f'no checkpoint {step} after 180 s'
      time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=timeout)
  finally:
    proc.kill()
  return proc.returncode, err


def pytest_collection_modifyitems(items):
  """A test that reads the session's smoke-trained run (`smoke_workdir`, directly or through
  another fixture) may be the one that trains it: it is marked slow."""
  for item in items:
    if 'smoke_workdir' in getattr(item, 'fixturenames', ()):
      item.add_marker(pytest.mark.slow)


def require_data(path: pathlib.Path, what: str) -> pathlib.Path:
  """`path`, which must exist when FLIG_DATA_DIR is set (else the test fails: a data test that
  skips under a wrong root proves nothing); without FLIG_DATA_DIR a missing `path` skips."""
  if path.exists():
    return path
  if os.environ.get('FLIG_DATA_DIR'):
    pytest.fail(f'FLIG_DATA_DIR is set but {what} is missing: {path}')
  pytest.skip(f'no {what} at {path} (set FLIG_DATA_DIR)')


@pytest.fixture(scope='session')
def data_root() -> pathlib.Path:
  """The real-data root $FLIG_DATA_DIR (a folder holding digit69/ and cowley_v4/), which must exist
  when set; the tests that need it skip, saying why, when it is unset."""
  root = os.environ.get('FLIG_DATA_DIR')
  if not root:
    pytest.skip('needs the real recordings: set FLIG_DATA_DIR to a folder holding digit69/ and '
                'cowley_v4/')
  return require_data(pathlib.Path(root).resolve(), 'the data root')


@pytest.fixture(scope='session')
def smoke_workdir(tmp_path_factory) -> pathlib.Path:
  """A run of `train.py --config configs/synthetic.py:smoke`, made once per test process."""
  workdir = tmp_path_factory.mktemp('smoke') / 'run'
  train(workdir)
  return workdir
