"""The convolution layer of every model: nn.Conv's parameters, faster gradients on CPU.

`Conv` keeps nn.Conv's parameter layout (`kernel` [k, k, in, out], optional `bias` [out])
and torch's symmetric padding (k // 2 on every side), so torchvision weights convert 1:1.
On XLA:CPU both of nn.Conv's kernel-gradient lowerings are slow for large maps:
  k = 1  `ops.conv.conv1x1`, a channel matmul instead of a window convolution (about 6x
         faster kernel gradient at 128x128x256);
  k > 1  `ops.conv.conv2d`, whose kernel gradient is summed over cache-sized row chunks
         on CPU (about 4.8x at 200x200x256 for 3x3); maps smaller than the kernel take
         `ops.conv.tap_matmul` (about 6x faster at 2x2x512, forward).
Forward values are those of nn.Conv.
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskrcnn_jax.ops import conv as conv_ops

Dtype = Any

# torchvision's ResNet init (kaiming_normal_, fan_out, relu).
KAIMING_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Conv(nn.Module):
  """k x k conv (k odd) with stride and padding k // 2.

  x: [B, H, W, Cin] -> [B, (H - 1) // stride + 1, (W - 1) // stride + 1, features] in
  `dtype`; parameters are float32.
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  kernel_init: Callable[..., jax.Array] = KAIMING_OUT

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32).astype(self.dtype)
    x = x.astype(self.dtype)
    if k == 1:
      y = conv_ops.conv1x1(x[:, ::self.stride, ::self.stride], kernel[0, 0])
    elif min(x.shape[1:3]) < k:  # A map smaller than the kernel (ops.conv.tap_matmul).
      y = conv_ops.tap_matmul(x, kernel, self.stride)
    else:
      y = conv_ops.conv2d(x, kernel, self.stride)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(
          self.dtype)
    return y
