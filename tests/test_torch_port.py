"""The PyTorch port of benchmarks/torch_port computes flig_jax's two training steps: from the same
weights, on the same batches and random draws, its stage-1 and stage-2 losses equal flig_jax's step
after step (so the optimisers and schedules agree too), for both flow types."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='torch is not installed (pip install -e ".[torch]")')

from benchmarks.torch_port import nets, weights
from benchmarks.torch_port import steps as port
from configs import default
from flig_jax.nn.adapter import Adapter
from flig_jax.nn.flig import FLIG, Frozen
from flig_jax.training import augment, losses, steps, train_state

IMAGE_SHAPE = (28, 28, 1)  # digit69's images; 28 -> 14 -> 7 exercises the uneven 'SAME' padding
D, UNITS, N = 8, 5, 16  # UNITS < D: the adapter pads D - k coordinates
STEPS = 6  # the whole schedule: a one-step warm-up, then the cosine decay to its end


@pytest.fixture(autouse=True)
def _float32_matmuls():
  with jax.default_matmul_precision('highest'):
    yield


def _config(flow_type: str):
  config = default.smoke(default.get_config())
  config.model.feature_dim, config.model.flow_type = D, flow_type
  config.model.flow_dropout = 0.0  # the two sides' masks would differ
  config.stage1.augment, config.stage1.steps = False, STEPS
  config.stage2.steps, config.stage2.mixup, config.stage2.response_noise = STEPS, 0.4, 0.1
  config.stage1.learning_rate = config.stage2.learning_rate = 1e-2  # updates that show
  config.stage1.weight_decay = config.stage2.weight_decay = 0.5
  return config


def _close(jax_terms: dict, torch_terms: dict, step: int) -> None:
  for name, value in torch_terms.items():
    np.testing.assert_allclose(float(value), float(jax_terms[name]), rtol=2e-4, atol=2e-6,
                               err_msg=f'{name} at step {step}')


def _images(seed: int) -> np.ndarray:
  """Smooth random images in [0, 1], (N, 28, 28, 1)."""
  rng = np.random.default_rng(seed)
  coarse = rng.standard_normal((N, 7, 7, 1))
  return (1.0 / (1.0 + np.exp(-2.0 * coarse.repeat(4, 1).repeat(4, 2)))).astype(np.float32)


def _perturbed(params, key, scale=0.2):
  """`params` plus noise: every coupling and the linear pair act (they start at zero), and the
  decoder's logits are far from zero, where a wrong weight layout would hide."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
      treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def test_stage1_losses_equal_flig_jax():
  config = _config('augmented')
  module = FLIG.from_config(config.model, IMAGE_SHAPE)
  state = train_state.create_stage1_state(jax.random.key(0), config, module,
                                          jnp.zeros((2, *IMAGE_SHAPE)))
  params = _perturbed(state.params, jax.random.key(6), scale=0.1)
  state = state.replace(params=params, opt_state=state.tx.init(params))
  step_fn = jax.jit(functools.partial(steps.stage1_step, model=module, cfg=config.stage1))

  ae = nets.Autoencoder(IMAGE_SHAPE, D, tuple(config.model.cae_widths))
  weights.load_autoencoder(ae, jax.device_get(params))
  images = _images(99)
  logits = module.apply({'params': {'autoencoder': params}}, jnp.asarray(images),
                        method=lambda m, x: m.autoencoder.reconstruct_logits(x))
  with torch.no_grad():
    np.testing.assert_allclose(ae.reconstruct_logits(torch.from_numpy(images)).numpy(),
                               np.asarray(logits), rtol=1e-4, atol=1e-5)
  trainer = port.Stage1(ae, config.stage1)
  for step in range(STEPS):
    images = _images(step)
    state, jax_terms = step_fn(state, {'images': jnp.asarray(images)})
    _close(jax_terms, trainer.step(torch.from_numpy(images)), step)


def _draws(state: train_state.Stage2State, n: int, alpha: float) -> port.Draws:
  """The random numbers `steps.stage2_step` draws at `state.step`, drawn the same way."""
  rng, mix_rng, feature_rng = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
  k_perm, k_lam = jax.random.split(mix_rng)
  as_torch = lambda x: torch.from_numpy(np.array(x))
  return port.Draws(perm=as_torch(jax.random.permutation(k_perm, n)).long(),
                    lam=as_torch(augment.symmetric_beta(k_lam, alpha, (n,))),
                    noise=as_torch(jax.random.normal(rng, (n, D))),
                    feature_noise=as_torch(jax.random.normal(feature_rng, (n, D))))


@pytest.mark.parametrize('flow_type', ['augmented', 'plain'])
def test_stage2_losses_equal_flig_jax(flow_type):
  config = _config(flow_type)
  cfg = config.stage2
  module = FLIG.from_config(config.model, IMAGE_SHAPE)
  rng = np.random.default_rng(0)
  responses = rng.standard_normal((N, UNITS)).astype(np.float32)
  adapter = Adapter.fit(responses, D, 0)
  autoencoder = module.init_autoencoder(jax.random.key(0), jnp.zeros((2, *IMAGE_SHAPE)))
  raw = jnp.asarray(rng.standard_normal((N, D)), jnp.float32)
  frozen = Frozen.fit(autoencoder, raw, adapter)
  features = jnp.asarray(rng.standard_normal((N, D)), jnp.float32)
  adapted = adapter.forward(jnp.asarray(responses))  # zero on the padding

  state = train_state.create_stage2_state(jax.random.key(1), config, module, frozen,
                                          {'features': features}, val_size=2)
  flow_params = _perturbed(state.flow_params, jax.random.key(2))
  state = state.replace(flow_params=flow_params, flow_opt_state=state.flow_tx.init(flow_params))
  disc_params = state.disc_params
  step_fn = jax.jit(functools.partial(steps.stage2_step, model=module, cfg=cfg))

  scale = module.apply(frozen.variables(flow_params), method=FLIG.decoder_input_scale)
  flow = nets.Flow(D, config.model.flow_blocks, config.model.flow_hidden,
                   augmented=flow_type == 'augmented',
                   decoder_input_scale=None if scale is None else torch.from_numpy(np.array(scale)))
  weights.load_flow(flow, jax.device_get(flow_params))
  disc = nets.Discriminator(D, config.model.disc_hidden)
  weights.load_discriminator(disc, jax.device_get(disc_params['forward']))
  trainer = port.Stage2(flow, disc, torch.from_numpy(np.array(frozen.signal_mask)), cfg,
                        forward_weight=torch.from_numpy(np.array(losses.forward_weight(frozen,
                                                                                     cfg))))
  batch = {'features': features, 'adapted': adapted}
  for step in range(STEPS):
    draws = _draws(state, N, cfg.mixup)
    state, jax_terms = step_fn(state, batch)
    torch_terms = trainer.step(torch.from_numpy(np.array(features)),
                               torch.from_numpy(np.array(adapted)), draws)
    _close(jax_terms, torch_terms, step)
  # The linear maps of the augmented flow's start stay where they were, on both sides.
  if flow_type == 'augmented':
    np.testing.assert_array_equal(flow.linear_pair.enc_kernel.detach().numpy(),
                                  np.array(flow_params['linear_pair']['enc_kernel']))
