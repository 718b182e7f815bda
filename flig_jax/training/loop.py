"""`train`: both training stages, checkpointed and resumable, from a config and a workdir.

Stage 1 fits the autoencoder on the training stimuli. Then the adapter is fitted on the training
responses and the encoder's features are standardised. Stage 2 fits the flow (and the
discriminator) with the encoder frozen. Checkpoints live in `<workdir>/checkpoints`; a restart with
the same workdir continues from the latest one (stage, step, optimiser state, RNG and data position,
which is the step itself).

The path through a run: `resume.start_point` (the newest checkpoint that restores, checked against
the config) -> `context.make_context` -> `restore_or_init` (that checkpoint's state, or a fresh
stage-1 state) -> `stage1` -> `run_stage` -> `stage2` -> `run_stage`.
"""

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flig_jax import checkpointing, data, pixel_path, workdir_lock
from flig_jax import model as model_lib
from flig_jax.nn.flig import Frozen
from flig_jax.training import (
  TrainingDiverged,
  ahead,
  context,
  cross_validation,
  parallel,
  prefetch,
  progress,
  resume,
  signals,
  stacked_folds,
  stage2_data,
  steps,
  timing,
  train_state,
  validation,
)
from flig_jax.training.figures import FigureWriter

State = train_state.Stage1State | train_state.Stage2State


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


def train(config: ml_collections.ConfigDict, workdir: str | Path, *,
          allow_config_change: bool = False, on_start: Callable[[], Any] | None = None) -> Path:
  """Trains both stages (resuming from `workdir` if it holds checkpoints) and returns the workdir.

  Writes `stage1_reconstructions.png` and `stage2_decoding.png` (validation pairs, else training
  pairs) beside the checkpoints; scoring is `evaluation.run.evaluate`'s job. One run at a time holds
  the workdir (`workdir_lock`). A resumed run starts from the newest checkpoint that restores and
  must keep the saved config's model, data and optimiser fields unless `allow_config_change`
  (`resume.start_point`). SIGTERM, like Ctrl-C, saves at the next step boundary, then raises
  `Preempted`. JAX's distributed runtime is started here (`config.distributed` or
  FLIG_DISTRIBUTED=1), before anything touches a device; `on_start` is called right after.

  A finished run ends its `metrics.jsonl` with a row of where its wall time went ('time_s':
  seconds per `timing.PARTS` part and 'total'), from the active `timing.Breakdown` (the one
  train.py starts on its first line) or, without one, from this call on.
  """
  with contextlib.ExitStack() as stack:
    if timing.active() is None:
      stack.enter_context(timing.Breakdown())
    parallel.maybe_initialize_distributed(config.distributed)
    if on_start is not None:
      on_start()
    writer = jax.process_index() == 0
    stack.enter_context(signals.TerminateRaises())
    stack.enter_context(workdir_lock.WorkdirLock(Path(workdir), active=writer,
                                                 note=progress.note))
    with timing.section('setup'):
      latest = resume.start_point(config, workdir, allow_config_change=allow_config_change,
                                  writer=writer, note=progress.note)
    return _train(config, workdir, latest)


def _train(config: ml_collections.ConfigDict, workdir: str | Path,
           latest: checkpointing.Meta | None) -> Path:
  with timing.section('setup'):
    ctx = context.make_context(config, workdir, resume_step=latest.step if latest else 0)
  figures = FigureWriter(ctx)
  programs = Stage2Programs(ctx)
  step1 = stage1_step_fn(ctx)
  # Stage 1's step compiles in the background while its state is created or restored.
  stage1_ahead = (compile_stage1_ahead(ctx, step1) if _trains_stage1(ctx.config, latest)
                  else None)
  try:
    with timing.section('setup'):
      state = restore_or_init(ctx, latest)
    if isinstance(state, train_state.Stage1State):
      if stage1_ahead is not None:
        stage1_ahead.wait()
      with timing.section('stage1'):
        # Stage 2's step compiles in the background once stage 1's own compile is done.
        state = run_stage(ctx, stage1(ctx, state, step1),
                          after_first_step=programs.compile_ahead)
      with timing.section('figures'):
        figures.stage1(state.params, int(state.step))
    with timing.section('fits'):
      stage = stage2(ctx, state, latest, programs)
    with timing.section('stage2'):
      state = run_stage(ctx, stage)
    for line in validation.kept_lines(ctx.module.flow_type, state.best_score, state.best_step,
                                      config.stage2.select_margin):
      ctx.log.info(line)
    kept = ', '.join(f'{group.removeprefix("val_")} at step {int(step)}' for (group, _), step
                     in zip(validation.GROUPS[ctx.module.flow_type], state.selected_steps()))
    with timing.section('figures'):
      figures.stage2(state.model_variables(), kept)
      figures.wait()
    with timing.section('checkpoints'):
      ctx.mgr.wait_until_finished()
    timer = timing.active()
    if timer is not None:
      timer.stop()
      ctx.log.record_times(2, int(state.step), timer.seconds())
  finally:
    if stage1_ahead is not None:  # no compile left running in a thread at exit
      stage1_ahead.wait()
    programs.wait()
    figures.close()
    # The progress bar ends its line first: a save that fails in the background raises here, and
    # its one-line error must not land on the bar's line.
    ctx.log.close()
    ctx.mgr.wait_until_finished()
  return ctx.workdir


def _trains_stage1(config: ml_collections.ConfigDict, latest: checkpointing.Meta | None) -> bool:
  """Whether a run starting from checkpoint `latest` (None: a fresh run) trains stage 1."""
  if latest is None:
    return not config.stage1.get('init_from')
  return latest.stage == 1 and latest.stage_step < config.stage1.steps


def restore_or_init(ctx: context.Context, latest: checkpointing.Meta | None = None) -> State:
  """The state of checkpoint `latest` (its meta; default: the manager's latest) of either stage,
  or a fresh stage-1 state when there is none."""
  latest = latest or checkpointing.latest_meta(ctx.mgr)
  if latest is None:
    state = parallel.jit_init(functools.partial(_init_stage1, ctx), ctx.mesh)()
    if ctx.config.stage1.get('init_from'):
      autoencoder, source = resume.autoencoder_from(ctx.config)
      state = state.replace(params=jax.device_put(autoencoder, parallel.replicated(ctx.mesh)),
                            step=jnp.full_like(state.step, ctx.config.stage1.steps))
      ctx.log.info(f'stage 1 skipped: the autoencoder of {ctx.config.stage1.init_from} (its '
                   f'checkpoint step {source.step})')
    return state
  meta = latest
  if meta.stage == 1:
    target = jax.eval_shape(functools.partial(_init_stage1, ctx))
  else:
    frozen = model_lib.abstract_frozen(ctx.module, meta)
    target = jax.eval_shape(functools.partial(_init_stage2, ctx), frozen,
                            stage2_data.first_batch_shape(ctx.config, ctx.module), None)
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


def run_stage(ctx: context.Context, stage: Stage,
              after_first_step: Callable[[], Any] | None = None) -> State:
  """Runs steps state.step..total-1, logging, checking for divergence and saving as it goes.

  Ctrl-C saves the state at the step reached, then raises KeyboardInterrupt; SIGTERM does the same
  and raises Preempted. `after_first_step` is called once the first step has been dispatched (and
  so compiled).
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
  with (signals.InterruptRequest() as interrupt,
        prefetch.DeviceBatches(stage.stream, first, mesh, depth) as batches):
    for step in range(first, total):
      state, metrics = stage.step_fn(state, next(batches))
      if after_first_step is not None and step == first:
        after_first_step()
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
        checkpoint = ctx.workdir / checkpointing.CHECKPOINT_SUBDIR / str(
            _base_meta(config, ctx.dataset, number, done).step)
        interrupt.stop(f'stage {number} step {done} saved as {checkpoint}', log.info)
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
  """Raises `TrainingDiverged` when `state` (or any fold of the cross-validation folds' stacked
  state, whose `nonfinite_step` is (K,)) has diverged."""
  marks = np.asarray(jax.device_get(state.nonfinite_step)).reshape(-1)
  if (marks >= 0).any():
    bad = int(marks[marks >= 0].min())
    where = ''
    if np.ndim(state.nonfinite_step):
      where = (' in cross-validation fold(s) '
               + ', '.join(str(f + 1) for f in np.nonzero(marks >= 0)[0]) + f' of {len(marks)}')
    raise TrainingDiverged(
        f'stage {stage}: training diverged (NaN or Inf in the loss, gradients or updated '
        f'parameters){where} at step {bad + 1} and stopped. The last good checkpoint in '
        f'{workdir / checkpointing.CHECKPOINT_SUBDIR} is kept; lower '
        f'--config.stage{stage}.learning_rate and restart with the same --workdir.')


# --- stage 1: the autoencoder ---


def _init_stage1(ctx: context.Context) -> train_state.Stage1State:
  return train_state.create_stage1_state(jax.random.key(ctx.config.seed), ctx.config, ctx.module,
                                         jnp.asarray(ctx.dataset.train.images[:1]))


def stage1_step_fn(ctx: context.Context) -> Callable[..., Any]:
  """Stage 1's jitted step (`steps.stage1_step`)."""
  return parallel.jit_step(functools.partial(steps.stage1_step, model=ctx.module,
                                             cfg=ctx.config.stage1), ctx.mesh)


def compile_stage1_ahead(ctx: context.Context, step_fn: Callable[..., Any]) -> ahead.Ahead:
  """Starts compiling stage 1's `step_fn` in a background thread, for the abstract state and
  batch of this run, so that it compiles while the state is created (its own compile) or
  restored."""
  def compile_step():
    state = jax.eval_shape(functools.partial(_init_stage1, ctx))
    batch = {'images': jax.ShapeDtypeStruct(
        (ctx.config.stage1.batch_size, *ctx.dataset.image_shape), jnp.float32)}
    step_fn.lower(parallel.placed(state, parallel.replicated(ctx.mesh)),
                  parallel.placed(batch, parallel.batch_sharded(ctx.mesh))).compile()
  return ahead.Ahead([('stage1', compile_step)])


def stage1(ctx: context.Context, state: train_state.Stage1State,
           step_fn: Callable[..., Any] | None = None) -> Stage:
  """Stage 1 (the autoencoder on the training stimuli), from `state`; `step_fn` is its step
  (`stage1_step_fn`; made here when None)."""
  config, dataset, cfg = ctx.config, ctx.dataset, ctx.config.stage1
  parallel.check_batch_size(cfg.batch_size, ctx.mesh, 'stage1')

  def save(s):
    meta = _base_meta(config, dataset, 1, int(s.step))
    checkpointing.save(ctx.mgr, meta.step, state=s, config=config, meta=meta)

  stream = data.BatchStream({'images': dataset.train.images}, cfg.batch_size, seed=config.seed,
                            process_index=jax.process_index(),
                            process_count=jax.process_count())
  return Stage(1, state, step_fn or stage1_step_fn(ctx), stream, cfg.steps, save)


# --- stage 2: the flow and the discriminator ---


def _init_stage2(ctx: context.Context, frozen: Frozen, first_batch: dict[str, jax.Array],
                 linear_pair: Any) -> train_state.Stage2State:
  return train_state.create_stage2_state(jax.random.key(ctx.config.seed + 2), ctx.config,
                                         ctx.module, frozen, first_batch, linear_pair,
                                         stage2_data.val_size(ctx.dataset))


class Stage2Programs:
  """Stage 2's jitted programs, built once per run, so that compiling them ahead (`compile_ahead`,
  while stage 1 trains) fills the caches that stage 2's calls then use.

  Attributes:
    step_fn: the step (`steps.stage2_step`).
    init: `(frozen, first_batch, linear_pair) -> Stage2State`.
    predict: `(state, features, adapted) -> (decoded, encoded)` of held-out pairs
      (`stacked_folds.predictions`).
    stack: the cross-validation folds' states as one (`stacked_folds.stack`).
    folds_step: the step of the stacked folds (`stacked_folds.over_folds`).
    folds_predict: `predict` of the stacked folds (`stacked_folds.predictions_over_folds`).
  """

  def __init__(self, ctx: context.Context):
    self._ctx, mesh = ctx, ctx.mesh
    step = functools.partial(steps.stage2_step, model=ctx.module, cfg=ctx.config.stage2)
    self.step_fn = parallel.jit_step(step, mesh)
    self.init = parallel.jit_init(functools.partial(_init_stage2, ctx), mesh)
    self.predict = parallel.jit_apply(functools.partial(stacked_folds.predictions, ctx.module),
                                      mesh)
    self.stack = parallel.jit_init(stacked_folds.stack, mesh)
    self.folds_step = parallel.jit_step(stacked_folds.over_folds(step), mesh, batch_axis=1)
    self.folds_predict = parallel.jit_apply(
        functools.partial(stacked_folds.predictions_over_folds, ctx.module), mesh)
    self.ahead: ahead.Ahead | None = None
    self._shapes: tuple[train_state.Stage2State, dict[str, Any]] | None = None

  def compile_ahead(self) -> None:
    """Starts compiling, in a background thread, for the abstract shapes of `stage2_step_shapes`:
    the cross-validation folds' stacked step and predictions, their initial states and their
    stacking (when the run cross-validates stage 2), then the step."""
    if self.ahead is None:
      self.ahead = ahead.Ahead([('folds', self._compile_folds), ('step', self._compile_step)])

  def _step_shapes(self) -> tuple[train_state.Stage2State, dict[str, Any]]:
    """`stage2_step_shapes`, traced once for every compile ahead (all run in one thread)."""
    if self._shapes is None:
      self._shapes = stage2_step_shapes(self._ctx)
    return self._shapes

  def _compile_folds(self) -> None:
    ctx = self._ctx
    folds = data.config_fold_ids(ctx.config, ctx.dataset.train)
    if folds is None or ctx.config.stage2.select_by != 'val_pcc':
      return  # a fresh stage 2 of this run does not cross-validate
    state, batch = self._step_shapes()
    state = state.replace(frozen=state.frozen.without_pixel_paths())  # the folds run the flow alone
    count = len(np.unique(folds))
    stacked, stacked_batch, held = stacked_folds.shapes(state, batch, count,
                                                        int(np.bincount(folds).max()), ctx.mesh)
    self.folds_step.lower(stacked, stacked_batch).compile()
    self.folds_predict.lower(stacked, held['features'], held['adapted']).compile()
    self._compile_init(state)  # the folds' initial states
    self.stack.lower([state] * count).compile()

  def _compile_init(self, state: train_state.Stage2State) -> None:
    """Compiles `init` for the frozen parts of `state`, from host arrays as stage 2 passes them."""
    host = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    linear_pair = state.flow_params.get('linear_pair')
    self.init.lower(state.frozen,
                    host(stage2_data.first_batch_shape(self._ctx.config, self._ctx.module)),
                    None if linear_pair is None else host(linear_pair)).compile()

  def _compile_step(self) -> None:
    state, batch = self._step_shapes()
    self.step_fn.lower(state, batch).compile()
    if state.frozen.pixel_kernel is not None:  # else the folds' compile served the final run too
      self._compile_init(state)

  def wait(self, name: str | None = None) -> None:
    """Waits for compile `name` ('folds' or 'step'; None: both) started by `compile_ahead` (none
    started: returns at once)."""
    if self.ahead is not None:
      self.ahead.wait(name)


def stage2_step_shapes(ctx: context.Context) -> tuple[train_state.Stage2State, dict[str, Any]]:
  """The abstract (state, batch) of a fresh stage 2's step, before anything of stage 2 is fitted.

  The adapter's k is taken as min(D, model.adapter_components, U, N - 1) (N the training pairs of
  the smallest cross-validation fit), and the pixel paths' m as `pixel_path.components` of all
  training pairs: the numerical rank of the responses is that, unless they are degenerate; then
  the shapes differ and the step compiles at its first call instead.
  """
  config, dataset, module = ctx.config, ctx.dataset, ctx.module
  folds = data.config_fold_ids(config, dataset.train)
  n = len(dataset.train)
  if folds is not None:
    n -= int(np.bincount(folds).max())
  d = module.feature_dim
  k = min(d, config.model.adapter_components or d, dataset.num_units, max(n - 1, 1))
  pixel_k = (pixel_path.components(dataset.num_units, len(dataset.train))
             if config.model.pixel_path else None)
  meta = checkpointing.Meta(image_shape=tuple(dataset.image_shape), num_units=dataset.num_units,
                            adapter_k=k, pixel_path=pixel_k is not None, pixel_adapter_k=pixel_k)
  frozen = model_lib.abstract_frozen(module, meta)
  state = jax.eval_shape(functools.partial(_init_stage2, ctx), frozen,
                         stage2_data.first_batch_shape(config, module), None)
  return (parallel.placed(state, parallel.replicated(ctx.mesh)),
          parallel.placed(stage2_data.batch_shape(config, module),
                          parallel.batch_sharded(ctx.mesh)))


def stage2(ctx: context.Context, start: State, meta: checkpointing.Meta | None = None,
           programs: Stage2Programs | None = None) -> Stage:
  """Stage 2 (flow and discriminator), resumed from a Stage2State (`meta`: its checkpoint's) or
  started after the finished stage 1 in a Stage1State.

  A fresh start fits the adapter, the feature statistics and the closed-form start on every
  training pair. With `data.folds` >= 2 (and `select_by` 'val_pcc') each parameter group's step
  is first chosen by cross-validation (`cross_validation.stage2`), and the run keeps each group's
  parameters at that step; with a validation split instead, stage 2 scores it as it trains and
  keeps the best steps (`validation.keep_best`). Each fold's frozen parts are fitted once
  (`stage2_data.fold_fits`) and read both by the choice of the pixel path's blend weight
  (`stage2_data.pixel_weight`) and by the fold's stage 2. `programs` are the run's stage-2
  programs (default: built here); a compile they started ahead is waited for before the step is
  first called.
  """
  config, dataset, mesh, cfg = ctx.config, ctx.dataset, ctx.mesh, ctx.config.stage2
  parallel.check_batch_size(cfg.batch_size, mesh, 'stage2')
  resumed = isinstance(start, train_state.Stage2State)
  autoencoder = start.frozen.autoencoder if resumed else start.params
  raw_features = stage2_data.features(ctx.module, autoencoder, dataset.train.images)
  programs = programs or Stage2Programs(ctx)
  step_fn, init = programs.step_fn, programs.init
  folds = data.config_fold_ids(config, dataset.train)
  selection = pixel_weight = fits = None
  cross_validate = not resumed and folds is not None and cfg.select_by == 'val_pcc'
  if not resumed and folds is not None and (config.model.pixel_path or cross_validate):
    with timing.section('selection'):
      # Each fold's frozen parts, fitted once for the pixel weight's choice and the fold's stage 2.
      fits = stage2_data.fold_fits(ctx, autoencoder, raw_features, folds, config.model.pixel_path)
  if not resumed and config.model.pixel_path:
    with timing.section('selection'):
      pixel_weight = stage2_data.pixel_weight(ctx, autoencoder, raw_features, folds, fits)
  if resumed and meta is not None and meta.cross_validation:
    selection = cross_validation.Selection.from_meta(meta.cross_validation)
  elif cross_validate:
    with timing.section('selection'):
      selection = cross_validation.stage2(ctx, autoencoder, raw_features, folds, programs,
                                          lambda s: _check_finite(2, s, ctx.workdir),
                                          pixel_weight, fits=fits)
  del fits  # not kept while the final run trains: it fits its own parts on every training pair
  programs.wait()  # the step compiled ahead (stage 1's time), before its first call below
  if selection is not None:
    cross_validation.report(selection, ctx.log, ctx.module.flow_type, cfg.select_margin,
                            int(start.step) if resumed else None, pixel_weight)
  # The encoder's pixel path comes with the decoder's; its weight is 0 unless the folds chose one.
  inputs = stage2_data.prepare(config, ctx.module, dataset, autoencoder, raw_features, mesh,
                               start.frozen if resumed else None, pixel_weight, folds,
                               None if selection is None else selection.encoder_weight)
  state = start if resumed else init(
      inputs.frozen, stage2_data.first_batch(config, inputs.arrays),
      stage2_data.linear_pair(ctx.config, ctx.module, inputs.frozen, inputs.pairs, inputs.val,
                              folds))

  def save(s):
    variables = s.model_variables()
    shapes = model_lib.model_meta(variables, dataset.image_shape)
    meta = dataclasses.replace(
        _base_meta(config, dataset, 2, int(s.step)), adapter_k=shapes.adapter_k,
        pixel_path=shapes.pixel_path, pixel_adapter_k=shapes.pixel_adapter_k,
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
    if inputs.val is None:
      n = len(dataset.val)
      why = f'a validation split of {n} image is too small to score' if n else 'no validation split'
      ctx.log.info(f'{why} (data.val_fraction) and no cross-validation (data.folds): stage 2 '
                   'keeps its last step')
    else:
      val_set = parallel.replicate(inputs.val.replace(raw_features=None), mesh)
      score = functools.partial(steps.stage2_validate, model=ctx.module,
                                margin=cfg.select_margin)
      validate = functools.partial(parallel.jit_replicated(score, mesh), val=val_set)
  return Stage(2, state, step_fn, stage2_data.stream(config, inputs.arrays), cfg.steps, save,
               validate, cfg.eval_every_steps)
