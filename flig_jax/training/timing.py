"""Where a training run's wall time goes: named parts that never overlap, so they add up to it.

  timer = timing.Breakdown()            # or Breakdown(start) with a time.perf_counter() taken
  with timer:                           # earlier, e.g. on a script's first line
    with timing.section('data'):        # the active breakdown's section (a no-op without one)
      ...
    with timing.section('stage1'):
      ...
      with timing.section('checkpoints'):  # an inner section pauses the outer one
        ...
  timer.seconds()   # {'startup': ..., 'data': ..., 'compile': ..., ..., 'other': ..., 'total': ...}

Time spent compiling in the main thread (JAX's trace, lowering and XLA compile or persistent-cache
load, read from `jax.monitoring`) is moved from the section it happened in to 'compile'. Time in
no section is 'other'; the time from `start` until the `Breakdown` is entered is 'startup'.
"""

import contextlib
import threading
import time
from collections.abc import Iterator

# The parts, in the order they are reported, with their labels.
PARTS = {
    'startup': 'imports and start-up',
    'data': 'data',
    'setup': 'state set-up',
    'compile': 'compiles or cache loads',
    'stage1': 'stage-1 steps',
    'stage2': 'stage-2 steps',
    'fits': 'fits',
    'validation': 'validations',
    'selection': 'model selection',
    'checkpoints': 'checkpoints',
    'figures': 'figures',
    'other': 'other',
}

# jax.monitoring events whose spans are compile work (trace, lowering, XLA compile or cache load).
COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                  '/jax/core/compile/jaxpr_to_mlir_module_duration',
                  '/jax/core/compile/backend_compile_duration')


_active: 'Breakdown | None' = None


def active() -> 'Breakdown | None':
  """The breakdown being recorded (entered and not stopped), or None."""
  return _active


def section(name: str) -> contextlib.AbstractContextManager:
  """`active().section(name)`, or a block that records nothing when no breakdown is active."""
  return contextlib.nullcontext() if _active is None else _active.section(name)


def _union_length(spans: list[tuple[float, float]]) -> float:
  """Total length of a set of intervals, overlaps counted once (compiles nest in traces)."""
  total, end = 0.0, float('-inf')
  for a, b in sorted(spans):
    if b > end:
      total += b - max(a, end)
      end = b
  return total


class Breakdown:
  """Wall time split into named, non-overlapping parts (see the module docstring).

  Args:
    start: a `time.perf_counter()` value from the start of the process (default: now); the time
      from it until the breakdown is entered counts as 'startup'.
  """

  def __init__(self, start: float | None = None):
    self._start = time.perf_counter() if start is None else start
    self._parts: dict[str, float] = {}
    self._stack: list[list] = []      # [name, perf_counter when it last resumed]
    self._compiles: dict[str, list[tuple[float, float]]] = {}
    self._thread = threading.get_ident()
    self._end: float | None = None
    self._listening = False

  def __enter__(self):
    """Starts listening for compiles and makes this the `active()` breakdown."""
    global _active
    import jax  # pylint: disable=g-import-not-at-top
    jax.monitoring.register_event_time_span_listener(self._on_span)
    self._listening = True
    _active = self
    self._add('startup', time.perf_counter() - self._start)
    return self

  def __exit__(self, *exc) -> None:
    self.stop()

  def stop(self) -> None:
    """Ends the breakdown: stops listening for compiles and freezes the total."""
    global _active
    if _active is self:
      _active = None
    if self._listening:
      import jax  # pylint: disable=g-import-not-at-top
      jax.monitoring.unregister_event_time_span_listener(self._on_span)
      self._listening = False
    if self._end is None:
      self._end = time.perf_counter()

  def _on_span(self, event: str, start_time: float, end_time: float, **_) -> None:
    if (event in COMPILE_EVENTS and self._end is None
        and threading.get_ident() == self._thread):
      where = self._stack[-1][0] if self._stack else 'other'
      self._compiles.setdefault(where, []).append((start_time, end_time))

  @contextlib.contextmanager
  def section(self, name: str) -> Iterator[None]:
    """Counts the time inside the block as `name` (a key of PARTS), pausing any outer section."""
    if name not in PARTS:
      raise ValueError(f'unknown timing part {name!r}; use one of {", ".join(PARTS)}')
    now = time.perf_counter()
    if self._stack:
      outer = self._stack[-1]
      self._add(outer[0], now - outer[1])
    self._stack.append([name, now])
    try:
      yield
    finally:
      now = time.perf_counter()
      inner = self._stack.pop()
      self._add(inner[0], now - inner[1])
      if self._stack:
        self._stack[-1][1] = now

  def _add(self, name: str, seconds: float) -> None:
    self._parts[name] = self._parts.get(name, 0.0) + seconds

  def seconds(self) -> dict[str, float]:
    """Seconds per part that took any (PARTS order), 'other' for time in no section, and 'total',
    the wall time since `start` (to `stop`, or to now while running). The parts sum to 'total'."""
    parts = dict(self._parts)
    end = self._end if self._end is not None else time.perf_counter()
    total = end - self._start
    parts['other'] = max(0.0, total - sum(parts.values()))
    for name, spans in self._compiles.items():
      spent = min(_union_length(spans), parts.get(name, 0.0))
      parts[name] = parts.get(name, 0.0) - spent
      parts['compile'] = parts.get('compile', 0.0) + spent
    out = {name: parts[name] for name in PARTS if parts.get(name, 0.0) > 0.0}
    out['total'] = total
    return out

  def summary(self) -> str:
    """One line for the user, e.g. 'time 41.2 s: stage-1 steps 29.0, compiles ... 5.2, ...'."""
    seconds = self.seconds()
    total = seconds.pop('total')
    shown = sorted(seconds.items(), key=lambda item: -item[1])
    return f'time {total:.1f} s: ' + ', '.join(f'{PARTS[k]} {v:.1f}' for k, v in shown)
