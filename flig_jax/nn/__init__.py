"""FLIG's networks: the FLIG module itself (`flig`), the autoencoder (E, G), the flow f, the neural
adapter A and the discriminator. Import the submodules directly, e.g.
`from flig_jax.nn import flow`."""
