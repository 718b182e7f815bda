"""flig_jax: FLIG, one invertible flow for neural encoding and decoding, in JAX/Flax.

Submodules are imported on use (`from flig_jax import model, data`), so importing the package is
cheap.
"""

import os

# JAX's default "partitionable" threefry PRNG takes seconds to compile per random op on the XLA
# CPU backend of jax 0.10 (about 8 s for one `jax.random.uniform`, against 0.4 s without it).
# Random draws are sharding-invariant either way. Takes effect only if JAX is not imported yet;
# set JAX_THREEFRY_PARTITIONABLE yourself to choose otherwise.
os.environ.setdefault('JAX_THREEFRY_PARTITIONABLE', '0')

__version__ = '0.1.0'
