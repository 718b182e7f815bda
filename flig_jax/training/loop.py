"""`train_and_evaluate`: both training stages, checkpointed and resumable, from a config and a workdir.

Stage 1 fits the autoencoder on the training stimuli. Then the adapter is fitted on the training
responses and the encoder's features are standardised. Stage 2 fits the flow (and the
discriminator) with the encoder frozen. Checkpoints live in `<workdir>/checkpoints`; a restart with
the same workdir continues from the latest one (stage, step, optimiser state, RNG and data position,
which is the step itself).
"""

import dataclasses
import functools
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flig_jax import checkpointing, data
from flig_jax import model as model_lib
from flig_jax.evaluation import figures
from flig_jax.nn import adapter as adapter_lib
from flig_jax.nn import discriminator as disc_lib
from flig_jax.training import TrainingDiverged, parallel, progress, steps


@dataclasses.dataclass(frozen=True)
class Run:
  """What both stages share."""
  config: ml_collections.ConfigDict
  workdir: Path
  dataset: data.Dataset
  model: model_lib.FLIG
  mesh: Any
  mgr: Any
  log: progress.RunLog


@dataclasses.dataclass(frozen=True)
class Stage:
  """A stage ready to run: `state, metrics = step_fn(state, *inputs, batch)` for each step."""
  number: int
  state: Any
  step_fn: Callable
  inputs: tuple
  stream: data.BatchStream
  total_steps: int
  save: Callable[[Any], None]


def make_run(config: ml_collections.ConfigDict, workdir: str | Path) -> Run:
  """Loads the data and builds the model, mesh, checkpoint manager and log of a run."""
  parallel.maybe_initialize_distributed(config.distributed)
  workdir = Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = parallel.make_mesh()
  dataset = data.from_config(config)
  model = model_lib.FLIG.from_config(config.model, dataset.image_shape)
  mgr = checkpointing.manager(workdir, keep=config.checkpoint.keep)
  log = progress.RunLog(workdir)
  log.info(f'{dataset.name}: train {len(dataset.train)}, val {len(dataset.val)}, '
           f'test {len(dataset.test)}, {dataset.num_units} units, images {dataset.image_shape}; '
           f'{mesh.size} device(s) in {jax.process_count()} process(es)')
  return Run(config, workdir, dataset, model, mesh, mgr, log)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> Path:
  """Trains both stages (resuming from `workdir` if it holds checkpoints) and returns the workdir."""
  run = make_run(config, workdir)
  try:
    latest = checkpointing.latest_meta(run.mgr)
    if latest is None or latest[1]['stage'] == 1:
      stage1 = prepare_stage1(run, latest)
      ae_params = _loop(run, stage1).params
      _stage1_figure(run, ae_params)
      latest = None
    else:
      ae_params = None
    stage2, variables_of = prepare_stage2(run, latest, ae_params)
    _stage2_figure(run, variables_of(_loop(run, stage2)))
  finally:
    run.mgr.wait_until_finished()
    run.log.close()
  return run.workdir


def _base_meta(config, dataset, stage: int, stage_step: int) -> dict[str, Any]:
  """What a checkpoint says about itself; `step` is its number in the manager (stage-2
  checkpoints are numbered after stage 1's)."""
  step = stage_step + (config.stage1.steps if stage == 2 else 0)
  return {'stage': stage, 'stage_step': stage_step, 'step': step, 'dataset': dataset.name,
          'image_shape': list(dataset.image_shape), 'num_units': dataset.num_units,
          'finished': stage == 2 and stage_step == config.stage2.steps}


def _abstract(tree_fn: Callable[[], Any], mesh) -> Any:
  """The shapes, dtypes and (replicated) shardings of what `tree_fn` returns, without computing it."""
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                      jax.eval_shape(tree_fn))


class _InterruptRequest:
  """While active, Ctrl-C (SIGINT) only sets `requested`; the loop stops at the next step boundary,
  where the state is whole and no checkpoint is being written. A second Ctrl-C interrupts at once."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True
    signal.signal(signal.SIGINT, self._previous)

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)


def _loop(run: Run, stage: Stage) -> Any:
  """Runs steps state.step..total-1, logging, checking for divergence and saving as it goes.

  Ctrl-C saves the state at the step reached, then raises KeyboardInterrupt.
  """
  log, mesh, config = run.log, run.mesh, run.config
  state, number, total = stage.state, stage.number, stage.total_steps
  every, log_every = config.checkpoint.every_steps, config.log_every_steps
  first = saved = int(state.step)
  log.start(number, first, total)
  sums, count = None, 0
  with _InterruptRequest() as interrupt:
    for step in range(first, total):
      batch = parallel.global_batch(stage.stream.batch(step), mesh)
      state, metrics = stage.step_fn(state, *stage.inputs, batch)
      sums = metrics if sums is None else _add(sums, metrics)
      count += 1
      log.advance()
      done = step + 1
      at_log, at_save = done % log_every == 0 or done == total, done % every == 0 or done == total
      if at_log or at_save or interrupt.requested:
        _check_finite(number, state, run.workdir)
      if at_log:
        log.write(done, {k: float(v) / count for k, v in jax.device_get(sums).items()})
        sums, count = None, 0
      if (at_save or interrupt.requested) and done != saved:
        stage.save(state)
        saved = done
      if interrupt.requested:
        log.info(f'interrupted: stage {number} saved at step {done}')
        raise KeyboardInterrupt
  log.close()
  return state


_add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))


def _apply(model: model_lib.FLIG, method: Callable) -> Callable:
  """`model.apply(variables, x, method=method)`, compiled (eager ops each compile on their own)."""
  return jax.jit(functools.partial(model.apply, method=method))


def _check_finite(stage: int, state: Any, workdir: Path) -> None:
  bad = int(state.nonfinite_step)
  if bad >= 0:
    raise TrainingDiverged(
        f'stage {stage}: the loss became non-finite (NaN or Inf) at step {bad + 1}; training '
        f'stopped. The last good checkpoint in {workdir / checkpointing.CHECKPOINT_SUBDIR} is kept; lower '
        f'--config.stage{stage}.learning_rate and restart with the same --workdir.')


def prepare_stage1(run: Run, latest: tuple[int, dict] | None) -> Stage:
  """Stage 1 (the autoencoder), fresh or restored from the stage-1 checkpoint `latest`."""
  config, dataset, model, mesh, mgr, log = (run.config, run.dataset, run.model, run.mesh, run.mgr,
                                            run.log)
  cfg = config.stage1
  parallel.check_batch_size(cfg.batch_size, mesh, 'stage1')
  tx = steps.optimizer(cfg.learning_rate, cfg.weight_decay, cfg.steps)
  sample = jnp.asarray(dataset.train.images[:1])

  def init():
    rng = jax.random.key(config.seed)
    params = model.init(rng, sample, method=model_lib.FLIG.reconstruct)['params']['autoencoder']
    return steps.Stage1State(step=jnp.zeros((), jnp.int32), params=params,
                             opt_state=tx.init(params), rng=jax.random.fold_in(rng, 1),
                             nonfinite_step=jnp.full((), -1, jnp.int32))

  if latest is not None:
    state = checkpointing.restore(mgr, latest[0], 'state', _abstract(init, mesh))
    log.info(f'resuming stage 1 at step {int(state.step)}')
  else:
    state = parallel.jit_init(init, mesh)()

  def save(s):
    stage_step = int(s.step)
    meta = _base_meta(config, dataset, 1, stage_step)
    checkpointing.save(mgr, meta['step'], state=s, config=config, meta=meta)

  stream = data.BatchStream({'images': dataset.train.images}, cfg.batch_size, seed=config.seed,
                            process_index=jax.process_index(),
                            process_count=jax.process_count())
  step_fn = parallel.jit_step(
      functools.partial(steps.stage1_step, model=model, tx=tx, cfg=cfg), mesh, num_replicated=0)
  return Stage(1, state, step_fn, (), stream, cfg.steps, save)


def _features(model, ae_params, images: np.ndarray) -> np.ndarray:
  """Raw features E(x) of a split, computed once (the encoder is frozen in stage 2)."""
  encode, variables = _apply(model, model_lib.FLIG.features), {'params': {'autoencoder': ae_params}}
  return np.concatenate([np.asarray(encode(variables, images[i:i + 256]))
                         for i in range(0, len(images), 256)])


def _fixed_parts(run: Run, latest, ae_params):
  """The model's variables without a trained flow: frozen encoder, feature stats and adapter.

  Fresh (fitted on the training split only) after stage 1, or read from the stage-2 checkpoint
  when resuming (then with the step to resume from); also the raw training features E(x).
  """
  config, dataset, model, mesh, mgr = run.config, run.dataset, run.model, run.mesh, run.mgr
  if latest is not None:
    step, meta = latest
    variables = checkpointing.restore(
        mgr, step, 'model', checkpointing.with_sharding(
            model_lib.abstract_variables(config, meta), parallel.replicated(mesh)))
    features = _features(model, variables['params']['autoencoder'], dataset.train.images)
    return variables, step, features
  train = dataset.train
  adapter = adapter_lib.Adapter.fit(train.responses, config.model.feature_dim,
                                    config.model.adapter_components)
  features = _features(model, ae_params, train.images)
  mean, std = jax.jit(model_lib.feature_stats)(features)
  fixed = {'params': {'autoencoder': ae_params},
           'stats': {'feature_mean': mean, 'feature_std': std}, 'adapter': adapter.arrays()}
  return parallel.replicate(fixed, mesh), None, features


def prepare_stage2(run: Run, latest: tuple[int, dict] | None,
                   ae_params: Any) -> tuple[Stage, Callable[[Any], Any]]:
  """Stage 2 (flow and discriminator) after stage 1's `ae_params`, or restored from `latest`.

  Also returns `variables_of(state)`: the full FLIG variables for a stage-2 state.
  """
  config, dataset, model, mesh, mgr, log = (run.config, run.dataset, run.model, run.mesh, run.mgr,
                                            run.log)
  cfg = config.stage2
  parallel.check_batch_size(cfg.batch_size, mesh, 'stage2')
  fixed, resume_step, raw_features = _fixed_parts(run, latest, ae_params)
  ae_params = fixed['params']['autoencoder']
  adapter = adapter_lib.Adapter.from_dict(fixed['adapter'], dim=config.model.feature_dim)
  stats = fixed['stats']
  train = dataset.train
  arrays = {
      'features': np.asarray(_apply(model, model_lib.FLIG.standardise)(fixed, raw_features)),
      'adapted': np.asarray(jax.jit(lambda ad, r: ad.forward(r))(adapter, train.responses)),
      'images': train.images,
  }
  stream = data.BatchStream(arrays, cfg.batch_size, seed=config.seed + 1,
                            process_index=jax.process_index(),
                            process_count=jax.process_count())
  discriminator = disc_lib.Discriminator(config.model.disc_hidden)
  flow_tx = steps.optimizer(cfg.learning_rate, cfg.weight_decay, cfg.steps)
  disc_tx = steps.optimizer(cfg.disc_learning_rate, 0.0, cfg.steps)
  # ActNorm's data-dependent initialisation sees the first global batch (identical everywhere).
  init_images = jnp.asarray(data.BatchStream(arrays, cfg.batch_size, seed=config.seed + 1)
                            .batch(0)['images'])

  def init():
    k_flow, k_fwd, k_inv, k_state = jax.random.split(jax.random.key(config.seed + 2), 4)
    variables = model.init_variables(k_flow, init_images, adapter, stats['feature_mean'],
                                     stats['feature_std'], autoencoder_params=ae_params)
    flow_params = variables['params']['flow']
    probe = jnp.zeros((1, config.model.feature_dim))
    disc_params = {'forward': discriminator.init(k_fwd, probe)['params'],
                   'inverse': discriminator.init(k_inv, probe)['params']}
    return steps.Stage2State(
        step=jnp.zeros((), jnp.int32), flow_params=flow_params, disc_params=disc_params,
        flow_opt_state=flow_tx.init(flow_params), disc_opt_state=disc_tx.init(disc_params),
        rng=k_state, nonfinite_step=jnp.full((), -1, jnp.int32))

  if resume_step is not None:
    state = checkpointing.restore(mgr, resume_step, 'state', _abstract(init, mesh))
    log.info(f'resuming stage 2 at step {int(state.step)}')
  else:
    state = parallel.jit_init(init, mesh)()

  def variables_of(s):
    return {**fixed, 'params': {'autoencoder': ae_params, 'flow': s.flow_params}}

  def save(s):
    stage_step = int(s.step)
    variables = variables_of(s)
    meta = {**_base_meta(config, dataset, 2, stage_step),
            **model_lib.model_meta(variables, dataset.image_shape)}
    checkpointing.save(mgr, meta['step'], state=s, model=variables, config=config, meta=meta)

  frozen = parallel.replicate({'signal_mask': adapter.signal_mask, 'autoencoder': ae_params,
                               'stats': stats}, mesh)
  step_fn = parallel.jit_step(
      functools.partial(steps.stage2_step, model=model, discriminator=discriminator,
                        flow_tx=flow_tx, disc_tx=disc_tx, cfg=cfg), mesh, num_replicated=1)
  return Stage(2, state, step_fn, (frozen,), stream, cfg.steps, save), variables_of


def _figure_split(dataset):
  """Validation pairs when there are any, else training pairs: the test split stays unseen."""
  return (dataset.val, 'val') if len(dataset.val) else (dataset.train, 'train')


def _stage1_figure(run: Run, ae_params) -> None:
  if jax.process_index() != 0:
    return
  split, name = _figure_split(run.dataset)
  x = split.images[:run.config.num_figure_images]
  recon = _apply(run.model, model_lib.FLIG.reconstruct)({'params': {'autoencoder': ae_params}}, x)
  figures.reconstruction_grid(x, {f'G(E(x)) [{name}]': np.asarray(recon)},
                              str(run.workdir / 'stage1_reconstructions.png'), n=len(x))


def _stage2_figure(run: Run, variables) -> None:
  if jax.process_index() != 0:
    return
  split, name = _figure_split(run.dataset)
  x = split.images[:run.config.num_figure_images]
  r = split.responses[:run.config.num_figure_images]
  model = run.model
  recons = {'G(E(x))': _apply(model, model_lib.FLIG.reconstruct)(variables, x),
            f'decode(r) [{name}]': _apply(model, model_lib.FLIG.decode)(variables, r)}
  figures.reconstruction_grid(x, {k: np.asarray(v) for k, v in recons.items()},
                              str(run.workdir / 'stage2_decoding.png'), n=len(x))
