"""Copies flig_jax's (Flax) parameters into the torch port's modules, so both sides can start from
the same weights. Parameter trees are nested dicts of numpy-convertible arrays, as
`jax.device_get(params)` returns them."""

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.torch_port import nets


def _tensor(x: Any) -> torch.Tensor:
  return torch.from_numpy(np.array(x, dtype=np.float32))


def _dense(layer: nn.Linear, p: Mapping[str, Any]) -> None:
  layer.weight.copy_(_tensor(p['kernel']).T)  # Flax (in, out) -> torch (out, in)
  layer.bias.copy_(_tensor(p['bias']))


def _conv(layer: nn.Conv2d, p: Mapping[str, Any]) -> None:
  layer.weight.copy_(_tensor(p['kernel']).permute(3, 2, 0, 1))  # HWIO -> OIHW
  layer.bias.copy_(_tensor(p['bias']))


def _mlp(seq: nn.Sequential, p: Mapping[str, Any]) -> None:
  linears = [m for m in seq if isinstance(m, nn.Linear)]
  for i, layer in enumerate(linears):
    _dense(layer, p[f'Dense_{i}'])


@torch.no_grad()
def load_autoencoder(ae: nets.Autoencoder, params: Mapping[str, Any]) -> None:
  """`params`: the autoencoder's tree ({'encoder': ..., 'decoder': ...})."""
  enc, dec = params['encoder'], params['decoder']
  for i, (down, same) in enumerate(zip(ae.encoder.down, ae.encoder.same)):
    _conv(down, enc[f'Conv_{2 * i}'])
    _conv(same, enc[f'Conv_{2 * i + 1}'])
  _dense(ae.encoder.fc, enc['Dense_0'])
  _dense(ae.decoder.fc, dec['Dense_0'])
  for i, (up, same) in enumerate(zip(ae.decoder.up, ae.decoder.same)):
    _conv(up, dec[f'Conv_{2 * i}'])
    _conv(same, dec[f'Conv_{2 * i + 1}'])
  _conv(ae.decoder.out, dec[f'Conv_{2 * len(ae.decoder.up)}'])


@torch.no_grad()
def load_flow(flow: nets.Flow, params: Mapping[str, Any]) -> None:
  """`params`: the flow's tree (plain: actnorm_k, linear_k, coupling_k; augmented: enc_coupling,
  linear_pair, dec_coupling)."""
  if flow.augmented:
    _mlp(flow.enc_coupling.net, params['enc_coupling']['MLP_0'])
    _mlp(flow.dec_coupling.net, params['dec_coupling']['MLP_0'])
    for name, value in params['linear_pair'].items():
      getattr(flow.linear_pair, name).copy_(_tensor(value))
    return
  for k, (actnorm, linear, coupling) in enumerate(flow.blocks):
    actnorm.shift.copy_(_tensor(params[f'actnorm_{k}']['shift']))
    actnorm.log_scale.copy_(_tensor(params[f'actnorm_{k}']['log_scale']))
    linear.lu.copy_(_tensor(params[f'linear_{k}']['lu']))
    _mlp(coupling.net, params[f'coupling_{k}']['MLP_0'])


@torch.no_grad()
def load_discriminator(disc: nets.Discriminator, params: Mapping[str, Any]) -> None:
  """`params`: one discriminator's tree (Dense_0, Dense_1, Dense_2)."""
  _mlp(disc.net, params)
