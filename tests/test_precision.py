"""Mixed precision (`config.model.dtype`): bfloat16 compute in the networks, float32 parameters,
optimiser state and outputs, and the flow's round trip and log-dets still exact in float32."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from flig_jax import config_checks
from flig_jax.nn import discriminator as disc_lib
from flig_jax.nn import flow, precision
from flig_jax.nn.autoencoder import Autoencoder
from flig_jax.nn.flig import FLIG
from flig_jax.training import steps, train_state

BF16 = jnp.bfloat16


@pytest.fixture(autouse=True)
def _fast_prng():
  """Threefry's partitionable mode compiles very slowly on small CPUs; these tests do not need it
  (scoped to each test, so no leak into other files)."""
  with jax.threefry_partitionable(False):
    yield


def _dtypes(tree) -> set[str]:
  return {str(x.dtype) for x in jax.tree.leaves(tree)}


def _computes_in_bf16(fn, *args) -> bool:
  """Whether the program of fn(*args) runs a convolution or matrix product on bfloat16 operands."""
  jaxpr = jax.make_jaxpr(fn)(*args)
  return any(eqn.primitive.name in ('conv_general_dilated', 'dot_general')
             and all(v.aval.dtype == BF16 for v in eqn.invars)
             for eqn in _equations(jaxpr.jaxpr))


def _equations(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _equations(sub)


def test_autoencoder_computes_in_bf16_with_float32_params_and_outputs():
  x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
  full = Autoencoder((28, 28, 1), feature_dim=6, widths=(4, 8))
  half = Autoencoder((28, 28, 1), feature_dim=6, widths=(4, 8), dtype=BF16)
  variables = half.init(jax.random.key(1), x)
  assert _dtypes(variables) == {'float32'}
  assert _dtypes(variables) == _dtypes(full.init(jax.random.key(1), x))
  h = half.apply(variables, x, method=Autoencoder.encode)
  y = half.apply(variables, x)
  assert h.dtype == jnp.float32 and y.dtype == jnp.float32
  assert _computes_in_bf16(lambda v, x: half.apply(v, x), variables, x)
  assert not _computes_in_bf16(lambda v, x: full.apply(v, x), variables, x)
  # Same parameters, bf16 compute: close to float32 (8 bits of mantissa), not equal.
  h_full = full.apply(variables, x, method=Autoencoder.encode)
  assert 0 < float(jnp.max(jnp.abs(h - h_full))) < 0.05 * float(jnp.max(jnp.abs(h_full)))


@pytest.mark.parametrize('coupling, augmented', [('affine', False), ('spline', False),
                                                 ('affine', True)])
def test_flow_round_trip_and_logdets_with_bf16_conditioners_are_as_exact_as_float32(
    coupling, augmented):
  """float32 outputs and parameters; the round trip and logdet_inv = -logdet_fwd hold as closely
  as with float32 conditioners (the same parameters): each coupling's inverse feeds y1 = x1 to
  the same bf16 conditioner as its forward pass."""
  d = 4
  x = 1.5 * jax.random.normal(jax.random.key(0), (8, d)) + 0.3
  errors = {}
  for dtype in (None, BF16):
    module = flow.Flow(d // 2 if augmented else d, num_blocks=2, hidden=16, coupling=coupling,
                       num_bins=4, spline_range=3.0, augmented=augmented, dtype=dtype)
    params = module.init(jax.random.key(1), x, method=flow.Flow.forward)
    assert _dtypes(params) == {'float32'}
    params = _perturbed(params, jax.random.key(2))
    y, ld_fwd = module.apply(params, x, method=flow.Flow.forward)
    x_back, ld_inv = module.apply(params, y, method=flow.Flow.inverse)
    assert y.dtype == ld_fwd.dtype == x_back.dtype == ld_inv.dtype == jnp.float32
    errors[dtype] = (float(jnp.max(jnp.abs(x_back - x))), float(jnp.max(jnp.abs(ld_inv + ld_fwd))))
  assert _computes_in_bf16(lambda p, x: module.apply(p, x, method=flow.Flow.forward), params, x)
  for bf16_error, f32_error in zip(errors[BF16], errors[None]):
    assert bf16_error <= f32_error + 2e-5, errors
  if coupling == 'affine':  # float32's own round trip is exact to a few ulps
    assert max(errors[BF16]) < 2e-5, errors


def _perturbed(params, key, scale=0.3):
  """Every parameter moved off its start, so the conditioners are not zero."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [p + scale * jax.random.normal(k, p.shape)
                                      for p, k in zip(leaves, keys)])


@pytest.mark.parametrize('transform', ['affine', 'spline'])
@pytest.mark.parametrize('swap', [False, True])
def test_bf16_coupling_logdet_is_its_jacobians_in_float32(transform, swap):
  """The conditioner's bf16 rounding only moves the off-diagonal block of the coupling's
  triangular Jacobian, so the log-det (from the same bf16 conditioner output as the transform)
  is the Jacobian's to float32 precision. (A whole flow's Jacobian cannot be the reference: its
  tangents pass through bf16 conditioners, whose rounding is not linear.)"""
  layer = flow.Coupling(16, transform, swap=swap, num_bins=4, spline_range=3.0, dtype=BF16)
  x = 1.5 * jax.random.normal(jax.random.key(0), (8, 4)) + 0.3
  params = _perturbed(layer.init(jax.random.key(1), x), jax.random.key(2))
  _, ld = layer.apply(params, x)
  jac = jax.vmap(jax.jacfwd(lambda e: layer.apply(params, e[None])[0][0]))(x)
  np.testing.assert_allclose(ld, jnp.linalg.slogdet(jac)[1], atol=2e-5)
  assert _computes_in_bf16(layer.apply, params, x)


def test_discriminator_bf16_gives_float32_logits_and_r1_penalty():
  disc = disc_lib.Discriminator(16, dtype=BF16)
  x = jax.random.normal(jax.random.key(0), (5, 4))
  variables = disc.init(jax.random.key(1), x)
  assert _dtypes(variables) == {'float32'}
  logits = disc.apply(variables, x)
  assert logits.shape == (5,) and logits.dtype == jnp.float32
  assert disc_lib.r1_penalty(disc.apply, variables, x).dtype == jnp.float32
  assert _computes_in_bf16(disc.apply, variables, x)


def test_stage1_step_in_bf16_keeps_params_optimiser_state_and_loss_float32():
  config = default.smoke(default.get_config())
  config.model.dtype = 'bfloat16'
  module = FLIG.from_config(config.model, (16, 16, 1))
  assert module.dtype == BF16
  images = jax.random.uniform(jax.random.key(0), (4, 16, 16, 1))
  config.stage1.learning_rate, config.stage1.weight_decay, config.stage1.steps = 1e-3, 0.0, 10
  state = train_state.create_stage1_state(jax.random.key(1), config, module, images)
  params = state.params
  step = jax.jit(lambda s, b: steps.stage1_step(s, b, model=module, cfg=config.stage1))
  new, _ = step(state, {'images': images})  # the warm-up's first learning rate is 0
  new, metrics = step(new, {'images': images})
  assert _dtypes(new.params) == {'float32'}
  assert _dtypes(new.opt_state) <= {'float32', 'int32'}
  assert {str(v.dtype) for v in metrics.values()} == {'float32'}
  assert not jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new.params, params))


def test_config_accepts_only_float32_and_bfloat16():
  assert tuple(precision.DTYPES) == ('float32', 'bfloat16')
  config = default.get_config()
  assert config.model.dtype == 'float32'
  for name in precision.DTYPES:
    config.model.dtype = name
    assert config_checks.faults(config) == []
  for bad in ('float16', 'bf16', 'float64'):
    config.model.dtype = bad
    assert config_checks.faults(config) == [
        f"config.model.dtype = {bad!r}: must be one of 'float32', 'bfloat16'"]
  with pytest.raises(ValueError, match="unknown model.dtype 'float16'"):
    precision.compute_dtype('float16')


def test_a_saved_config_without_dtype_builds_a_float32_model():
  config = default.get_config()
  del config.model['dtype']
  assert FLIG.from_config(config.model, (8, 8, 1)).dtype == jnp.float32
