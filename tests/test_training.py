"""End-to-end training runs in subprocesses: smoke configs, devices, hosts, SIGKILL resume,
divergence."""

import json
import signal
import socket
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import ROOT, signal_at_checkpoint, subprocess_env, train, train_command

from flig_jax import checkpointing, model

# Every test here trains in child processes, several runs in a row for some.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

def _losses(workdir: Path) -> list[dict]:
  """The training rows of metrics.jsonl (stage 2's validation rows hold scores, not losses)."""
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return [row for row in map(json.loads, lines) if 'loss' in row]


def _final_params(workdir: Path) -> list[np.ndarray]:
  m = model.load(workdir)
  assert m.meta.finished
  return [np.asarray(x) for x in jax.tree.leaves(m.variables)]


def _assert_same_run(a: Path, b: Path, tol: float, split: tuple[int, int] | None = None) -> None:
  """The same loss rows and final parameters; `split` (stage, step): the run `b` was interrupted
  there, so its rows from that step to the next logged step of `a` average other windows."""
  la = {(r['stage'], r['step']): r['loss'] for r in _losses(a)}
  lb = {(r['stage'], r['step']): r['loss'] for r in _losses(b)}
  if split is not None:
    after = min(k for k in la if k > split)
    la = {k: v for k, v in la.items() if not split <= k <= after}
    lb = {k: v for k, v in lb.items() if not split <= k <= after}
  assert la.keys() == lb.keys()
  for key, value in la.items():
    np.testing.assert_allclose(value, lb[key], rtol=tol, atol=tol, err_msg=str(key))
  for x, y in zip(_final_params(a), _final_params(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


def test_smoke_run_finishes_with_a_restorable_checkpoint_and_figures(smoke_workdir):
  m = model.load(smoke_workdir)
  assert m.meta.finished and m.meta.stage == 2
  assert {r['stage'] for r in _losses(smoke_workdir)} == {1, 2}
  assert (smoke_workdir / 'stage1_reconstructions.png').stat().st_size > 0
  assert (smoke_workdir / 'stage2_decoding.png').stat().st_size > 0


@pytest.mark.parametrize('config', ['configs/fmri.py:smoke', 'configs/spikes.py:smoke'])
def test_real_data_smoke_configs_train(config, tmp_path, data_root):
  train(tmp_path / 'run', config=config, FLIG_DATA_DIR=str(data_root))
  m = model.load(tmp_path / 'run')
  assert m.meta.finished and m.meta.dataset in ('digit69', 'cowley_v4')


def test_stage2_from_another_runs_autoencoder_matches_that_run(smoke_workdir, tmp_path):
  # Stage 2 depends on the autoencoder, the config and the seed only: taking the autoencoder of a
  # finished run gives that run's stage 2, without training stage 1 again.
  proc = train(tmp_path / 'reuse', f'--config.stage1.init_from={smoke_workdir}')
  assert 'stage 1 skipped' in proc.stdout + proc.stderr
  assert {r['stage'] for r in _losses(tmp_path / 'reuse')} == {2}
  stage2 = [r for r in _losses(smoke_workdir) if r['stage'] == 2]
  assert [r['loss'] for r in _losses(tmp_path / 'reuse')] == [r['loss'] for r in stage2]
  for x, y in zip(_final_params(smoke_workdir), _final_params(tmp_path / 'reuse'), strict=True):
    np.testing.assert_array_equal(x, y)
  # An autoencoder trained on other images, or shaped otherwise, is refused in one line.
  proc = train(tmp_path / 'other', f'--config.stage1.init_from={smoke_workdir}',
               '--config.data.num_train=41', check=False)
  assert proc.returncode != 0 and 'Traceback' not in proc.stderr
  assert 'data.num_train: 256 there, 41 here' in proc.stderr
  proc = train(tmp_path / 'none', f'--config.stage1.init_from={tmp_path / "missing"}', check=False)
  assert proc.returncode != 0 and 'no trained autoencoder there' in proc.stderr


def test_same_result_on_one_and_eight_devices(tmp_path):
  # Mixup pairs rows across the whole global batch (so across devices) and response noise draws
  # per row: both on, so the sharded step has to reproduce them.
  stage2 = ('--config.stage2.mixup=0.4', '--config.stage2.response_noise=0.5')
  one = train(tmp_path / 'one', *stage2)
  eight = train(tmp_path / 'eight', *stage2, devices=8)
  assert '1 device(s) in 1 process(es)' in one.stdout
  assert '8 device(s) in 1 process(es)' in eight.stdout
  _assert_same_run(tmp_path / 'one', tmp_path / 'eight', tol=1e-5)


def test_deterministic_and_restart_of_finished_run_is_a_no_op(smoke_workdir, tmp_path):
  train(tmp_path / 'again')
  _assert_same_run(smoke_workdir, tmp_path / 'again', tol=0)
  before = _losses(tmp_path / 'again')
  train(tmp_path / 'again')
  assert _losses(tmp_path / 'again') == before


_KILL_RUN = ('--config.stage1.steps=150', '--config.stage2.steps=150',
             '--config.checkpoint.every_steps=10')


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory) -> Path:
  workdir = tmp_path_factory.mktemp('uninterrupted') / 'run'
  train(workdir, *_KILL_RUN)
  return workdir


@pytest.mark.parametrize('stage', [1, 2])
def test_sigkill_then_resume_matches_uninterrupted_run(stage, uninterrupted, tmp_path):
  overrides = _KILL_RUN
  workdir = tmp_path / 'killed'
  ckpts = workdir / 'checkpoints'
  # Stage-2 checkpoints are numbered after the last stage-1 step.
  target = 30 if stage == 1 else 150 + 30
  signal_at_checkpoint(workdir, target, signal.SIGKILL, *overrides, timeout=30)
  assert not (ckpts / '300').exists(), 'the run finished before the kill: the test proved nothing'
  assert (workdir / 'run.lock').exists()  # left by the killed run, taken over by the next
  proc = train(workdir, *overrides)
  assert 'note: taking over' in proc.stderr
  rows = [(r['stage'], r['step']) for r in _losses(workdir)]
  assert len(rows) == len(set(rows)), 'metrics.jsonl holds the replayed steps twice'
  _assert_same_run(uninterrupted, workdir, tol=1e-6)


def test_ctrl_c_saves_then_resume_matches_uninterrupted_run(uninterrupted, tmp_path):
  workdir = tmp_path / 'interrupted'
  returncode, err = signal_at_checkpoint(workdir, 30, signal.SIGINT, *_KILL_RUN, timeout=60)
  assert returncode == 130, err[-2000:]
  assert 'Traceback' not in err
  meta = checkpointing.latest_meta(checkpointing.manager(workdir))
  step = meta.step
  assert step >= 30 and not meta.finished
  assert _losses(workdir)[-1]['step'] == step   # the steps run since the last row are logged
  train(workdir, *_KILL_RUN)
  _assert_same_run(uninterrupted, workdir, tol=1e-6, split=(meta.stage, step))


def test_divergence_stops_with_message_and_keeps_last_checkpoint(tmp_path):
  workdir = tmp_path / 'run'
  proc = train(workdir, '--config.stage2.learning_rate=1e30', '--config.stage2.likelihood=1e30',
               check=False)
  assert proc.returncode == 1
  message = proc.stderr.strip().splitlines()[-1]
  assert message.startswith('error: stage 2: training diverged'), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  mgr = checkpointing.manager(workdir)
  meta = checkpointing.latest_meta(mgr)
  assert meta.stage in (1, 2) and not meta.finished
  # The last good checkpoint restores: the same command with a sane learning rate finishes from it.
  train(workdir)
  assert all(np.isfinite(x).all() for x in _final_params(workdir))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  port = _free_port()
  procs = []
  for pid in range(2):
    env = subprocess_env(devices=2, FLIG_DISTRIBUTED='1',
                         JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
                         JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(train_command(tmp_path / 'multi'), env=env, cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  try:
    outs = [p.communicate(timeout=240) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  train(tmp_path / 'single', devices=4)
  _assert_same_run(tmp_path / 'single', tmp_path / 'multi', tol=1e-5)
