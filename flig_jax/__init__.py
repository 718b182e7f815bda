"""flig_jax: FLIG, one invertible flow for neural encoding and decoding, in JAX/Flax.

Submodules are imported on use (`from flig_jax import model, data`), so importing the package is
cheap.
"""

__version__ = '0.1.0'
