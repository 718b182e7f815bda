"""Each jitted training step compiles once per run, across many steps and batches, and donates its
state; `Model.decode` compiles once per batch-size bucket, not once per batch size."""

import contextlib
import dataclasses

import chex
import jax
import numpy as np
import pytest

from configs import synthetic
from flig_jax import model as model_lib
from flig_jax.training import context, loop, parallel, steps

# Fired once per program lowered to MLIR: every compilation, whether XLA then builds it or loads it
# from the persistent compilation cache.
_LOWERING_EVENT = '/jax/core/compile/jaxpr_to_mlir_module_duration'


@contextlib.contextmanager
def count_compilations():
  """Yields a list that grows by one entry, the program's name ('jit_stage2_step'), for each
  program jax compiles inside the block."""
  events = []

  def listener(event, duration, **kwargs):
    del duration
    if event == _LOWERING_EVENT:
      events.append(kwargs.get('fun_name', ''))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture(scope='module')
def ctx(tmp_path_factory):
  config = synthetic.get_config('smoke')
  config.data.num_train, config.data.num_test, config.data.image_size = 40, 8, 16
  config.stage1.augment = False  # its warp adds compile time, not shapes
  config.model.flow_hidden = 12  # an architecture no other test compiles (Model's jit memo)
  c = context.make_context(config, tmp_path_factory.mktemp('compile_once'))
  yield c
  c.mgr.wait_until_finished()
  c.log.close()


def _run_steps(stage, mesh, first: int, count: int):
  state = stage.state
  for step in range(first, first + count):
    old = state
    state, metrics = stage.step_fn(state, parallel.global_batch(stage.stream.batch(step), mesh))
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old)), 'state was not donated'
  jax.block_until_ready(metrics)
  return state


def _check_stage_compiles_once(stage, mesh):
  state = _run_steps(stage, mesh, 0, 1)
  assert stage.step_fn._cache_size() == 1  # pylint: disable=protected-access
  with count_compilations() as compiled:
    # 7 more steps: past an epoch of the 36 training rows at batch 8; every batch differs.
    state = _run_steps(dataclasses.replace(stage, state=state), mesh, 1, 7)
  assert compiled == [], f'{len(compiled)} compilation(s) after the first step'
  assert stage.step_fn._cache_size() == 1  # pylint: disable=protected-access
  assert int(state.step) == 8
  return state


def test_listener_counts_compilations():
  with count_compilations() as compiled:
    jax.jit(lambda x: x * 3 + 1)(np.arange(7.0))
  assert len(compiled) == 1


def test_training_steps_compile_once(ctx, monkeypatch):
  # Each step function may be traced once per program: a second trace (a retrace) fails the test
  # at once. Stage 2's step is traced twice: in the cross-validation folds' stacked step, then
  # alone.
  for name, n in (('stage1_step', 1), ('stage2_step', 2)):
    monkeypatch.setattr(steps, name, chex.assert_max_traces(getattr(steps, name), n=n))
  state1 = _check_stage_compiles_once(loop.stage1(ctx, loop.restore_or_init(ctx)), ctx.mesh)
  _check_stage_compiles_once(loop.stage2(ctx, state1), ctx.mesh)


def test_stage2_programs_compiled_ahead_are_the_ones_stage2_runs(ctx, monkeypatch):
  # train.py compiles stage 2's programs (the cross-validation folds' stacked step and predictions,
  # their initial states and stacking, then the step and its initial state) from abstract shapes
  # while stage 1 trains;
  # stage 2 must then find them in the jitted functions' caches: a second trace fails at once, a
  # second lowering below.
  monkeypatch.setattr(steps, 'stage2_step', chex.assert_max_traces(steps.stage2_step, n=2))
  programs = loop.Stage2Programs(ctx)
  programs.compile_ahead()
  programs.wait()
  assert programs.ahead.errors == {}
  with count_compilations() as compiled:
    stage = loop.stage2(ctx, loop.restore_or_init(ctx), programs=programs)
    _run_steps(stage, ctx.mesh, 0, 2)
  assert compiled, 'stage 2 compiled nothing at all (its set-up programs are new here)'
  ahead = ('stage2_step', 'folds_step', 'predictions_over_folds', '_init_stage2', 'jit_stack')
  again = [name for name in compiled if any(a in name for a in ahead)]
  assert again == [], f'compiled again in stage 2: {again}'
  for program in (programs.step_fn, programs.folds_step, programs.folds_predict, programs.stack):
    assert program._cache_size() == 1  # pylint: disable=protected-access
  # The folds' initial states (the flow alone) and the final run's (with the pixel paths).
  assert ctx.config.model.pixel_path
  assert programs.init._cache_size() == 2  # pylint: disable=protected-access


def test_stage1_step_compiled_ahead_is_the_one_stage1_runs(ctx, monkeypatch):
  # train.py compiles stage 1's step from abstract shapes while the fresh state is created; the
  # first steps must then find it in the jitted function's cache.
  monkeypatch.setattr(steps, 'stage1_step', chex.assert_max_traces(steps.stage1_step, n=1))
  step_fn = loop.stage1_step_fn(ctx)
  compile_ahead = loop.compile_stage1_ahead(ctx, step_fn)
  state = loop.restore_or_init(ctx)
  compile_ahead.wait()
  assert compile_ahead.errors == {}
  with count_compilations() as compiled:
    _run_steps(loop.stage1(ctx, state, step_fn), ctx.mesh, 0, 2)
  assert not [name for name in compiled if 'stage1_step' in name], compiled
  assert step_fn._cache_size() == 1  # pylint: disable=protected-access


def test_model_decode_compiles_once_per_bucket(ctx):
  stage2 = loop.stage2(ctx, loop.restore_or_init(ctx))
  variables = stage2.state.model_variables()
  m = model_lib.Model(ctx.config, variables,
                      model_lib.model_meta(variables, ctx.dataset.image_shape), chunk=64)
  rng = np.random.default_rng(0)
  responses = lambda n: rng.standard_normal((n, m.num_units)).astype(np.float32)
  with count_compilations() as compiled:
    out = m.decode(responses(5))
  assert out.shape == (5,) + m.image_shape
  assert len(compiled) >= 1  # the first decode compiles (this architecture is new)
  first = len(compiled)
  with count_compilations() as compiled:
    for n in (6, 7, 8, 5):  # the same bucket of 8 rows
      assert m.decode(responses(n)).shape == (n,) + m.image_shape
  assert compiled == [], 'decode recompiled within one batch-size bucket'
  with count_compilations() as compiled:
    for n in (1, 2, 3, 9, 17, 33, 64, 65, 200, 1000):
      m.decode(responses(n))
  # Buckets are the powers of two up to the chunk (1, 2, 4, ..., 64): six besides the 8 above.
  assert len(compiled) <= 6 * first, f'{len(compiled)} compilations for 6 new buckets'
