"""flig_jax benchmarks: `python benchmarks/bench.py` (see bench.py)."""
