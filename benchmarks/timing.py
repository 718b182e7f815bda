"""Timing helpers of the benchmarks: compile time, steady-state medians, the machine's matmul
FLOP/s, XLA's FLOP count of a compiled program and the peak host memory of this process."""

import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def compile_timed(jitted: Any, *args: Any) -> tuple[Any, float]:
  """Lowers and compiles `jitted` for `args`; returns the compiled program and the seconds taken."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def flops(compiled: Any) -> float:
  """The FLOP count XLA's cost analysis gives a compiled program (0.0 when it gives none)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', 0.0))


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
  """Median wall time of `repeats` calls of `fn`, each waited on with `jax.block_until_ready`."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_flops_per_second(n: int = 2048, repeats: int = 7) -> float:
  """This machine's f32 matmul rate: 2 n^3 / median time of a jitted (n, n) @ (n, n)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, b))
  return 2.0 * n ** 3 / median_seconds(lambda: dot(a, b), repeats)


def peak_host_memory_mib() -> float:
  """Peak resident memory of this process so far (ru_maxrss), in MiB."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / 2 ** 20 if sys.platform == 'darwin' else peak / 2 ** 10  # bytes on macOS, KiB else
