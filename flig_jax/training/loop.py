"""`train`: both training stages, checkpointed and resumable, from a config and a workdir.

Stage 1 fits the autoencoder on the training stimuli. Then the adapter is fitted on the training
responses and the encoder's features are standardised. Stage 2 fits the flow (and the
discriminator) with the encoder frozen. Checkpoints live in `<workdir>/checkpoints`; a restart with
the same workdir continues from the latest one (stage, step, optimiser state, RNG and data position,
which is the step itself).

The path through a run: `resume.start_point` (the newest checkpoint that restores, checked against
the config) -> `make_context` -> `restore_or_init` (that checkpoint's state, or a fresh stage-1
state) -> `stage1` -> `run_stage` -> `stage2` -> `run_stage`.
"""

import concurrent.futures
import contextlib
import dataclasses
import functools
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flig_jax import checkpointing, data, interrupts, pixel_path, workdir_lock
from flig_jax import model as model_lib
from flig_jax.nn import compiled, precision
from flig_jax.nn import discriminator as disc_lib
from flig_jax.nn.adapter import Adapter
from flig_jax.training import (
  Preempted,
  TrainingDiverged,
  closed_form,
  cross_validation,
  parallel,
  prefetch,
  progress,
  resume,
  steps,
  timing,
  validation,
)

State = steps.Stage1State | steps.Stage2State


@dataclasses.dataclass(frozen=True)
class Context:
  """What both stages share.

  Attributes:
    config: the run's config.
    workdir: where checkpoints, logs and figures go.
    dataset: the loaded dataset.
    module: the FLIG Linen module (a pure function of its variables; `model.Model` is the
      numpy-friendly wrapper of a trained one).
    mesh: the device mesh.
    mgr: the orbax checkpoint manager.
    log: the metrics log and progress bar.
  """
  config: ml_collections.ConfigDict
  workdir: Path
  dataset: data.Dataset
  module: model_lib.FLIG
  mesh: Any
  mgr: Any
  log: progress.RunLog


@dataclasses.dataclass(frozen=True)
class Stage:
  """A stage ready to run: `state, metrics = step_fn(state, batch)` for each step."""
  number: int
  state: State
  step_fn: Callable[[State, dict[str, jax.Array]], tuple[State, dict[str, jax.Array]]]
  stream: data.BatchStream
  total_steps: int
  save: Callable[[State], None]
  # Stage 2's model selection: `state, scores = validate(state)` scores the current flow on the
  # validation split and keeps it when it beats the kept one; run at step 0 and every
  # `validate_every` steps (None: no selection, the last step is kept).
  validate: Callable[[State], tuple[State, dict[str, jax.Array]]] | None = None
  validate_every: int = 0


# Validation closer to train than this fraction of test's distance earns a note.
VAL_CLOSER_THAN_TEST = 0.5


def make_context(config: ml_collections.ConfigDict, workdir: str | Path,
                 resume_step: int = 0) -> Context:
  """Loads the data and builds the module, mesh, checkpoint manager and log of a run (resuming
  from checkpoint `resume_step`, or 0)."""
  parallel.maybe_initialize_distributed(config.distributed)
  workdir = Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = parallel.make_mesh()
  with timing.section('data'):
    dataset = data.from_config(config)
  module = model_lib.FLIG.from_config(config.model, dataset.image_shape)
  mgr = checkpointing.manager(workdir, keep=config.checkpoint.keep)
  log = progress.RunLog(workdir, stage1_steps=config.stage1.steps, resume_step=resume_step)
  folds = int(config.data.get('folds', 0))
  log.info(f'{dataset.name}: train {len(dataset.train)}'
           + (f' ({folds}-fold cross-validation)' if folds >= 2 else '')
           + f', val {len(dataset.val)}, '
           f'test {len(dataset.test)}, {dataset.num_units} units, images {dataset.image_shape}; '
           f'{mesh.size} device(s) in {jax.process_count()} process(es)')
  near, far = (dataset.meta.get(f'{split}_to_train_rms', float('nan')) for split in ('val', 'test'))
  if near < VAL_CLOSER_THAN_TEST * far:  # False when either is NaN
    log.info(f'note: validation images sit much closer to training images than test images do '
             f'(median RMS distance to the nearest one {near:.3f} against {far:.3f}): they look '
             f'like near-copies, and model selection on validation may reward memorising '
             f'(docs/data.md, Splits)')
  return Context(config, workdir, dataset, module, mesh, mgr, log)


def train(config: ml_collections.ConfigDict, workdir: str | Path, *,
          allow_config_change: bool = False) -> Path:
  """Trains both stages (resuming from `workdir` if it holds checkpoints) and returns the workdir.

  Writes `stage1_reconstructions.png` and `stage2_decoding.png` (validation pairs) beside the
  checkpoints; scoring is `evaluation.run.evaluate`'s job. One run at a time holds the workdir
  (`workdir_lock`). A resumed run starts from the newest checkpoint that restores and must keep the
  saved config's model, data and optimiser fields unless `allow_config_change`
  (`resume.start_point`). SIGTERM, like Ctrl-C, saves at the next step boundary, then raises
  `Preempted`.

  A finished run ends its `metrics.jsonl` with a row of where its wall time went ('time_s':
  seconds per `timing.PARTS` part and 'total'), from the active `timing.Breakdown` (the one
  train.py starts on its first line) or, without one, from this call on.
  """
  with contextlib.ExitStack() as stack:
    if timing.active() is None:
      stack.enter_context(timing.Breakdown())
    parallel.maybe_initialize_distributed(config.distributed)
    writer = jax.process_index() == 0
    stack.enter_context(_TerminateRaises())
    stack.enter_context(workdir_lock.WorkdirLock(Path(workdir), active=writer,
                                                 note=progress.note))
    with timing.section('setup'):
      latest = resume.start_point(config, workdir, allow_config_change=allow_config_change,
                                  writer=writer, note=progress.note)
    return _train(config, workdir, latest)


def _train(config: ml_collections.ConfigDict, workdir: str | Path,
           latest: checkpointing.Meta | None) -> Path:
  with timing.section('setup'):
    ctx = make_context(config, workdir, resume_step=latest.step if latest else 0)
  figures = _FigureWriter()
  try:
    with timing.section('setup'):
      state = restore_or_init(ctx, latest)
    if isinstance(state, steps.Stage1State):
      with timing.section('stage1'):
        state = run_stage(ctx, stage1(ctx, state))
      with timing.section('figures'):
        _stage1_figure(ctx, state.params, int(state.step), figures)
    with timing.section('fits'):
      stage = stage2(ctx, state, latest)
    with timing.section('stage2'):
      state = run_stage(ctx, stage)
    if int(state.best_step.min()) >= 0 and bool(jnp.all(jnp.isfinite(state.best_score))):
      kept = ', '.join(f'{name} {float(score):.4f} at step {int(step)}' for (name, _), score, step
                       in zip(validation.GROUPS[ctx.module.flow_type], state.best_score,
                              state.best_step))
      ctx.log.info(f'stage 2 keeps the flow parts best on the validation split: {kept}')
      note = validation.kept_start_note(ctx.module.flow_type, state.best_step,
                                        config.stage2.select_margin)
      if note:
        ctx.log.info(note)
    with timing.section('figures'):
      _stage2_figure(ctx, state.model_variables(), state.selected_steps(), figures)
      figures.wait()
    with timing.section('checkpoints'):
      ctx.mgr.wait_until_finished()
    timer = timing.active()
    if timer is not None:
      timer.stop()
      ctx.log.record_times(2, int(state.step), timer.seconds())
  finally:
    figures.close()
    # The progress bar ends its line first: a save that fails in the background raises here, and
    # its one-line error must not land on the bar's line.
    ctx.log.close()
    ctx.mgr.wait_until_finished()
  return ctx.workdir


def restore_or_init(ctx: Context, latest: checkpointing.Meta | None = None) -> State:
  """The state of checkpoint `latest` (its meta; default: the manager's latest) of either stage,
  or a fresh stage-1 state when there is none."""
  latest = latest or checkpointing.latest_meta(ctx.mgr)
  if latest is None:
    return parallel.jit_init(functools.partial(_init_stage1, ctx), ctx.mesh)()
  meta = latest
  if meta.stage == 1:
    target = jax.eval_shape(functools.partial(_init_stage1, ctx))
  else:
    frozen = model_lib.abstract_frozen(ctx.module, meta)
    target = jax.eval_shape(functools.partial(_init_stage2, ctx), frozen,
                            _first_batch_shape(ctx))
  sharding = parallel.replicated(ctx.mesh)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        target)
  state = checkpointing.restore(ctx.mgr, meta.step, 'state', target)
  ctx.log.info(f'resuming stage {meta.stage} at step {int(state.step)}')
  return state


def _base_meta(config, dataset, stage: int, stage_step: int) -> checkpointing.Meta:
  """What a checkpoint says about itself; `step` is its number in the manager (stage-2
  checkpoints are numbered after stage 1's)."""
  step = stage_step + (config.stage1.steps if stage == 2 else 0)
  return checkpointing.Meta(step=step, stage=stage, stage_step=stage_step, dataset=dataset.name,
                            image_shape=tuple(dataset.image_shape), num_units=dataset.num_units,
                            finished=stage == 2 and stage_step == config.stage2.steps)


def _raise_preempted(signum, frame):
  del signum, frame
  raise Preempted('terminated (SIGTERM) outside the training steps')


class _TerminateRaises:
  """While active, SIGTERM (what SLURM and Kubernetes send) raises `Preempted` at once, as Ctrl-C
  raises KeyboardInterrupt, so that `finally` blocks finish the checkpoint writes under way."""

  def __enter__(self):
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, _raise_preempted)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class _InterruptRequest:
  """While active, Ctrl-C (SIGINT) or SIGTERM only sets `requested` (to the signal); the loop stops
  at the next step boundary, where the state is whole and no checkpoint is being written. A second
  signal of the same kind interrupts at once."""

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.requested = None
    self._previous = {}

  def __enter__(self):
    interrupts.check()  # a Ctrl-C before the stage that JAX swallowed
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def _handle(self, signum, frame):
    del frame
    self.requested = signum
    signal.signal(signum, self._previous[signum])

  def __exit__(self, *exc):
    for s, previous in self._previous.items():
      signal.signal(s, previous)


def run_stage(ctx: Context, stage: Stage) -> State:
  """Runs steps state.step..total-1, logging, checking for divergence and saving as it goes.

  Ctrl-C saves the state at the step reached, then raises KeyboardInterrupt; SIGTERM does the same
  and raises Preempted.
  """
  log, mesh, config = ctx.log, ctx.mesh, ctx.config
  state, number, total = stage.state, stage.number, stage.total_steps
  every, log_every = config.checkpoint.every_steps, config.log_every_steps
  first = saved = int(state.step)
  log.start(number, first, total)
  if stage.validate is not None and first == 0:
    state = _validate(log, stage, state, 0)
  sums, count = None, 0
  # Batches `step + 1` and `step + 2` are built and placed on the device while step `step` runs.
  # With several processes they are built in this thread, so every process issues its device
  # work in one fixed order.
  depth = 2 if jax.process_count() == 1 else 0
  with (_InterruptRequest() as interrupt,
        prefetch.DeviceBatches(stage.stream, first, mesh, depth) as batches):
    for step in range(first, total):
      state, metrics = stage.step_fn(state, next(batches))
      sums = metrics if sums is None else _add(sums, metrics)
      count += 1
      log.advance()
      done = step + 1
      at_log, at_save = done % log_every == 0 or done == total, done % every == 0 or done == total
      if at_log or at_save or interrupt.requested:
        _check_finite(number, state, ctx.workdir)
      if at_log or interrupt.requested:  # an interrupted window is logged as far as it got
        log.write(done, {k: float(v) / count for k, v in jax.device_get(sums).items()})
        sums, count = None, 0
      if stage.validate is not None and (done % stage.validate_every == 0 or done == total):
        state = _validate(log, stage, state, done)
      if (at_save or interrupt.requested) and done != saved:
        jax.block_until_ready(state)  # the steps' time stays the stage's
        with timing.section('checkpoints'):
          stage.save(state)
        saved = done
      if interrupt.requested:
        checkpoint = _base_meta(config, ctx.dataset, number, done).step
        saved_at = (f'stage {number} step {done} saved as '
                    f'{ctx.workdir / checkpointing.CHECKPOINT_SUBDIR / str(checkpoint)}')
        if interrupt.requested == signal.SIGTERM:
          raise Preempted(f'terminated (SIGTERM): {saved_at}')
        log.info(f'interrupted: {saved_at}')
        raise KeyboardInterrupt
  log.close()
  return state


_add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))


def _validate(log: progress.RunLog, stage: Stage, state: State, done: int) -> State:
  """Scores the current flow on the validation split, logs the scores, keeps the better flow (or
  keeps the parameter groups whose cross-validated step this is)."""
  jax.block_until_ready(state)  # the steps' time stays the stage's
  with timing.section('validation'):
    state, scores = stage.validate(state)
    if scores:
      log.write(done, {k: float(v) for k, v in jax.device_get(scores).items()})
    else:
      jax.block_until_ready(state)
  return state


def _check_finite(stage: int, state: State, workdir: Path) -> None:
  bad = int(state.nonfinite_step)
  if bad >= 0:
    raise TrainingDiverged(
        f'stage {stage}: training diverged (NaN or Inf in the loss, gradients or updated '
        f'parameters) at step {bad + 1} and stopped. The last good checkpoint in '
        f'{workdir / checkpointing.CHECKPOINT_SUBDIR} is '
        f'kept; lower --config.stage{stage}.learning_rate and restart with the same --workdir.')


# --- stage 1: the autoencoder ---


def _stage1_optimizer(cfg: ml_collections.ConfigDict):
  return steps.optimizer(cfg.learning_rate, cfg.weight_decay, cfg.steps)


def _init_stage1(ctx: Context) -> steps.Stage1State:
  rng = jax.random.key(ctx.config.seed)
  params = ctx.module.init_autoencoder(rng, jnp.asarray(ctx.dataset.train.images[:1]))
  return steps.Stage1State(
      step=jnp.zeros((), jnp.int32), params=params,
      opt_state=_stage1_optimizer(ctx.config.stage1).init(params),
      rng=jax.random.fold_in(rng, 1), nonfinite_step=jnp.full((), -1, jnp.int32))


def stage1(ctx: Context, state: steps.Stage1State) -> Stage:
  """Stage 1 (the autoencoder on the training stimuli), from `state`."""
  config, dataset, cfg = ctx.config, ctx.dataset, ctx.config.stage1
  parallel.check_batch_size(cfg.batch_size, ctx.mesh, 'stage1')

  def save(s):
    meta = _base_meta(config, dataset, 1, int(s.step))
    checkpointing.save(ctx.mgr, meta.step, state=s, config=config, meta=meta)

  stream = data.BatchStream({'images': dataset.train.images}, cfg.batch_size, seed=config.seed,
                            process_index=jax.process_index(),
                            process_count=jax.process_count())
  step_fn = parallel.jit_step(
      functools.partial(steps.stage1_step, model=ctx.module, tx=_stage1_optimizer(cfg), cfg=cfg),
      ctx.mesh)
  return Stage(1, state, step_fn, stream, cfg.steps, save)


# --- stage 2: the flow and the discriminator ---


def _stage2_parts(config: ml_collections.ConfigDict):
  """The discriminator module and the flow's and discriminator's optimisers."""
  cfg = config.stage2
  dtype = precision.compute_dtype(config.model.get('dtype', 'float32'))
  return (disc_lib.Discriminator(config.model.disc_hidden, dtype=dtype),
          steps.flow_optimizer(cfg, config.model.flow_type == 'augmented'),
          steps.optimizer(cfg.disc_learning_rate, 0.0, cfg.steps))


def initial_flow_params(module: model_lib.FLIG, rng: jax.Array,
                        first_batch: dict[str, jax.Array], linear_pair: Any = None) -> Any:
  """Where the flow starts (the one place). Plain: ActNorm set from the standardised features of
  the first global batch, every coupling at the identity. Augmented: every block at the identity
  and the `LinearPair` at `linear_pair`, the closed-form ridge start (`closed_form`)."""
  params = module.init_flow(rng, first_batch['features'])
  if linear_pair is not None:
    params = {**params, 'linear_pair': jax.tree.map(jnp.asarray, linear_pair)}
  return params


def _init_stage2(ctx: Context, frozen: model_lib.Frozen, first_batch: dict[str, jax.Array],
                 linear_pair: Any = None) -> steps.Stage2State:
  discriminator, flow_tx, disc_tx = _stage2_parts(ctx.config)
  k_flow, k_fwd, k_inv, k_state = jax.random.split(jax.random.key(ctx.config.seed + 2), 4)
  flow_params = initial_flow_params(ctx.module, k_flow, first_batch, linear_pair)
  groups = len(validation.GROUPS[ctx.module.flow_type])
  probe = jnp.zeros((1, ctx.module.feature_dim))
  disc_params = {'forward': discriminator.init(k_fwd, probe)['params'],
                 'inverse': discriminator.init(k_inv, probe)['params']}
  return steps.Stage2State(
      step=jnp.zeros((), jnp.int32), flow_params=flow_params, disc_params=disc_params,
      flow_opt_state=flow_tx.init(flow_params), disc_opt_state=disc_tx.init(disc_params),
      rng=k_state, nonfinite_step=jnp.full((), -1, jnp.int32), frozen=frozen,
      **steps.Stage2State.no_selection(flow_params, groups, _val_size(ctx)))


def _val_size(ctx: Context) -> int:
  """Validation stimuli that stage 2 scores (none below 2)."""
  n = len(ctx.dataset.val)
  return n if n >= 2 else 0


def _first_batch_shape(ctx: Context) -> dict[str, jax.ShapeDtypeStruct]:
  b, d = ctx.config.stage2.batch_size, ctx.module.feature_dim
  return {k: jax.ShapeDtypeStruct((b, d), jnp.float32) for k in ('features', 'adapted')}


def _features(ctx: Context, autoencoder: Any, images: np.ndarray) -> np.ndarray:
  """Raw features E(x) of a split (computed once: the encoder is frozen in stage 2)."""
  features = compiled.apply(ctx.module, 'features')
  variables = {'params': {'autoencoder': autoencoder}}
  return model_lib.map_in_chunks(lambda x: features(variables, x), images)


@jax.jit
def _pairs(frozen: model_lib.Frozen, raw_features: jax.Array,
           responses: jax.Array) -> dict[str, jax.Array]:
  """Stage 2's training pairs: standardised features h and adapted responses A(r)."""
  return {'raw_features': raw_features,
          'features': (raw_features - frozen.feature_mean) / frozen.feature_std,
          'adapted': frozen.adapter.forward(responses)}


def fold_ids(ctx: Context) -> np.ndarray | None:
  """(N,) the cross-validation fold of each training pair, or None (`data.config_fold_ids`)."""
  return data.config_fold_ids(ctx.config, ctx.dataset.train)


def _fit_frozen(ctx: Context, autoencoder: Any, raw_features: np.ndarray,
                responses: np.ndarray) -> model_lib.Frozen:
  """The adapter and the feature standardisation fitted on these training pairs, replicated."""
  adapter = Adapter.fit(responses, ctx.config.model.feature_dim,
                        ctx.config.model.adapter_components)
  return parallel.replicate(jax.jit(model_lib.Frozen.fit)(autoencoder, raw_features, adapter),
                            ctx.mesh)


def _linear_pair(ctx: Context, frozen: model_lib.Frozen, pairs: dict[str, np.ndarray],
                 val: validation.ValidationSet | None, folds: np.ndarray | None) -> Any:
  """The augmented flow's closed-form start on these pairs (None for the plain flow): ridge
  penalties chosen on `val`, else by cross-validation over `folds` (random folds when None)."""
  if ctx.module.flow_type != 'augmented':
    return None
  k = frozen.adapter.k
  if folds is not None and len(np.unique(folds)) < 2:
    folds = None
  return closed_form.linear_pair_params(
      pairs['raw_features'], pairs['adapted'][:, :k], None if val is None else val.raw_features,
      None if val is None else val.adapted[:, :k], np.asarray(frozen.feature_mean),
      np.asarray(frozen.feature_std), ctx.module.feature_dim, fold_ids=folds)


def _arrays(ctx: Context, pairs: dict[str, np.ndarray], images: np.ndarray) -> dict[str, Any]:
  arrays = {'features': pairs['features'], 'adapted': pairs['adapted']}
  if ctx.config.stage2.pixel:  # only the pixel term reads the images; else not built or sent
    arrays['images'] = images
  return arrays


def _stream(ctx: Context, arrays: dict[str, Any], local: bool = True) -> data.BatchStream:
  """Stage 2's seeded batches of `arrays` (this process's rows, or the whole global batch)."""
  kwargs = {'process_index': jax.process_index(),
            'process_count': jax.process_count()} if local else {}
  return data.BatchStream(arrays, ctx.config.stage2.batch_size, seed=ctx.config.seed + 1,
                          **kwargs)


def _first_batch(ctx: Context, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
  """The whole first global batch (the same on every process), which starts the flow."""
  first = _stream(ctx, arrays, local=False).batch(0)
  return {k: first[k] for k in ('features', 'adapted')}


def _cross_validate(ctx: Context, autoencoder: Any, raw_features: np.ndarray,
                    folds: np.ndarray, step_fn: Callable, init: Callable,
                    pixel_weight: float | None) -> cross_validation.Selection:
  """Stage 2 on each fold's other folds, validated on the held-out fold at step 0, every
  `eval_every_steps` and at the end; the pooled held-out scores choose each group's step.

  Every fold runs the same compiled step (same batch shapes) and one compiled prediction on the
  held-out pairs padded to the largest fold.
  """
  cfg, train = ctx.config.stage2, ctx.dataset.train
  predict = jax.jit(functools.partial(validation.predictions, ctx.module))
  size = int(np.bincount(folds).max())
  total, every = cfg.steps, cfg.eval_every_steps
  depth = 2 if jax.process_count() == 1 else 0
  count = len(np.unique(folds))

  def run_fold(rest: np.ndarray, held: np.ndarray):
    start_time = time.perf_counter()
    frozen = _fit_frozen(ctx, autoencoder, raw_features[rest], train.responses[rest])
    pairs = jax.device_get(_pairs(frozen, raw_features[rest], train.responses[rest]))
    frozen = _with_pixel_path(ctx, frozen, pairs, train.images[rest], pixel_weight)
    arrays = _arrays(ctx, pairs, train.images[rest])
    state = init(frozen, _first_batch(ctx, arrays),
                 _linear_pair(ctx, frozen, pairs, None, folds[rest]))
    held_pairs = jax.device_get(_pairs(frozen, raw_features[held], train.responses[held]))
    pad = ((0, size - len(held)), (0, 0))
    features, adapted = (np.pad(held_pairs[k], pad) for k in ('features', 'adapted'))

    def held_out(s):
      decoded, encoded = predict(s.frozen.variables(s.flow_params), features, adapted)
      return np.asarray(decoded)[:len(held)], np.asarray(encoded)[:len(held)]

    out = [(0, *held_out(state))]
    with prefetch.DeviceBatches(_stream(ctx, arrays), 0, ctx.mesh, depth) as batches:
      for step in range(total):
        state, _ = step_fn(state, next(batches))
        done = step + 1
        if done % every == 0 or done == total:
          _check_finite(2, state, ctx.workdir)
          out.append((done, *held_out(state)))
    ctx.log.info(f'cross-validation fold {len(finished) + 1}/{count}: stage 2 on '
                 f'{len(rest)} pairs, {len(held)} held out '
                 f'({time.perf_counter() - start_time:.0f} s)')
    finished.append(len(held))
    return out

  finished: list[int] = []
  return cross_validation.select(folds, train.images, train.responses, run_fold,
                                 validation.GROUPS[ctx.module.flow_type], cfg.select_margin)


def stage2(ctx: Context, start: State, meta: checkpointing.Meta | None = None) -> Stage:
  """Stage 2 (flow and discriminator), resumed from a Stage2State (`meta`: its checkpoint's) or
  started after the finished stage 1 in a Stage1State.

  A fresh start fits the adapter, the feature statistics and the closed-form start on every
  training pair. With `data.folds` >= 2 (and `select_by` 'val_pcc') each parameter group's step
  is first chosen by cross-validation (`_cross_validate`), and the run keeps each group's
  parameters at that step; with a validation split instead, stage 2 scores it as it trains and
  keeps the best steps (`validation.keep_best`).
  """
  config, dataset, mesh, cfg = ctx.config, ctx.dataset, ctx.mesh, ctx.config.stage2
  parallel.check_batch_size(cfg.batch_size, mesh, 'stage2')
  train = dataset.train
  resumed = isinstance(start, steps.Stage2State)
  autoencoder = start.frozen.autoencoder if resumed else start.params
  raw_features = _features(ctx, autoencoder, train.images)
  discriminator, flow_tx, disc_tx = _stage2_parts(config)
  step_fn = parallel.jit_step(
      functools.partial(steps.stage2_step, model=ctx.module, discriminator=discriminator,
                        flow_tx=flow_tx, disc_tx=disc_tx, cfg=cfg), mesh)
  init = parallel.jit_init(functools.partial(_init_stage2, ctx), mesh)
  folds = fold_ids(ctx)
  selection = pixel_weight = None
  if resumed:
    frozen = start.frozen
    if meta is not None and meta.cross_validation:
      selection = cross_validation.Selection.from_meta(meta.cross_validation)
  else:
    if config.model.pixel_path:
      with timing.section('selection'):
        pixel_weight = _pixel_weight(ctx, autoencoder, raw_features, folds)
    if folds is not None and cfg.select_by == 'val_pcc':
      with timing.section('selection'):
        selection = _cross_validate(ctx, autoencoder, raw_features, folds, step_fn, init,
                                    pixel_weight)
    frozen = _fit_frozen(ctx, autoencoder, raw_features, train.responses)
  if selection is not None:
    for step, scores in selection.rows():
      # A resumed run's log keeps the rows up to its checkpoint (`metrics_file.trim`).
      if not resumed or step > int(start.step):
        ctx.log.record(2, step, scores)
    for line in selection.explain(cfg.select_margin):
      ctx.log.info(f'stage 2 keeps {line}')
    note = validation.kept_start_note(
        ctx.module.flow_type, selection.chosen_steps(validation.GROUPS[ctx.module.flow_type]),
        cfg.select_margin, f'{selection.folds}-fold cross-validation over the training pairs')
    if note:
      ctx.log.info(note)
  pairs = jax.device_get(_pairs(frozen, raw_features, train.responses))
  arrays = _arrays(ctx, pairs, train.images)
  if not resumed:
    frozen = _with_pixel_path(ctx, frozen, pairs, train.images, pixel_weight)
  val = None
  # The validation pairs serve model selection and the closed-form start's regularisers.
  if _val_size(ctx) and (cfg.select_by == 'val_pcc' or ctx.module.flow_type == 'augmented'):
    val_pairs = jax.device_get(
        _pairs(frozen, _features(ctx, autoencoder, dataset.val.images), dataset.val.responses))
    val = validation.ValidationSet(raw_features=val_pairs['raw_features'],
                                   features=val_pairs['features'], adapted=val_pairs['adapted'],
                                   images=dataset.val.images, responses=dataset.val.responses)
  if resumed:
    state = start
  else:
    state = init(frozen, _first_batch(ctx, arrays), _linear_pair(ctx, frozen, pairs, val, folds))

  def save(s):
    variables = s.model_variables()
    meta = dataclasses.replace(
        _base_meta(config, dataset, 2, int(s.step)),
        adapter_k=model_lib.model_meta(variables, dataset.image_shape).adapter_k,
        pixel_path='pixel_path' in variables,
        selected_steps=tuple(int(v) for v in s.selected_steps()),
        cross_validation=None if selection is None else selection.to_meta())
    checkpointing.save(ctx.mgr, meta.step, state=s, model=variables, config=config, meta=meta)

  validate = None
  groups = validation.GROUPS[ctx.module.flow_type]
  if selection is not None:
    keep = functools.partial(validation.keep_at, chosen=jnp.asarray(selection.chosen_steps(groups)),
                             groups=groups)
    validate = parallel.jit_replicated(keep, mesh)
  elif cfg.select_by == 'val_pcc':
    if val is None:
      n = len(dataset.val)
      why = f'a validation split of {n} image is too small to score' if n else 'no validation split'
      ctx.log.info(f'{why} (data.val_fraction) and no cross-validation (data.folds): stage 2 '
                   'keeps its last step')
    else:
      val_set = parallel.replicate(val.replace(raw_features=None), mesh)
      score = functools.partial(steps.stage2_validate, model=ctx.module,
                                margin=cfg.select_margin)
      validate = functools.partial(parallel.jit_replicated(score, mesh), val=val_set)
  return Stage(2, state, step_fn, _stream(ctx, arrays), cfg.steps, save, validate,
               cfg.eval_every_steps)


def _with_pixel_path(ctx: Context, frozen: model_lib.Frozen, pairs: dict[str, np.ndarray],
                     images: np.ndarray, weight: float | None) -> model_lib.Frozen:
  """`frozen` with the pixel path (`flig_jax.pixel_path`) fitted on these training pairs (its
  penalty by cross-validation over them) at blend weight `weight`; as it is when None."""
  if weight is None:
    return frozen
  frozen = jax.device_get(frozen)
  kernel, bias = pixel_path.fit(pairs['adapted'][:, :frozen.adapter.k], images, None, None,
                                ctx.module.feature_dim)
  return parallel.replicate(frozen.replace(
      pixel_kernel=jnp.asarray(kernel), pixel_bias=jnp.asarray(bias),
      pixel_weight=jnp.asarray(weight, jnp.float32)), ctx.mesh)


def _pixel_weight(ctx: Context, autoencoder: Any, raw_features: np.ndarray,
                  folds: np.ndarray | None) -> float:
  """The pixel path's blend weight, chosen from `pixel_path.WEIGHTS` on held-out pairs with the
  flow at its closed-form start: each fold of `folds` held out in turn (adapter, start and pixel
  map fitted on the others), else the validation split; 0 (the flow's decoder alone) when there
  is neither."""
  train = ctx.dataset.train
  if folds is not None and len(np.unique(folds)) >= 2:
    splits = [(folds != f, folds == f) for f in np.unique(folds)]
    held_images = [train.images[held] for _, held in splits]
    sources = [(raw_features[rest], train.responses[rest], train.images[rest], folds[rest],
                raw_features[held], train.responses[held]) for rest, held in splits]
  elif _val_size(ctx):
    val = ctx.dataset.val
    held_images = [val.images]
    sources = [(raw_features, train.responses, train.images, None,
                _features(ctx, autoencoder, val.images), val.responses)]
  else:
    return 0.0
  scores = []
  for (raw, responses, images, rest_folds, held_raw, held_r), held_x in zip(sources, held_images):
    frozen = _fit_frozen(ctx, autoencoder, raw, responses)
    pairs = jax.device_get(_pairs(frozen, raw, responses))
    frozen = _with_pixel_path(ctx, frozen, pairs, images, 0.0)
    held = jax.device_get(_pairs(frozen, held_raw, held_r))
    flow = initial_flow_params(ctx.module, jax.random.key(ctx.config.seed + 2),
                               _first_batch(ctx, _arrays(ctx, pairs, images)),
                               _linear_pair(ctx, frozen, pairs, None, rest_folds))
    variables = frozen.variables(flow)
    autoencoded = compiled.apply(ctx.module, 'decode_images')(variables, held['adapted'])
    pixels = compiled.apply(ctx.module, 'pixel_decode')(variables, held['adapted'])
    scores.append(pixel_path.candidate_scores(autoencoded, pixels, held_x))
  weight = pixel_path.choose(np.concatenate(scores, axis=1))
  ctx.log.info(f'pixel path: blend weight {weight:g}, chosen from '
               f'{", ".join(f"{w:g}" for w in pixel_path.WEIGHTS)} on held-out pairs')
  return weight


# --- figures of validation pairs (training pairs when there is no validation split) ---


def _figure_split(dataset):
  """Validation pairs when there are any, else training pairs: the test split stays unseen."""
  return (dataset.val, 'val') if len(dataset.val) else (dataset.train, 'train')


class _FigureWriter:
  """Draws and writes the training figures in one background thread, so that matplotlib's import
  and drawing overlap the work that follows (stage 1's figure overlaps stage 2's set-up and
  steps). The arrays are computed before `submit`; `wait` re-raises a drawing's error."""

  def __init__(self):
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='figures')
    self._pending: list[concurrent.futures.Future] = []

  def submit(self, *args: Any, **kwargs: Any) -> None:
    """Queues `plotting.reconstruction_grid(*args, **kwargs)`."""
    def draw():
      from flig_jax import plotting  # pylint: disable=g-import-not-at-top
      plotting.reconstruction_grid(*args, **kwargs)
    self._pending.append(self._pool.submit(draw))

  def wait(self) -> None:
    """Waits for the queued figures; raises the first error one of them met."""
    pending, self._pending = self._pending, []
    for future in pending:
      future.result()

  def close(self) -> None:
    """Waits for the thread to end (a figure's error is left to `wait`)."""
    self._pool.shutdown(wait=True)


def _stage1_figure(ctx: Context, ae_params: Any, step: int, figures: _FigureWriter) -> None:
  if jax.process_index() != 0:
    return
  split, name = _figure_split(ctx.dataset)
  x = split.images[:ctx.config.num_figure_images]
  recon = compiled.apply(ctx.module, 'reconstruct')({'params': {'autoencoder': ae_params}}, x)
  figures.submit(x, {f'G(E(x)) [{name}]': np.asarray(recon)},
                 str(ctx.workdir / 'stage1_reconstructions.png'), n=len(x),
                 title=f'{ctx.dataset.name}, {name} split: stage 1 at step {step}')


def _stage2_figure(ctx: Context, variables: Any, kept_steps: Any, figures: _FigureWriter) -> None:
  if jax.process_index() != 0:
    return
  split, name = _figure_split(ctx.dataset)
  kept = ', '.join(f'{group.removeprefix("val_")} at step {int(step)}' for (group, _), step
                   in zip(validation.GROUPS[ctx.module.flow_type], kept_steps))
  title = f'{ctx.dataset.name}, {name} split: stage 2, flow kept {kept}'
  x = split.images[:ctx.config.num_figure_images]
  r = split.responses[:ctx.config.num_figure_images]
  recons = {'G(E(x))': compiled.apply(ctx.module, 'reconstruct')(variables, x),
            f'decode(r) [{name}]': compiled.apply(ctx.module, 'decode')(variables, r)}
  figures.submit(x, {k: np.asarray(v) for k, v in recons.items()},
                 str(ctx.workdir / 'stage2_decoding.png'), n=len(x), title=title)
