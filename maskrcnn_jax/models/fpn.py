"""Feature pyramid network (Lin et al. 2017) as torchvision's FeaturePyramidNetwork.

Module paths (torchvision names in brackets): `lateral{2..5}` [inner_blocks.{0..3}.0],
1x1 convs on C2..C5; `output{2..5}` [layer_blocks.{0..3}.0], 3x3 convs giving P2..P5.
P6, for the RPN only, subsamples P5 by 2 (torchvision's LastLevelMaxPool: kernel 1, stride 2).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskrcnn_jax.models import layers

Dtype = Any

# torchvision's init: kaiming_uniform_(a=1), zero bias.
_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def upsample_nearest(x: jax.Array, height: int, width: int) -> jax.Array:
  """x: [B, h, w, C] -> [B, height, width, C], nearest, for h = ceil(height / 2) etc.

  Repeating by 2 then slicing equals torch's `F.interpolate(size=..., mode="nearest")`
  (source index floor(i * h / height) = floor(i / 2) when h = ceil(height / 2)).
  """
  if x.shape[1] != -(-height // 2) or x.shape[2] != -(-width // 2):
    raise ValueError(f"cannot upsample {x.shape[1:3]} to {(height, width)} by 2")
  x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return x[:, :height, :width]


class FPN(nn.Module):
  """Top-down pyramid with lateral connections.

  Attributes:
    channels: output channels of every level.
    dtype: compute dtype; parameters stay float32.
  """
  channels: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
    """features: C2..C5, C_l [B, H_l, W_l, *] -> (P2, .., P6), P_l [B, H_l, W_l, channels]."""
    if len(features) != 4:
      raise ValueError(f"FPN takes C2..C5 (4 maps), got {len(features)}")
    conv = lambda kernel, name: layers.Conv(self.channels, kernel, use_bias=True,
                                            dtype=self.dtype, kernel_init=_INIT, name=name)
    levels = range(2, 6)
    laterals = [conv(1, f"lateral{l}")(c) for l, c in zip(levels, features)]
    outputs = [conv(3, "output5")(laterals[-1])]
    top = laterals[-1]
    for l in (4, 3, 2):
      lateral = laterals[l - 2]
      top = lateral + upsample_nearest(top, lateral.shape[1], lateral.shape[2])
      outputs.insert(0, conv(3, f"output{l}")(top))
    return (*outputs, outputs[-1][:, ::2, ::2])
