"""End-to-end training runs in subprocesses: smoke configs, devices, hosts, SIGKILL resume, divergence."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env(devices: int = 1, **extra: str) -> dict[str, str]:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = str(ROOT)
  env.update(extra)
  return env


def _train_cmd(workdir: Path, config: str = 'configs/synthetic.py:smoke', *overrides: str):
  return [sys.executable, str(ROOT / 'train.py'), f'--config={ROOT / config}',
          f'--workdir={workdir}', *overrides]


def _train(workdir: Path, *overrides: str, config: str = 'configs/synthetic.py:smoke',
           devices: int = 1, timeout: float = 180, check: bool = True, **env: str):
  proc = subprocess.run(_train_cmd(workdir, config, *overrides), env=_env(devices, **env),
                        cwd=ROOT, capture_output=True, text=True, timeout=timeout)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _losses(workdir: Path) -> list[dict]:
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line) for line in lines]


def _final_params(workdir: Path) -> list[np.ndarray]:
  import jax
  from flig_jax import model
  m = model.load(workdir)
  assert m.meta['finished']
  return [np.asarray(x) for x in jax.tree.leaves(m.variables)]


def _assert_same_run(a: Path, b: Path, tol: float) -> None:
  la = {(r['stage'], r['step']): r['loss'] for r in _losses(a)}
  lb = {(r['stage'], r['step']): r['loss'] for r in _losses(b)}
  assert la.keys() == lb.keys()
  for key in la:
    np.testing.assert_allclose(la[key], lb[key], rtol=tol, atol=tol, err_msg=str(key))
  for x, y in zip(_final_params(a), _final_params(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


@pytest.mark.parametrize('config', ['configs/synthetic.py:smoke', 'configs/synthetic.py:smoke,spikes',
                                    'configs/fmri.py:smoke', 'configs/spikes.py:smoke'])
def test_smoke_config_trains_and_restores(config, tmp_path, data_root):
  if 'synthetic' not in config and data_root is None:
    pytest.skip('real data absent')
  workdir = tmp_path / 'run'
  _train(workdir, config=config, FLIG_DATA_DIR=str(data_root or ''))
  from flig_jax import model
  m = model.load(workdir)
  assert m.meta['finished'] and m.meta['stage'] == 2
  assert {r['stage'] for r in _losses(workdir)} == {1, 2}
  assert (workdir / 'stage1_reconstructions.png').stat().st_size > 0
  assert (workdir / 'stage2_decoding.png').stat().st_size > 0


def test_same_result_on_one_and_eight_devices(tmp_path):
  _train(tmp_path / 'one', devices=1)
  _train(tmp_path / 'eight', devices=8)
  _assert_same_run(tmp_path / 'one', tmp_path / 'eight', tol=1e-5)


def test_deterministic_and_restart_of_finished_run_is_a_no_op(tmp_path):
  _train(tmp_path / 'a')
  _train(tmp_path / 'b')
  _assert_same_run(tmp_path / 'a', tmp_path / 'b', tol=0)
  before = _losses(tmp_path / 'a')
  _train(tmp_path / 'a')
  assert _losses(tmp_path / 'a') == before


@pytest.mark.parametrize('stage', [1, 2])
def test_sigkill_then_resume_matches_uninterrupted_run(stage, tmp_path):
  overrides = ['--config.stage1.steps=300', '--config.stage2.steps=300',
               '--config.checkpoint.every_steps=25']
  _train(tmp_path / 'ref', *overrides)

  workdir = tmp_path / 'killed'
  ckpts = workdir / 'checkpoints'
  # Stage-2 checkpoints are numbered after the last stage-1 step.
  target = 50 if stage == 1 else 300 + 50
  proc = subprocess.Popen(_train_cmd(workdir, 'configs/synthetic.py:smoke', *overrides),
                          env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while not (ckpts / str(target)).exists():
      assert proc.poll() is None, 'run ended before it could be killed'
      assert time.time() < deadline
      time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    proc.kill()
  assert not (ckpts / '600').exists(), 'the run finished before the kill: the test proved nothing'
  _train(workdir, *overrides)
  _assert_same_run(tmp_path / 'ref', workdir, tol=1e-6)


def test_divergence_stops_with_message_and_keeps_last_checkpoint(tmp_path):
  workdir = tmp_path / 'run'
  proc = _train(workdir, '--config.stage2.learning_rate=1e30', '--config.stage2.likelihood=1e30',
                '--config.stage2.steps=40', '--config.checkpoint.every_steps=3', check=False)
  assert proc.returncode == 1
  message = proc.stderr.strip().splitlines()[-1]
  assert message.startswith('error: stage 2: the loss became non-finite'), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  from flig_jax import checkpointing
  mgr = checkpointing.manager(workdir)
  step, meta = checkpointing.latest_meta(mgr)
  assert meta['stage'] in (1, 2) and not meta['finished']
  # The last good checkpoint restores: the same command with a sane learning rate finishes from it.
  _train(workdir, '--config.stage2.steps=40', '--config.checkpoint.every_steps=3')
  assert all(np.isfinite(x).all() for x in _final_params(workdir))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  port = _free_port()
  procs = []
  for pid in range(2):
    env = _env(devices=2, FLIG_DISTRIBUTED='1', JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
               JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(_train_cmd(tmp_path / 'multi'), env=env, cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  try:
    outs = [p.communicate(timeout=240) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  _train(tmp_path / 'single', devices=4)
  _assert_same_run(tmp_path / 'single', tmp_path / 'multi', tol=1e-5)
