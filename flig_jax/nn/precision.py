"""The compute precision of the networks (`config.model.dtype`), the way Flax modules take it.

Each network module has `dtype` (the compute dtype of its convolutions and dense layers; None:
that of its inputs and parameters, Flax's default) and `param_dtype` (float32: the parameters, and
so the optimiser state, stay float32 whatever the compute dtype). A network's outputs come back in
the dtype it would give without a compute dtype (`result_dtype`), so losses, log-determinants,
closed-form fits and metrics are computed in float32 as before.
"""

from typing import Any

import jax
import jax.numpy as jnp

# config.model.dtype -> the networks' compute dtype.
DTYPES: dict[str, Any] = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str) -> Any:
  """The compute dtype of `config.model.dtype` (a key of DTYPES).

  Raises:
    ValueError: an unknown name.
  """
  if name not in DTYPES:
    raise ValueError(f'unknown model.dtype {name!r}; use one of {", ".join(DTYPES)}')
  return DTYPES[name]


def result_dtype(x: jax.Array, param_dtype: Any) -> Any:
  """The dtype a layer gives for input `x` and parameters of `param_dtype` with no compute dtype:
  float32 for float32 (or integer) inputs, float64 for float64 ones."""
  return jnp.promote_types(jnp.result_type(x), param_dtype)
