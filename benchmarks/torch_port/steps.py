"""flig_jax's two training steps in PyTorch: the losses, the optimisers and one update of each
stage, mirroring `flig_jax/training/losses.py` and `flig_jax/training/steps.py`.

What is ported: stage 1's pixel cross-entropy; stage 2's local terms both ways, likelihood,
non-saturating adversary, the discriminator with its R1 penalty, mixup with Beta(alpha, alpha)
weights drawn through the same inverse-CDF table, the padding and response noise; AdamW with
gradients clipped at global norm 1 and the warm-up + cosine schedule; the augmented flow's fixed
linear maps. Not ported (the benchmarked configs leave them off): stage 1's augmentation and SSIM
term, stage 2's pixel term and inverse adversary, spline couplings.

`mode='compiled'` wraps each loss in `torch.compile`; the optimiser updates run eagerly.
"""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.special
import torch
import torch.nn.functional as F

from benchmarks.torch_port import nets

LOG_2PI = math.log(2.0 * math.pi)
BETA_TABLE_SIZE = 4097  # as flig_jax.training.augment
MODES = ('eager', 'compiled')


def warmup_cosine(step: int, peak: float, total: int) -> float:
  """The learning rate of update `step` (from 0): a linear warm-up from 0 over
  max(1, min(100, total // 10)) updates, then a cosine decay to 5% of `peak` at `total`, as
  `optax.warmup_cosine_decay_schedule` in `flig_jax.training.train_state.optimizer`."""
  warmup, end = max(1, min(100, total // 10)), 0.05 * peak
  if step < warmup:
    return peak * step / warmup
  span = max(total, 2) - warmup
  t = min(step - warmup, span) / span
  return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * t))


class Optimizer:
  """AdamW (b1 0.9, b2 0.999, eps 1e-8, decoupled weight decay) on gradients clipped at global
  norm 1, with the `warmup_cosine` schedule: `optax.chain(clip_by_global_norm(1), adamw(...))`."""

  def __init__(self, params: list[torch.nn.Parameter], learning_rate: float, weight_decay: float,
               steps: int):
    self.params = [p for p in params if p.requires_grad]
    self.schedule = functools.partial(warmup_cosine, peak=learning_rate, total=steps)
    self.adamw = torch.optim.AdamW(self.params, lr=0.0, betas=(0.9, 0.999), eps=1e-8,
                                   weight_decay=weight_decay, foreach=True)
    self.count = 0

  def update(self, grads: list[torch.Tensor]) -> None:
    """Applies one update from `grads` (one per trainable parameter, in order)."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.where(norm < 1.0, torch.ones_like(norm), 1.0 / norm)
    for p, g in zip(self.params, grads):
      p.grad = g * scale
    for group in self.adamw.param_groups:
      group['lr'] = self.schedule(self.count)
    self.adamw.step()
    self.count += 1


def _bce(logits: torch.Tensor, label: float) -> torch.Tensor:
  """Mean logistic loss of `logits` against one label (1: real, 0: generated)."""
  return F.softplus(-logits).mean() if label else F.softplus(logits).mean()


def stage1_loss(autoencoder: nets.Autoencoder, images: torch.Tensor) -> dict[str, torch.Tensor]:
  """Pixel cross-entropy of G(E(images)) against the images (NHWC, [0, 1]); the MSE beside it."""
  logits = autoencoder.reconstruct_logits(images)
  loss = F.binary_cross_entropy_with_logits(logits, images)
  return {'loss': loss, 'bce': loss, 'mse': (torch.sigmoid(logits) - images).square().mean()}


class Stage1:
  """The autoencoder's training step: `step(images)` applies one update and returns its losses."""

  def __init__(self, autoencoder: nets.Autoencoder, cfg: Any, mode: str = 'eager'):
    if cfg.ssim_weight:
      raise ValueError('torch_port: stage 1 has no SSIM term (set stage1.ssim_weight = 0)')
    self.autoencoder = autoencoder
    self.optimizer = Optimizer(list(autoencoder.parameters()), cfg.learning_rate,
                               cfg.weight_decay, cfg.steps)
    self.loss = _compiled(stage1_loss, mode)

  def step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
    terms = self.loss(self.autoencoder, images)
    grads = torch.autograd.grad(terms['loss'], self.optimizer.params)
    self.optimizer.update(list(grads))
    return {k: v.detach() for k, v in terms.items()}


@dataclasses.dataclass
class Draws:
  """The random numbers of one stage-2 step: the mixup partner and weight of each pair, the noise
  added to the adapted responses and the augmented flow's feature noise e_h."""
  perm: torch.Tensor           # (N,) int64
  lam: torch.Tensor            # (N,) in [0, 1]
  noise: torch.Tensor          # (N, D) N(0, 1), scaled by the step
  feature_noise: torch.Tensor  # (N, D) N(0, 1)


@functools.lru_cache(maxsize=8)
def beta_quantiles(alpha: float) -> torch.Tensor:
  """Beta(alpha, alpha)'s quantile function on a uniform grid of [0, 1] (float32)."""
  u = np.linspace(0.0, 1.0, BETA_TABLE_SIZE)
  return torch.from_numpy(scipy.special.betaincinv(alpha, alpha, u).astype(np.float32))


def symmetric_beta(alpha: float, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
  """n draws from Beta(alpha, alpha): a uniform, then linear interpolation in `beta_quantiles`."""
  table = beta_quantiles(float(alpha))
  pos = torch.rand(n, generator=generator) * (BETA_TABLE_SIZE - 1)
  lo = pos.floor().long().clamp(0, BETA_TABLE_SIZE - 2)
  frac = pos - lo
  return table[lo] * (1.0 - frac) + table[lo + 1] * frac


def flow_terms(flow: nets.Flow, h: torch.Tensor, a_padded: torch.Tensor,
               feature_noise: torch.Tensor) -> dict[str, torch.Tensor]:
  """`losses.flow_terms`: the encoder's point prediction, a sample f([h, e_h]) with its log-det,
  and the decoder's prediction f^-1([a + noise, 0])."""
  y, logdet = flow(flow.augment(h, feature_noise))
  sample = y[..., :flow.feature_dim]
  encoded = flow.encode(h) if flow.augmented else sample
  return {'encoded': encoded, 'sample': sample, 'y': y, 'logdet': logdet,
          'h_back': flow.decode(a_padded)}


def flow_loss(flow: nets.Flow, discriminator: nets.Discriminator, h: torch.Tensor,
              a: torch.Tensor, a_padded: torch.Tensor, feature_noise: torch.Tensor,
              weight: torch.Tensor, cfg: Any) -> dict[str, torch.Tensor]:
  """`losses.flow_loss` without the pixel and inverse-adversary terms; `weight` is the local
  forward term's weight per coordinate (`losses.forward_weight`, summing to k)."""
  out = flow_terms(flow, h, a_padded, feature_noise)
  y, size = out['y'], out['y'].shape[-1]
  local_fwd = (weight * (out['encoded'] - a).square()).sum(-1).mean() / weight.sum()
  local_inv = (out['h_back'] - h).square().mean()
  nll = (0.5 * y.square().sum(-1) + 0.5 * size * LOG_2PI - out['logdet']).mean() / size
  adv = _bce(discriminator(out['sample']), 1.0)
  loss = (cfg.local_forward * local_fwd + cfg.local_inverse * local_inv + cfg.likelihood * nll
          + cfg.adversarial * adv)
  return {'loss': loss, 'local_fwd': local_fwd, 'local_inv': local_inv, 'nll': nll, 'adv': adv}


def discriminator_loss(discriminator: nets.Discriminator, real: torch.Tensor, fake: torch.Tensor,
                       gradient_penalty: float) -> dict[str, torch.Tensor]:
  """Logistic loss of real against generated rows plus `gradient_penalty` times R1, the mean over
  rows of the squared gradient of the logit at the real rows."""
  real = real.detach().requires_grad_(True)
  real_logits = discriminator(real)
  (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
  loss = _bce(real_logits, 1.0) + _bce(discriminator(fake.detach()), 0.0)
  penalty = grad.square().sum(-1).mean()
  return {'loss': loss + gradient_penalty * penalty, 'disc_forward': loss}


class Stage2:
  """The flow's training step: `step(features, adapted)` updates the discriminator once on the
  batch with the flow held fixed, then the flow once against the updated discriminator.

  Args:
    flow: the flow; for the augmented flow its LinearPair's linear maps are held fixed.
    discriminator: the forward discriminator (adapted responses against f(h)).
    signal_mask: (D,) 1 on the adapter's signal coordinates, 0 on its padding.
    cfg: config.stage2 (or any object with its fields).
    mode: 'eager' or 'compiled'.
    forward_weight: (D,) the local forward term's weight per coordinate
      (`flig_jax.training.losses.forward_weight`); default `signal_mask`.
  """

  def __init__(self, flow: nets.Flow, discriminator: nets.Discriminator,
               signal_mask: torch.Tensor, cfg: Any, mode: str = 'eager',
               forward_weight: torch.Tensor | None = None):
    if cfg.pixel or cfg.adversarial_inverse:
      raise ValueError('torch_port: stage 2 has no pixel or inverse-adversary term (set '
                       'stage2.pixel = stage2.adversarial_inverse = 0)')
    self.flow, self.discriminator, self.cfg = flow, discriminator, cfg
    self.mask = signal_mask.float()
    self.forward_weight = self.mask if forward_weight is None else forward_weight.float()
    groups = [list(flow.parameters())]
    decays = [cfg.weight_decay]
    if flow.augmented:
      # As `train_state.flow_optimizer`: the fitted maps fixed, the couplings with their own
      # decay, each group clipped and updated on its own.
      for p in flow.linear_pair.fitted():
        p.requires_grad_(False)
      couplings = {id(p) for c in (flow.enc_coupling, flow.dec_coupling) for p in c.parameters()}
      groups = [[p for p in groups[0] if id(p) not in couplings],
                [p for p in groups[0] if id(p) in couplings]]
      decays = [cfg.weight_decay, getattr(cfg, 'coupling_weight_decay', cfg.weight_decay)]
    self.flow_optimizers = [Optimizer(g, cfg.learning_rate, wd, cfg.steps)
                            for g, wd in zip(groups, decays)]
    self.disc_optimizer = Optimizer(list(discriminator.parameters()), cfg.disc_learning_rate,
                                    0.0, cfg.steps)
    self.flow_loss = _compiled(flow_loss, mode)
    self.disc_loss = _compiled(discriminator_loss, mode)

  def draw(self, n: int, generator: torch.Generator | None = None) -> Draws:
    """Fresh random numbers for a batch of n pairs."""
    d = self.flow.feature_dim
    lam = (symmetric_beta(self.cfg.mixup, n, generator) if self.cfg.mixup
           else torch.ones(n))
    return Draws(perm=torch.randperm(n, generator=generator), lam=lam,
                 noise=torch.randn(n, d, generator=generator),
                 feature_noise=torch.randn(n, d, generator=generator))

  def step(self, features: torch.Tensor, adapted: torch.Tensor,
           draws: Draws | None = None) -> dict[str, torch.Tensor]:
    """One update of both networks on a batch of standardised features and adapted responses;
    `draws` fixes the step's random numbers (default: fresh ones)."""
    cfg, mask = self.cfg, self.mask
    d = draws or self.draw(features.shape[0])
    if cfg.mixup:
      w = d.lam[:, None]
      features = w * features + (1.0 - w) * features[d.perm]
      adapted = w * adapted + (1.0 - w) * adapted[d.perm]
    a_padded = adapted + d.noise * (1.0 - mask + cfg.response_noise * mask)

    with torch.no_grad():
      sample = flow_terms(self.flow, features, a_padded, d.feature_noise)['sample']
    disc = self.disc_loss(self.discriminator, a_padded, sample, cfg.gradient_penalty)
    self.disc_optimizer.update(
        list(torch.autograd.grad(disc['loss'], self.disc_optimizer.params)))

    terms = self.flow_loss(self.flow, self.discriminator, features, adapted, a_padded,
                           d.feature_noise, self.forward_weight, cfg)
    params = [p for opt in self.flow_optimizers for p in opt.params]
    grads = list(torch.autograd.grad(terms['loss'], params))
    for opt in self.flow_optimizers:
      opt.update(grads[:len(opt.params)])
      grads = grads[len(opt.params):]
    terms['disc_forward'] = disc['disc_forward']
    return {k: v.detach() for k, v in terms.items()}


def _compiled(fn: Callable[..., Any], mode: str) -> Callable[..., Any]:
  if mode not in MODES:
    raise ValueError(f'torch_port: unknown mode {mode!r}; choose from {MODES}')
  return torch.compile(fn) if mode == 'compiled' else fn
