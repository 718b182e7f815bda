"""The stage-2 discriminator Dis (an MLP on R^D giving one logit per row) and its R1 gradient
penalty."""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flig_jax.nn import precision

Array = jax.Array


class Discriminator(nn.Module):
  """Dis: (N, D) -> logits (N,). `num_layers` Dense + leaky-ReLU layers of width `hidden`.

  Computes in `dtype` (None: that of the inputs and parameters); the logits come back in the dtype
  they would have without it, so its losses and R1 penalty stay float32.
  """
  hidden: int
  num_layers: int = 2
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out_dtype = precision.result_dtype(x, self.param_dtype)
    layer = {'dtype': self.dtype, 'param_dtype': self.param_dtype}
    for _ in range(self.num_layers):
      x = nn.leaky_relu(nn.Dense(self.hidden, **layer)(x), 0.2)
    return nn.Dense(1, **layer)(x)[..., 0].astype(out_dtype)


def r1_penalty(apply_fn: Callable[[Any, Array], Array], params: Any, x: Array) -> Array:
  """R1 gradient penalty: mean over rows of ||d logit / dx||^2.

  Args:
    apply_fn: (params, x) -> logits (N,), e.g. `Discriminator(...).apply` with `params` the
      variables dict.
    params: what `apply_fn` takes first.
    x: (N, D) inputs, usually the real samples.
  """
  grads = jax.grad(lambda inputs: jnp.sum(apply_fn(params, inputs)))(x)
  return jnp.mean(jnp.sum(grads.reshape(x.shape[0], -1) ** 2, axis=-1))
