"""The run-time breakdown: parts never overlap and add up to the wall time, compiles are moved to
their own part, and a training run writes its breakdown to metrics.jsonl and prints it."""

import json
import time

import jax
import jax.numpy as jnp
import pytest
from conftest import train

from flig_jax.training import metrics_file, timing


def _busy(seconds: float) -> None:
  end = time.perf_counter() + seconds
  while time.perf_counter() < end:
    pass


def test_nested_sections_pause_the_outer_one_and_the_parts_add_up():
  start = time.perf_counter()
  _busy(0.02)
  with timing.Breakdown(start) as timer:
    with timer.section('stage1'):
      _busy(0.05)
      with timer.section('checkpoints'):
        _busy(0.1)
      _busy(0.05)
    _busy(0.03)  # in no section
  wall = time.perf_counter() - start
  seconds = timer.seconds()
  assert seconds['total'] == pytest.approx(wall, abs=0.01)
  assert sum(v for k, v in seconds.items() if k != 'total') == pytest.approx(seconds['total'])
  assert seconds['checkpoints'] == pytest.approx(0.1, abs=0.02)
  assert seconds['stage1'] == pytest.approx(0.1, abs=0.02)   # not 0.2: the inner part is apart
  assert seconds['startup'] >= 0.02  # and entering the breakdown
  assert seconds['other'] == pytest.approx(0.03, abs=0.015)
  assert list(seconds) == [k for k in timing.PARTS if k in seconds] + ['total']
  assert timer.seconds() == seconds  # frozen once stopped


def test_compiles_move_from_their_section_to_compile_and_a_cached_call_has_none():
  x = jnp.arange(1000.0)
  # A function no test compiled before (its body depends on the time), so it compiles here.
  salt = time.time_ns() % 1000
  fn = jax.jit(lambda v: jnp.sort(jnp.cos(v * salt)) + salt)
  with timing.Breakdown() as timer, timer.section('validation'):
    jax.block_until_ready(fn(x))
  seconds = timer.seconds()
  assert seconds['compile'] > 0.0
  assert sum(v for k, v in seconds.items() if k != 'total') == pytest.approx(seconds['total'])
  with timing.Breakdown() as again, again.section('validation'):
    jax.block_until_ready(fn(x))  # compiled already
  assert 'compile' not in again.seconds() and again.seconds()['validation'] > 0.0


def test_unknown_part_is_refused_and_the_summary_names_parts_by_label():
  timer = timing.Breakdown()
  with pytest.raises(ValueError, match="unknown timing part 'stage3'"), timer.section('stage3'):
    pass
  with timer.section('figures'):
    _busy(0.01)
  timer.stop()
  line = timer.summary()
  assert line.startswith(f"time {timer.seconds()['total']:.1f} s: ") and 'figures' in line


@pytest.mark.slow
def test_a_training_run_writes_and_prints_its_breakdown(tmp_path):
  started = time.perf_counter()
  proc = train(tmp_path / 'run')
  wall = time.perf_counter() - started
  rows = [json.loads(line) for line in (tmp_path / 'run' / metrics_file.NAME).read_text()
          .splitlines()]
  timed = [row for row in rows if 'time_s' in row]
  assert len(timed) == 1 and timed[0] is rows[-1]
  seconds = timed[0]['time_s']
  total = seconds.pop('total')
  assert sum(seconds.values()) == pytest.approx(total, rel=1e-3)
  # The breakdown runs from train.py's first line to the end of training: most of the process.
  assert 0.6 * wall < total < wall
  for part in ('startup', 'data', 'compile', 'stage1', 'stage2', 'fits', 'validation',
               'checkpoints', 'figures'):
    assert seconds.get(part, 0.0) > 0.0, (part, seconds)
  assert seconds.get('other', 0.0) < 0.1 * total, seconds
  assert f'time {total:.1f} s: ' in proc.stdout
