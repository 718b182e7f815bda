"""A PyTorch port of flig_jax's networks and two training steps, the yardstick of
`benchmarks/vs_torch.py`.

`nets` holds the modules, `steps` the losses, optimisers and the stage-1 and stage-2 updates,
`weights` loads flig_jax's parameters into the modules. `tests/test_torch_port.py` checks that on
the same weights, batches and random draws the port's losses equal flig_jax's, step after step.
torch is the optional extra `torch` (`pip install -e ".[torch]"`); the `flig_jax` package never
imports it.
"""
