"""The package's one memoised `jax.jit` of a Linen module's `apply`.

Inference code (the `Model` methods, the training figures, the MLP baselines) calls
`apply(module, 'method')(variables, x)`; the compiled function is made once per (module, method),
where modules compare by their fields, so every module of one architecture shares it.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax


@functools.lru_cache(maxsize=128)
def apply(module: nn.Module, method: str = '__call__') -> Callable[..., Any]:
  """`jax.jit(lambda variables, *args: module.apply(variables, *args, method=method))`, memoised.

  Args:
    module: an unbound Linen module (hashable by its fields).
    method: the name of the module's method to run.
  """
  fn = getattr(type(module), method)
  return jax.jit(lambda variables, *args: module.apply(variables, *args, method=fn))
