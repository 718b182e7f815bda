"""The networks of flig_jax in PyTorch: the autoencoder (E, G), the flow's layers (ActNorm, LU
linear, affine coupling, the augmented flow's LinearPair), the flow and the discriminator.

Each module computes what its namesake in `flig_jax/nn/` computes, on the same parameter layout
up to the usual transposes (`weights.load_flax` copies Flax parameters in). Images stay NHWC at
the module boundary, as in flig_jax; convolutions run NCHW inside, and flattening and
depth-to-space use Flax's (H, W, C) order so no weight needs a permutation.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

AFFINE_SCALE_BOUND = 2.0  # log-scales of the affine coupling lie in (-2, 2), as in flig_jax
ACTNORM_EPS = 1e-6


def gelu(x: torch.Tensor) -> torch.Tensor:
  """flax.linen.gelu: the tanh approximation."""
  return F.gelu(x, approximate='tanh')


def lecun_normal_(weight: torch.Tensor, fan_in: int) -> torch.Tensor:
  """Flax's default kernel initialiser: a normal truncated at 2 sd, variance 1 / fan_in."""
  std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # the truncation's variance correction
  return nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)


def dense(fan_in: int, fan_out: int, zero: bool = False) -> nn.Linear:
  """nn.Dense: LeCun-normal kernel (or zeros), zero bias."""
  layer = nn.Linear(fan_in, fan_out)
  if zero:
    nn.init.zeros_(layer.weight)
  else:
    lecun_normal_(layer.weight, fan_in)
  nn.init.zeros_(layer.bias)
  return layer


def conv3x3(fan_in: int, fan_out: int, stride: int = 1) -> nn.Conv2d:
  """nn.Conv(fan_out, (3, 3)), padded by the caller ('SAME' needs uneven padding at stride 2)."""
  layer = nn.Conv2d(fan_in, fan_out, 3, stride=stride, padding=0)
  lecun_normal_(layer.weight, 9 * fan_in)
  nn.init.zeros_(layer.bias)
  return layer


def same_padding(size: int, stride: int) -> tuple[int, int]:
  """XLA's 'SAME' padding (before, after) of a 3-wide window along an axis of `size`."""
  total = max((-(-size // stride) - 1) * stride + 3 - size, 0)
  return total // 2, total - total // 2


def flatten_hwc(x: torch.Tensor) -> torch.Tensor:
  """(N, C, H, W) -> (N, H * W * C) in Flax's order."""
  return x.permute(0, 2, 3, 1).flatten(1)


def depth_to_space(x: torch.Tensor, features: int) -> torch.Tensor:
  """(N, 4F, H, W) -> (N, F, 2H, 2W), channel (dy * 2 + dx) * F + c to pixel (2y + dy, 2x + dx),
  as `flig_jax.nn.autoencoder._upsample` reshapes."""
  n, _, h, w = x.shape
  x = x.view(n, 2, 2, features, h, w).permute(0, 3, 4, 1, 5, 2)
  return x.reshape(n, features, 2 * h, 2 * w)


class Encoder(nn.Module):
  """E: (N, H, W, C) -> (N, D). Per width a stride-2 3x3 conv and a 3x3 conv, GELU after each;
  then a dense layer to D."""

  def __init__(self, image_shape: tuple[int, int, int], feature_dim: int,
               widths: tuple[int, ...]):
    super().__init__()
    height, width, channels = image_shape
    self.down, self.same, self.pads = nn.ModuleList(), nn.ModuleList(), []
    for w in widths:
      (top, bottom), (left, right) = same_padding(height, 2), same_padding(width, 2)
      self.pads.append((left, right, top, bottom))
      self.down.append(conv3x3(channels, w, stride=2))
      self.same.append(conv3x3(w, w))
      height, width, channels = -(-height // 2), -(-width // 2), w
    self.fc = dense(height * width * channels, feature_dim)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = images.permute(0, 3, 1, 2)
    for pad, down, same in zip(self.pads, self.down, self.same):
      x = gelu(down(F.pad(x, pad)))
      x = gelu(same(F.pad(x, (1, 1, 1, 1))))
    return self.fc(flatten_hwc(x))


class Decoder(nn.Module):
  """G before its sigmoid: (N, D) -> logits (N, H, W, C). A dense layer to a coarse grid, one
  sub-pixel (x2) upsampling stage per width in reverse, a 3x3 conv to C, a crop to (H, W)."""

  def __init__(self, image_shape: tuple[int, int, int], feature_dim: int,
               widths: tuple[int, ...]):
    super().__init__()
    self.height, self.width, channels = image_shape
    factor = 2 ** len(widths)
    self.grid = (-(-self.height // factor), -(-self.width // factor), widths[-1])
    self.fc = dense(feature_dim, math.prod(self.grid))
    self.up, self.same, self.features = nn.ModuleList(), nn.ModuleList(), []
    fan_in = widths[-1]
    for w in reversed(widths):
      self.up.append(conv3x3(fan_in, 4 * w))
      self.same.append(conv3x3(w, w))
      self.features.append(w)
      fan_in = w
    self.out = conv3x3(fan_in, channels)

  def forward(self, h: torch.Tensor) -> torch.Tensor:
    x = gelu(self.fc(h)).view(h.shape[0], *self.grid).permute(0, 3, 1, 2)
    for up, same, w in zip(self.up, self.same, self.features):
      x = gelu(depth_to_space(up(F.pad(x, (1, 1, 1, 1))), w))
      x = gelu(same(F.pad(x, (1, 1, 1, 1))))
    x = self.out(F.pad(x, (1, 1, 1, 1)))
    return x[:, :, :self.height, :self.width].permute(0, 2, 3, 1)


class Autoencoder(nn.Module):
  """The CAE of stage 1."""

  def __init__(self, image_shape: tuple[int, int, int], feature_dim: int,
               widths: tuple[int, ...]):
    super().__init__()
    self.encoder = Encoder(image_shape, feature_dim, widths)
    self.decoder = Decoder(image_shape, feature_dim, widths)

  def reconstruct_logits(self, images: torch.Tensor) -> torch.Tensor:
    """G(E(x)) before the sigmoid, (N, H, W, C)."""
    return self.decoder(self.encoder(images))


class ActNorm(nn.Module):
  """y = x exp(log_scale) + shift, log-det sum(log_scale); `data_init` sets the parameters so a
  batch comes out with zero mean and unit variance per coordinate."""

  def __init__(self, size: int):
    super().__init__()
    self.shift = nn.Parameter(torch.zeros(size))
    self.log_scale = nn.Parameter(torch.zeros(size))

  @torch.no_grad()
  def data_init(self, x: torch.Tensor) -> None:
    if x.shape[0] >= 2:
      self.log_scale.copy_(-torch.log(x.std(0, unbiased=False) + ACTNORM_EPS))
      self.shift.copy_(-x.mean(0) * self.log_scale.exp())

  def forward(self, x: torch.Tensor, inverse: bool = False):
    logdet = self.log_scale.sum().expand(x.shape[:-1])
    if inverse:
      return (x - self.shift) * torch.exp(-self.log_scale), -logdet
    return x * torch.exp(self.log_scale) + self.shift, logdet


class LULinear(nn.Module):
  """y = L U x with one packed (D, D) parameter `lu`: L's strictly lower part, U's strictly upper
  part, and log(diag U) on the diagonal. Starts at a random rotation, as flig_jax's does."""

  def __init__(self, size: int):
    super().__init__()
    q, _ = torch.linalg.qr(torch.randn(size, size))
    _, lower, upper = torch.linalg.lu(q)
    diag = torch.diagonal(upper)
    upper = upper * torch.sign(diag)[None, :]
    packed = torch.tril(lower, -1) + torch.triu(upper, 1) + torch.diag(torch.log(diag.abs()))
    self.lu = nn.Parameter(packed)

  def forward(self, x: torch.Tensor, inverse: bool = False):
    eye = torch.eye(self.lu.shape[0], dtype=x.dtype, device=x.device)
    lower = torch.tril(self.lu, -1) + eye
    upper = torch.triu(self.lu, 1) + torch.diag(torch.exp(torch.diagonal(self.lu)))
    logdet = torch.diagonal(self.lu).sum().expand(x.shape[:-1])
    if inverse:  # x = U^-1 L^-1 y, as rows: solve t L^T = y, then x U^T = t
      t = torch.linalg.solve_triangular(lower.T, x, upper=True, left=False, unitriangular=True)
      return torch.linalg.solve_triangular(upper.T, t, upper=False, left=False), -logdet
    return x @ upper.T @ lower.T, logdet


class Coupling(nn.Module):
  """Affine split coupling: one half conditions y2 = x2 exp(s) + t of the other, with (t, raw s)
  from an MLP (two GELU layers, a zero-initialised output) and s = 2 tanh(raw / 2). The first
  D // 2 coordinates condition the rest, or, with `swap`, are the ones transformed. The MLP
  reads the conditioning half times `input_scale` when one is given, and drops hidden units at
  rate `dropout` in training mode."""

  def __init__(self, size: int, hidden: int, swap: bool = False,
               input_scale: torch.Tensor | None = None, dropout: float = 0.0):
    super().__init__()
    self.split, self.swap, self.input_scale = size // 2, swap, input_scale
    self.transformed = self.split if swap else size - self.split
    drop = [nn.Dropout(dropout)] if dropout else []
    self.net = nn.Sequential(dense(size - self.transformed, hidden), nn.GELU('tanh'), *drop,
                             dense(hidden, hidden), nn.GELU('tanh'), *drop,
                             dense(hidden, 2 * self.transformed, zero=True))

  def forward(self, x: torch.Tensor, inverse: bool = False):
    first, second = x[..., :self.split], x[..., self.split:]
    cond, moved = (second, first) if self.swap else (first, second)
    read = cond if self.input_scale is None else cond * self.input_scale
    params = self.net(read).view(*cond.shape[:-1], self.transformed, 2)
    shift = params[..., 0]
    log_scale = AFFINE_SCALE_BOUND * torch.tanh(params[..., 1] / AFFINE_SCALE_BOUND)
    if inverse:
      moved, logdet = (moved - shift) * torch.exp(-log_scale), -log_scale.sum(-1)
    else:
      moved, logdet = moved * torch.exp(log_scale) + shift, log_scale.sum(-1)
    return torch.cat((moved, cond) if self.swap else (cond, moved), dim=-1), logdet


class LinearPair(nn.Module):
  """The augmented flow's linear encoder and decoder as one bijection on [h, e] <-> [a, e_a]:
  a = h W_enc + b_enc + exp(s_enc) e and e_a = exp(s_dec) (h - a W_dec - b_dec); log-det
  sum(s_enc) + sum(s_dec). Parameters start at zero, as in flig_jax (the closed-form start is
  written into them from ridge fits)."""

  def __init__(self, size: int):
    super().__init__()
    self.enc_kernel = nn.Parameter(torch.zeros(size, size))
    self.enc_bias = nn.Parameter(torch.zeros(size))
    self.enc_log_scale = nn.Parameter(torch.zeros(size))
    self.dec_kernel = nn.Parameter(torch.zeros(size, size))
    self.dec_bias = nn.Parameter(torch.zeros(size))
    self.dec_log_scale = nn.Parameter(torch.zeros(size))

  def fitted(self) -> list[nn.Parameter]:
    """The two linear maps, which stage 2 keeps fixed (only the noise scales train)."""
    return [self.enc_kernel, self.enc_bias, self.dec_kernel, self.dec_bias]

  def forward(self, x: torch.Tensor, inverse: bool = False):
    d = self.enc_bias.shape[0]
    first, second = x[..., :d], x[..., d:]
    logdet = (self.enc_log_scale.sum() + self.dec_log_scale.sum()).expand(x.shape[:-1])
    if inverse:
      a, e_a = first, second
      h = torch.exp(-self.dec_log_scale) * e_a + a @ self.dec_kernel + self.dec_bias
      e = torch.exp(-self.enc_log_scale) * (a - h @ self.enc_kernel - self.enc_bias)
      return torch.cat([h, e], dim=-1), -logdet
    h, e = first, second
    a = h @ self.enc_kernel + self.enc_bias + torch.exp(self.enc_log_scale) * e
    e_a = torch.exp(self.dec_log_scale) * (h - a @ self.dec_kernel - self.dec_bias)
    return torch.cat([a, e_a], dim=-1), logdet


class Flow(nn.Module):
  """f. Plain: `blocks` x (ActNorm, LU linear, coupling) on R^D, the couplings alternating halves.
  Augmented: encoder coupling, LinearPair, decoder coupling on R^2D; `decoder_input_scale` (D,)
  multiplies what the decoder coupling's MLP reads (flig_jax's `FLIG.decoder_input_scale`);
  `dropout` is the conditioners' (`model.flow_dropout`). Affine couplings only."""

  def __init__(self, feature_dim: int, blocks: int, hidden: int, augmented: bool,
               decoder_input_scale: torch.Tensor | None = None, dropout: float = 0.0):
    super().__init__()
    self.feature_dim, self.augmented = feature_dim, augmented
    if augmented:
      self.enc_coupling = Coupling(2 * feature_dim, hidden, dropout=dropout)
      self.linear_pair = LinearPair(feature_dim)
      self.dec_coupling = Coupling(2 * feature_dim, hidden, input_scale=decoder_input_scale,
                                   dropout=dropout)
      self.layers = [self.enc_coupling, self.linear_pair, self.dec_coupling]
    else:
      self.blocks = nn.ModuleList(
          nn.ModuleList([ActNorm(feature_dim), LULinear(feature_dim),
                         Coupling(feature_dim, hidden, swap=bool(k % 2), dropout=dropout)])
          for k in range(blocks))
      self.layers = [layer for block in self.blocks for layer in block]

  @torch.no_grad()
  def data_init(self, h: torch.Tensor) -> None:
    """Sets every ActNorm from standardised features h (N, D), as flig_jax's init does."""
    h = self.augment(h)
    for layer in self.layers:
      if isinstance(layer, ActNorm):
        layer.data_init(h)
      h = layer(h)[0]

  def augment(self, v: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """[v, noise] (zeros when None) for the augmented flow; v itself for the plain one."""
    if not self.augmented:
      return v
    return torch.cat([v, torch.zeros_like(v) if noise is None else noise], dim=-1)

  def forward(self, x: torch.Tensor):
    """f(x) and log|det df/dx| per row."""
    logdet = x.new_zeros(x.shape[:-1])
    for layer in self.layers:
      x, ld = layer(x)
      logdet = logdet + ld
    return x, logdet

  def inverse(self, y: torch.Tensor):
    """f^-1(y) and log|det df^-1/dy| per row."""
    logdet = y.new_zeros(y.shape[:-1])
    for layer in reversed(self.layers):
      y, ld = layer(y, inverse=True)
      logdet = logdet + ld
    return y, logdet

  def encode(self, h: torch.Tensor) -> torch.Tensor:
    """f([h, 0]) on the response side (plain: f(h))."""
    return self.forward(self.augment(h))[0][..., :self.feature_dim]

  def decode(self, a: torch.Tensor) -> torch.Tensor:
    """f^-1([a, 0]) on the feature side (plain: f^-1(a))."""
    return self.inverse(self.augment(a))[0][..., :self.feature_dim]


class Discriminator(nn.Module):
  """Dis: (N, D) -> logits (N,); two dense + leaky-ReLU(0.2) layers of width `hidden`."""

  def __init__(self, size: int, hidden: int):
    super().__init__()
    self.net = nn.Sequential(dense(size, hidden), nn.LeakyReLU(0.2), dense(hidden, hidden),
                             nn.LeakyReLU(0.2), dense(hidden, 1))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.net(x)[..., 0]
