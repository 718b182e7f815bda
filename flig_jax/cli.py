"""What the command-line tools share: run a job, turn a user's mistake into one clear message and
exit 1, and keep XLA's compiled programs on disk so each compiles once per machine, not per run."""

import errno
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import ml_collections

XLA_CACHE_ENV = 'FLIG_XLA_CACHE_DIR'
# Cache every program, the quick ones too: a run compiles hundreds of small ones (eager ops,
# set-up and scoring functions), which JAX's default threshold (1 s; 0.1 s here before) left
# to compile again in every run (docs/performance.md).
_MIN_COMPILE_SECONDS = 0.0


# Variables OpenBLAS (numpy's and scipy's BLAS) reads its thread count from, in its order.
_BLAS_THREAD_VARS = ('OPENBLAS_NUM_THREADS', 'GOTO_NUM_THREADS', 'OMP_NUM_THREADS')


def set_jax_environment() -> None:
  """The environment of train.py and evaluate.py, each variable set only where the user has not
  set it; they call this first, before numpy and JAX are imported (it has no effect after).

  JAX_THREEFRY_PARTITIONABLE=0: JAX's default "partitionable" threefry PRNG takes seconds to
  compile per random op on the XLA CPU backend of jax 0.10 (about 8 s for one
  `jax.random.uniform`, against 0.4 s without it). Random draws are sharding-invariant either way,
  but the two give different draws: a run's numbers depend on this setting.

  OPENBLAS_NUM_THREADS=1 (unless OPENBLAS_NUM_THREADS, GOTO_NUM_THREADS or OMP_NUM_THREADS is
  set): numpy's BLAS on one thread. Its threads wait by spinning, so wherever the cores are shared
  (with XLA's own threads, or other jobs) a product or eigendecomposition on two threads took 10
  to 100 times longer than on one: the adapter fit of a cross-validation fold (72 x 3092
  responses) 0.3-1.4 s against 0.04 s at a load of 5 on 2 cores (docs/performance.md).
  """
  os.environ.setdefault('JAX_THREEFRY_PARTITIONABLE', '0')
  if not any(name in os.environ for name in _BLAS_THREAD_VARS):
    os.environ['OPENBLAS_NUM_THREADS'] = '1'


def compilation_cache_dir() -> Path | None:
  """Where compiled programs are kept: the folder the user named, else the flig_jax cache.

  $JAX_COMPILATION_CACHE_DIR (JAX's own variable) wins; then $FLIG_XLA_CACHE_DIR (`off` or an
  empty value turns the cache off); then `<cache root>/xla`, the cache root being $FLIG_CACHE_DIR
  or ~/.cache/flig_jax.
  """
  for name in ('JAX_COMPILATION_CACHE_DIR', XLA_CACHE_ENV):
    if name in os.environ:
      value = os.environ[name].strip()
      return None if value.lower() in ('', 'off', '0', 'none') else Path(value).expanduser()
  from flig_jax.data import locate  # pylint: disable=g-import-not-at-top
  return locate.cache_root() / 'xla'


def enable_compilation_cache() -> Path | None:
  """Turns on JAX's persistent compilation cache in `compilation_cache_dir()`; returns the folder.

  A warm cache skips XLA's compiles (seconds per step function on a small CPU): a second run of
  the same config starts training at once. Every program is cached, however quick its compile,
  unless $JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS says otherwise. A folder that cannot be
  created leaves the cache off.
  """
  import jax  # pylint: disable=g-import-not-at-top
  folder = compilation_cache_dir()
  if folder is None:
    jax.config.update('jax_enable_compilation_cache', False)
    return None
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    print(f'warning: no compilation cache ({folder}: {e.strerror}); every run compiles afresh',
          file=sys.stderr)
    return None
  jax.config.update('jax_compilation_cache_dir', str(folder))
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', _MIN_COMPILE_SECONDS)
  return folder


def _unknown_field(error: BaseException, argv: Sequence[str]) -> str | None:
  """'--config.a.b=v: unknown field ...' for ml_collections' "did you mean" error, or None."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  text = str(error.args[0]) if error.args else str(error)
  match = re.match(r"""^'?(\w+)'?\n?(?:Did you mean "(\w+)")?""", text.strip('\'"'))
  if match is None:
    return None
  key, hint = match.groups()
  arg = next((a for a in argv if a.startswith('--config.') and
              key in re.split(r'[.=]', a.split('=')[0])), f'--config.{key}')
  where = arg.split('=')[0][2:].rsplit('.', 1)[0]
  return (f'{arg}: unknown field {key!r} in {where}' +
          (f'; did you mean {hint!r}?' if hint else ''))


def _last_line(text: str) -> str:
  """The last line of an error text that says something (absl wraps errors of a config file in a
  traceback text)."""
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  line = lines[-1] if lines else text
  return re.sub(r'^\w+(Error|Exception): ', '', line)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (pass as `app.run(main, flags_parser=cli.parse_flags)`), but a bad
  --config (unknown file, variant or field; a value of the wrong type) is one line on stderr,
  'error: ...', and exit status 1, instead of a traceback."""
  from absl import flags
  try:
    rest = flags.FLAGS(argv)
    if 'config' in flags.FLAGS and flags.FLAGS['config'].value is not None:
      try:  # ml_collections reports a config file it could not load on first use
        flags.FLAGS['config'].value.keys()
      except OSError as e:
        raise ValueError(f'--config: {_last_line(str(e))}') from e
    return rest
  except (AttributeError, KeyError) as e:
    message = _unknown_field(e, argv) or _last_line(str(e))
  except flags.Error as e:
    message = _last_line(str(e))
  except Exception as e:  # noqa: BLE001 -- a config file's own error, e.g. an unknown variant
    message = _last_line(str(e))
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def _user_errors() -> tuple[type[BaseException], ...]:
  from flig_jax import data, workdir_lock
  from flig_jax.training import TrainingDiverged
  return (data.DataError, TrainingDiverged, workdir_lock.WorkdirBusy, ValueError,
          FileNotFoundError)


_DISK_FULL = {errno.ENOSPC: 'No space left on device', errno.EDQUOT: 'Disk quota exceeded'}


def _disk_full(error: BaseException | None) -> bool:
  """Whether `error`, or an error it was raised from, is a full disk or quota (orbax and
  tensorstore wrap the OSError, sometimes only as text)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if getattr(error, 'errno', None) in _DISK_FULL or any(
        text in str(error) for text in _DISK_FULL.values()):
      return True
    error = error.__cause__ or error.__context__
  return False


def _newest_checkpoint(workdir: str | os.PathLike) -> str:
  from flig_jax import checkpointing
  from flig_jax.training import resume
  steps = resume.saved_steps(checkpointing.checkpoint_dir(workdir))
  return f'newest: step {steps[-1]}' if steps else 'none was saved yet'


def _checkpoint_kept(workdir: str | os.PathLike | None) -> str:
  """'; <workdir>/checkpoints/<step> is kept ...' naming the newest checkpoint, when `workdir`
  is a training run's."""
  from flig_jax import checkpointing
  from flig_jax.training import resume
  if workdir is None or not Path(checkpointing.checkpoint_dir(workdir)).is_dir():
    return ''
  directory = Path(checkpointing.checkpoint_dir(workdir))
  steps = resume.saved_steps(directory)
  if not steps:
    return '; no checkpoint was saved yet: run the same command to start again'
  return f'; {directory / str(steps[-1])} is kept: run the same command to resume from it'


def guarded(job: Callable[[], object], workdir: str | os.PathLike | None = None) -> int:
  """Runs `job`; a user-facing error prints one line 'error: ...' to stderr and gives exit status 1.

  Ctrl-C gives 130 and SIGTERM 143 (the shell's codes for them), each after the training loop saved
  a checkpoint (a Ctrl-C before the loop, caught by `interrupts` after `interrupts.install()`,
  saves none); the line names the newest checkpoint in `workdir`. `workdir` is also the folder a
  full disk is reported for. Orbax's own log lines are dropped: the errors it raises are reported
  here.
  """
  import logging

  from flig_jax import interrupts, orbax_logs
  from flig_jax.training import Preempted
  orbax_logs.quiet(logging.CRITICAL + 1)
  orbax_logs.quiet_failed_writes()
  try:
    job()
    interrupts.check()  # a Ctrl-C that JAX swallowed stops the run all the same
  except KeyboardInterrupt:
    print(f'interrupted{_checkpoint_kept(workdir)}', file=sys.stderr)
    return 130
  except Preempted as e:
    print(f'{e}; run the same command to resume', file=sys.stderr)
    return 128 + 15
  except Exception as e:
    if interrupts.requested():  # raised by the interrupt, e.g. an import it cut short
      print(f'interrupted{_checkpoint_kept(workdir)}', file=sys.stderr)
      return 130
    if workdir is not None and _disk_full(e):
      print(f'error: no space left on the device holding {os.path.abspath(workdir)}; the '
            f'checkpoints saved before are intact ({_newest_checkpoint(workdir)}): free some '
            'space and run the same command to resume', file=sys.stderr)
      return 1
    if not isinstance(e, _user_errors()):
      raise
    for line in getattr(e, 'faults', None) or [str(e)]:
      print(f'error: {line}', file=sys.stderr)
    return 1
  return 0


def exit_with(status: int) -> NoReturn:
  """Ends a command-line run with `status`, as `sys.exit` does, except after a reported error
  (status 1): then the process ends at once, skipping the interpreter's teardown, where the
  background work of a failed checkpoint write (orbax's threads, asyncio futures) would report the
  same fault again, with tracebacks, after the one-line error. The run's own files are closed by
  then, and its lock released."""
  sys.stdout.flush()
  sys.stderr.flush()
  if status == 1:
    os._exit(1)
  sys.exit(status)


def _summary(config: ml_collections.ConfigDict) -> str:
  s1, s2 = config.stage1, config.stage2
  return (f'data {config.data.name}, feature_dim {config.model.feature_dim}, stage 1 {s1.steps} '
          f'steps of {s1.batch_size}, stage 2 {s2.steps} steps of {s2.batch_size}, checkpoint '
          f'every {config.checkpoint.every_steps} steps, seed {config.seed}')


def _report(workdir: Path) -> None:
  """Says where the run's outputs are and what to run next."""
  import importlib.util

  from flig_jax.training import metrics_file, tensorboard
  figures = ', '.join(str(p) for p in sorted(workdir.glob('stage*.png')))
  install = ('' if importlib.util.find_spec('tensorboard') else
             ' (TensorBoard is not installed: pip install -e ".[tensorboard]")')
  print(f'done: training finished ({_newest_checkpoint(workdir)})\n'
        f'  checkpoints  {workdir / "checkpoints"}\n'
        f'  figures      {figures or "(none)"}\n'
        f'  metrics      {workdir / metrics_file.NAME}; watch with: tensorboard --logdir '
        f'{workdir / tensorboard.SUBDIR}{install}\n'
        f'next: python evaluate.py --ckpt {workdir}', flush=True)


def _check_workdir(workdir: Path) -> None:
  """Creates `workdir` if it is missing; raises ValueError (one line) if it cannot be a folder."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except FileExistsError:
    raise ValueError(f'--workdir {workdir}: a file is there, not a folder; name a new folder or '
                     'the folder of a run to resume') from None
  except OSError as e:
    raise ValueError(f'--workdir {workdir}: cannot create the folder ({e.strerror})') from None


def run_training(config: ml_collections.ConfigDict, workdir: str, source: str = '',
                 allow_config_change: bool = False, started: float | None = None) -> int:
  """Checks `config`, then runs `training.loop.train` under `guarded`, compiled
  programs cached on disk, and ends with a line of where the time went; returns the exit status.

  Args:
    config: the resolved config.
    workdir: the run's working directory.
    source: where the config came from (file, variant and overrides), printed at the start.
    allow_config_change: resume even if fields that shape the model, data or optimiser changed.
    started: `time.perf_counter()` at the start of the process (train.py's first line): the time
      breakdown counts from it (default: from this call).
  """
  workdir = Path(workdir).absolute()

  def job():
    from flig_jax.training import timing
    with timing.Breakdown(started) as timer:
      with timer.section('startup'):
        from flig_jax import config_checks
        config_checks.validate(config)  # before any data or JAX work
        _check_workdir(workdir)
        enable_compilation_cache()
        import jax

        from flig_jax.training import loop

      def announce():  # once loop.train has started JAX's distributed runtime
        if jax.process_index() == 0:
          print(f'config: {source or "(given)"}\n  {_summary(config)}\nworkdir: {workdir}',
                flush=True)

      loop.train(config, workdir, allow_config_change=allow_config_change, on_start=announce)
    if jax.process_index() == 0:
      _report(workdir)
      print(timer.summary(), flush=True)

  return guarded(job, workdir)


def run_evaluation(ckpt: str, split: str = 'test', out: str | None = None,
                   data_dir: str | None = None, allow_unfinished: bool = False) -> int:
  """Runs `evaluation.run.evaluate` under `guarded`, compiled programs cached on disk; returns the
  exit status."""
  enable_compilation_cache()
  from flig_jax.evaluation import run
  return guarded(lambda: run.evaluate(ckpt, split=split, out=out, data_dir=data_dir,
                                      allow_unfinished=allow_unfinished),
                 out or os.path.join(ckpt, f'eval_{split}'))


def run_evaluations(ckpts: list[str], split: str = 'test', data_dir: str | None = None,
                    allow_unfinished: bool = False) -> int:
  """Evaluates each checkpoint into `<ckpt>/eval_<split>`, then prints mean ± sd over them."""
  from flig_jax.evaluation import aggregate  # pylint: disable=g-import-not-at-top
  outs = [os.path.join(ckpt, f'eval_{split}') for ckpt in ckpts]
  for ckpt, out in zip(ckpts, outs):
    status = run_evaluation(ckpt, split=split, out=out, data_dir=data_dir,
                            allow_unfinished=allow_unfinished)
    if status:
      return status
  return guarded(lambda: print('\n' + aggregate.format_table(
      aggregate.aggregate([aggregate.read_metrics(out) for out in outs])), flush=True))
