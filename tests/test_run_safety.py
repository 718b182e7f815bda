"""Runs a cluster user can trust: one run per workdir, resume checks of the saved config,
damaged checkpoints, SIGTERM, a full disk, and a metrics log that stays valid JSON lines. Each
test checks the message the user sees."""

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, signal_at_checkpoint, subprocess_env, train, train_command

from flig_jax import checkpoint_recovery, checkpointing, workdir_lock
from flig_jax.checkpointing import Meta
from flig_jax.evaluation import report, run
from flig_jax.training import metrics_file, resume

_LONG = ('--config.stage1.steps=150', '--config.stage2.steps=150',
         '--config.checkpoint.every_steps=10')


def _rows(workdir: Path) -> list[tuple[int, int]]:
  """(stage, step) of the training rows of metrics.jsonl (not stage 2's validation rows)."""
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return [(r['stage'], r['step']) for r in map(json.loads, lines) if 'loss' in r]


def _errors(proc: subprocess.CompletedProcess) -> list[str]:
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  return [line for line in proc.stderr.splitlines() if line.startswith('error:')]


@pytest.fixture
def copy_of_run(smoke_workdir, tmp_path) -> Path:
  """A copy of the session's finished smoke run (checkpoints 6, 9 and 12) to damage or resume."""
  workdir = tmp_path / 'run'
  shutil.copytree(smoke_workdir, workdir)
  return workdir


def _evaluate(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(ROOT / 'evaluate.py'), *args], env=subprocess_env(),
                        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


# --- one run per workdir ---

@pytest.mark.slow
def test_second_run_into_a_busy_workdir_is_refused(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  # What a live run writes (this test's own process is alive on this host).
  (workdir / 'run.lock').write_text(json.dumps(
      {'pid': os.getpid(), 'host': socket.gethostname(), 'started': '2026-01-01T00:00:00'}))
  proc = train(workdir, check=False)
  assert proc.returncode == 1
  assert _errors(proc) == [
      (f'error: {workdir} is in use by another training run (pid {os.getpid()} on '
      f'{socket.gethostname()}, started 2026-01-01T00:00:00); wait for it to end or use another '
      f'--workdir. If that run is gone, delete {workdir / "run.lock"}')]
  assert not (workdir / 'checkpoints').exists() and not (workdir / 'metrics.jsonl').exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  lock = workdir_lock.WorkdirLock(tmp_path, note=(notes := []).append)
  (tmp_path / 'run.lock').write_text(json.dumps(
      {'pid': dead.pid, 'host': socket.gethostname(), 'started': 'then'}))
  with lock:
    assert json.loads((tmp_path / 'run.lock').read_text())['pid'] == os.getpid()
  assert not (tmp_path / 'run.lock').exists()
  assert notes == [(f'note: taking over {tmp_path / "run.lock"} left by a run that is gone '
                   f'(pid {dead.pid} on {socket.gethostname()}, started then)')]


# --- resume checks the saved config ---

@pytest.mark.parametrize('override, diff', [
    ('--config.stage2.learning_rate=0.5', 'stage2.learning_rate: 0.001 -> 0.5'),
    ('--config.data.synthetic_mode=spikes', "data.synthetic_mode: 'fmri' -> 'spikes'"),
])
def test_resume_with_a_changed_config_is_refused_with_a_diff(copy_of_run, override, diff):
  proc = train(copy_of_run, override, check=False)
  assert proc.returncode == 1
  errors = _errors(proc)
  assert errors == [(f'error: {copy_of_run} holds a run whose checkpoint (step 12, stage 2) was '
                    'made with another config; these fields shape the model, data or optimiser:')]
  assert f'  {diff}' in proc.stderr.splitlines()
  assert '--allow_config_change' in proc.stderr and 'may change on resume: data.dir' in proc.stderr


def test_fields_that_may_change_on_resume_are_listed_and_allowed():
  from configs import default, synthetic
  assert resume.may_change(default.get_config()).startswith(
      'may change on resume: data.dir, stage2.steps, stage2.eval_every_steps, checkpoint.*, '
      'log_every_steps, '
      'num_figure_images, distributed; and while the run is in stage 1: model.flow_dropout, '
      'model.decoder_input, '
      'model.disc_hidden, stage1.steps, stage2.*')
  config = synthetic.get_config('smoke')
  saved = config.to_dict()
  config.stage2.steps, config.checkpoint.keep, config.stage2.learning_rate = 20, 5, 0.5
  assert resume.refused_changes(saved, config, Meta(stage=1, stage_step=3)) == []
  assert resume.refused_changes(saved, config, Meta(stage=2, stage_step=3)) == [
      'stage2.learning_rate: 0.001 -> 0.5']
  config.model.feature_dim, config.stage2.steps = 16, 4
  assert resume.refused_changes(saved, config, Meta(stage=2, stage_step=6)) == [
      'model.feature_dim: 8 -> 16', 'stage2.learning_rate: 0.001 -> 0.5',
      'stage2.steps: 4 is below the step the run reached in stage 2 (6)']


def test_more_steps_on_a_finished_run_continue_it(copy_of_run):
  proc = train(copy_of_run, '--config.stage2.steps=9')
  assert 'next: python evaluate.py --ckpt ' + str(copy_of_run) in proc.stdout
  assert 'done: training finished (newest: step 15)' in proc.stdout
  assert _rows(copy_of_run)[-1] == (2, 9) and len(set(_rows(copy_of_run))) == len(
      _rows(copy_of_run))


# --- damaged checkpoints ---

def _damage_arrays(step_dir: Path, item: str) -> None:
  for path in (step_dir / item).rglob('*'):
    if path.is_file() and path.parent.name == 'd':
      path.write_bytes(os.urandom(path.stat().st_size))


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')  # orbax threads
def test_damaged_newest_checkpoint_is_skipped_by_evaluate_and_by_resume(copy_of_run):
  ckpts = copy_of_run / 'checkpoints'
  _damage_arrays(ckpts / '12', 'model')
  assert checkpoint_recovery.problem(ckpts / '12').startswith('model: ')
  # evaluate falls back to step 9, which is unfinished: refused unless asked for.
  proc = _evaluate(f'--ckpt={copy_of_run}', '--split=val')
  assert proc.returncode == 1
  assert 'note: checkpoint step 12 does not restore, skipped: model: ' in proc.stderr
  assert _errors(proc) == [
      (f'error: the run at {copy_of_run} has not finished: its newest '
      'usable checkpoint is step 9 (stage 2, step 3 of the stage); finish it (train.py with the '
      'same --workdir), or pass --allow_unfinished to score it as it is')]
  # Training resumes from step 9 and sets step 12 aside.
  proc = train(copy_of_run)
  assert ('note: checkpoint step 12 does not restore, skipped: model: ' in proc.stderr
          and f'moved to {copy_of_run / "damaged_checkpoints" / "12"}' in proc.stderr)
  assert 'resuming stage 2 at step 3' in proc.stdout + proc.stderr
  assert checkpoint_recovery.problem(ckpts / '12') is None
  assert _rows(copy_of_run) == [(1, 2), (1, 4), (1, 6), (2, 2), (2, 4), (2, 6)]
  # TensorBoard is told to drop what the resumed run replays (events after step 9).
  starts = [e.step for e in _events(copy_of_run / 'tensorboard') if e.HasField('session_log')]
  assert starts == [0, 10]


def _shown(logdir: Path) -> dict[str, list[int]]:
  """tag -> the steps TensorBoard shows: a run's start (SessionLog START at step s) hides the
  events that earlier files hold at step s or later."""
  shown = []
  for event in _events(logdir):
    if event.HasField('session_log'):
      shown = [(tag, step) for tag, step in shown if step < event.step]
    shown += [(value.tag, event.step) for value in event.summary.value]
  steps = {}
  for tag, step in shown:
    steps.setdefault(tag, []).append(step)
  return steps


def test_tensorboard_keeps_the_point_at_the_checkpoint_step_after_a_resume(copy_of_run):
  """Resumed from checkpoint 6 (stage 1's last step, a logged one), TensorBoard shows every row
  that metrics.jsonl keeps, the row at step 6 included."""
  for step in ('9', '12'):
    shutil.rmtree(copy_of_run / 'checkpoints' / step)
  train(copy_of_run)
  assert [step for stage, step in _rows(copy_of_run) if stage == 1] == [2, 4, 6]
  shown = _shown(copy_of_run / 'tensorboard')
  assert shown['stage1/loss'] == [2, 4, 6]
  assert shown['stage2/loss'] == [8, 10, 12]


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')  # orbax threads
def test_evaluate_reads_only_the_items_it_restores(copy_of_run, capsys):
  ckpts = copy_of_run / 'checkpoints'
  _damage_arrays(ckpts / '12', 'state')
  assert checkpoint_recovery.problem(ckpts / '12').startswith('state: ')
  # The model, its config and meta are intact: evaluation (which never reads `state`) uses step 12.
  assert run._load(copy_of_run, allow_unfinished=False).meta.step == 12
  assert 'does not restore' not in capsys.readouterr().err
  # A resumed run restores `state`: it falls back to step 9.
  config = checkpointing.read_config(ckpts, 9)
  assert resume.start_point(config, copy_of_run, writer=False, note=lambda line: None).step == 9


def test_empty_meta_names_the_file_and_step(copy_of_run):
  meta_file = next(p for p in (copy_of_run / 'checkpoints' / '12' / 'meta').iterdir()
                   if p.name != 'commit_success.txt')
  meta_file.write_text('')
  skipped = []
  step = checkpoint_recovery.newest_good(copy_of_run / 'checkpoints', [6, 9, 12],
                                         lambda s, why: skipped.append((s, why)))
  assert step == 9
  assert skipped == [(12, (f'{meta_file} is not valid JSON (Expecting value: line 1 column 1 '
                          '(char 0))'))]


def test_unfinished_run_is_loaded_when_asked_and_the_step_is_named(copy_of_run):
  shutil.rmtree(copy_of_run / 'checkpoints' / '12')
  with pytest.raises(ValueError, match='has not finished: its newest usable checkpoint is step 9'):
    run._load(copy_of_run, allow_unfinished=False)
  assert run._load(copy_of_run, allow_unfinished=True).meta.step == 9
  assert report.format_table({'dataset': 'synthetic', 'split': 'test', 'n': 64,
                              'checkpoint_step': 9}) == (
                                  'synthetic / test (n = 64); checkpoint step 9')


# --- the metrics log ---

def test_metrics_log_is_trimmed_to_the_checkpoint_and_partial_lines_dropped(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  rows = [{'stage': 1, 'step': 2}, {'stage': 1, 'step': 4}, {'stage': 2, 'step': 2},
          {'stage': 2, 'step': 4}]
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows) + '{"stage": 2, "st')
  assert metrics_file.trim(path, 2, 2) == '1 row past the checkpoint and 1 unreadable line'
  assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:3]
  assert metrics_file.trim(path, 2, 2) == ''
  assert metrics_file.trim(path, 0, 0) == '3 rows past the checkpoint'
  assert path.read_text() == ''


def _events(logdir: Path) -> list:
  """The Event protos of every event file in `logdir` (TFRecord framing: length, crc, data, crc)."""
  from tensorboardX.proto.event_pb2 import Event
  events = []
  for path in sorted(logdir.glob('events.out.tfevents.*')):
    raw, i = path.read_bytes(), 0
    while i < len(raw):
      (n,) = struct.unpack('<Q', raw[i:i + 8])
      events.append(Event.FromString(raw[i + 12:i + 12 + n]))
      i += 12 + n + 4
  return events


def test_losses_are_tensorboard_scalars_on_one_step_axis(smoke_workdir):
  steps = {}
  for event in _events(smoke_workdir / 'tensorboard'):
    for value in event.summary.value:
      steps.setdefault(value.tag, []).append(event.step)
  assert steps['stage1/loss'] == [2, 4, 6] and steps['stage2/loss'] == [8, 10, 12]


# --- SIGTERM (SIGKILL: tests/test_training.py) ---

@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_and_exits_143_without_temp_folders(tmp_path):
  workdir = tmp_path / 'run'
  returncode, err = signal_at_checkpoint(workdir, 20, signal.SIGTERM, *_LONG)
  assert returncode == 143, err[-3000:]
  assert 'Traceback' not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith('terminated (SIGTERM): stage 1 step '), last
  assert last.endswith('; run the same command to resume')
  step, path = last.removeprefix('terminated (SIGTERM): stage 1 step ').split(';')[0].split(
      ' saved as ')
  saved = int(step)
  assert saved >= 20 and Path(path) == workdir / 'checkpoints' / str(saved) and Path(path).is_dir()
  assert not list(workdir.rglob('*orbax-checkpoint-tmp*'))
  assert not (workdir / 'run.lock').exists()
  assert checkpoint_recovery.problem(workdir / 'checkpoints' / str(saved)) is None


# --- a full disk ---

_DISK_FULL_MESSAGE = ('error: no space left on the device holding {workdir}; the checkpoints '
                      'saved before are intact (newest: step {step}): free some space and run the '
                      'same command to resume')


def _assert_disk_full_reported(proc: subprocess.CompletedProcess, workdir: Path) -> None:
  assert proc.returncode == 1
  errors = _errors(proc)
  steps = resume.saved_steps(workdir / 'checkpoints')
  assert errors == [_DISK_FULL_MESSAGE.format(workdir=workdir, step=steps[-1])], proc.stderr[-3000:]
  assert checkpoint_recovery.problem(workdir / 'checkpoints' / str(steps[-1])) is None


# Each failed save also leaves behind an object that complains when the interpreter tears it down,
# as orbax's unfinished background writes do: none of that may follow the one-line error.
_FAIL_SAVES_FROM_STEP_6 = '''
import errno, runpy, sys
from flig_jax import checkpointing
real_save = checkpointing.save
class Unfinished:
  def __del__(self):
    raise RuntimeError('a write left unfinished at exit')
left_behind = []
def save(mgr, step, **kw):
  if step >= 6:
    left_behind.append(Unfinished())
    raise OSError(errno.ENOSPC, 'No space left on device', str(mgr.directory))
  return real_save(mgr, step, **kw)
checkpointing.save = save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


@pytest.mark.slow
def test_disk_full_simulated_is_one_line_and_earlier_checkpoints_restore(tmp_path):
  workdir = tmp_path / 'run'
  proc = subprocess.run([sys.executable, '-c', _FAIL_SAVES_FROM_STEP_6,
                         *train_command(workdir)[1:]], env=subprocess_env(), cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=False)
  _assert_disk_full_reported(proc, workdir)
  assert resume.saved_steps(workdir / 'checkpoints') == [3]
  assert _rows(workdir)  # valid JSON lines


@pytest.fixture
def small_tmpfs(tmp_path):
  """A 0.9 MB tmpfs: room for the smoke run's first checkpoint (0.6 MB), not for the next."""
  mount = tmp_path / 'tmpfs'
  mount.mkdir()
  if shutil.which('mount') is None or subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', 'size=900k', 'tmpfs', str(mount)],
      capture_output=True, check=False).returncode != 0:
    pytest.skip('cannot mount a tmpfs here (the simulated disk-full test covers the message)')
  try:
    yield mount
  finally:
    subprocess.run(['umount', str(mount)], check=False)


@pytest.mark.slow
def test_disk_full_on_a_small_tmpfs(small_tmpfs):
  workdir = small_tmpfs / 'run'
  proc = train(workdir, check=False)
  _assert_disk_full_reported(proc, workdir)
