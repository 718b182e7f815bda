"""What the command-line tools share: run a job, turn a user's mistake into one clear message and exit 1."""

import sys
from collections.abc import Callable
from pathlib import Path

import ml_collections


def _user_errors() -> tuple[type[BaseException], ...]:
  from flig_jax import data
  from flig_jax.training import TrainingDiverged
  return (data.DataError, TrainingDiverged, ValueError, FileNotFoundError)


def guarded(job: Callable[[], object]) -> int:
  """Runs `job`; a user-facing error prints one line 'error: ...' to stderr and gives exit status 1."""
  try:
    job()
  except KeyboardInterrupt:
    print('interrupted; the latest checkpoint is kept, run the same command to resume',
          file=sys.stderr)
    return 130
  except _user_errors() as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


def run_training(config: ml_collections.ConfigDict, workdir: str) -> int:
  from flig_jax.training import loop
  return guarded(lambda: loop.train_and_evaluate(config, Path(workdir)))


def run_evaluation(ckpt: str, split: str = 'test', out: str | None = None,
                   data_dir: str | None = None) -> int:
  """Runs `evaluation.run.evaluate` under `guarded`; returns the exit status."""
  from flig_jax.evaluation import run
  return guarded(lambda: run.evaluate(ckpt, split=split, out=out, data_dir=data_dir))
