"""ResNet backbones with frozen BatchNorm, laid out like torchvision's so weights convert 1:1.

Images are NHWC. Module paths (torchvision names in brackets):

  stem/{conv1, bn1}                                  [conv1, bn1]
  res{2..5}/block{i}/{conv1, bn1, conv2, bn2}        [layer{1..4}.{i}.*]
  res{2..5}/block{i}/{conv3, bn3}                    bottleneck blocks only
  res{2..5}/block0/{downsample_conv, downsample_bn}  [layer{1..4}.0.downsample.{0, 1}]

Conv kernels are `[kh, kw, in, out]` (torch: `[out, in, kh, kw]`) with torch's symmetric
padding. A FrozenBatchNorm keeps `scale`, `bias`, `mean`, `var` (torch: `weight`, `bias`,
`running_mean`, `running_var`) in the `frozen_bn` collection, outside `params`.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskrcnn_jax.models import layers

Dtype = Any


class FrozenBatchNorm(nn.Module):
  """Per-channel affine with fixed statistics, as torchvision's FrozenBatchNorm2d.

  x: [..., C] -> [..., C] in `dtype`; the statistics stay float32.
  """
  eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (x.shape[-1],)
    scale = self.variable("frozen_bn", "scale", jnp.ones, shape, jnp.float32).value
    bias = self.variable("frozen_bn", "bias", jnp.zeros, shape, jnp.float32).value
    mean = self.variable("frozen_bn", "mean", jnp.zeros, shape, jnp.float32).value
    var = self.variable("frozen_bn", "var", jnp.ones, shape, jnp.float32).value
    # At least float32 (bfloat16 computes in float32), float64 for float64.
    scale, bias, mean, var = (v.astype(jnp.promote_types(self.dtype, jnp.float32))
                              for v in (scale, bias, mean, var))
    mult = scale * jax.lax.rsqrt(var + self.eps)
    shift = bias - mean * mult
    return x * mult.astype(self.dtype) + shift.astype(self.dtype)


def _conv(features: int, kernel: int, stride: int, name: str, dtype: Dtype) -> nn.Module:
  """Bias-free conv with torch's symmetric padding (kernel // 2 on every side)."""
  return layers.Conv(features, kernel, stride, dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34). x: [B, H, W, Cin] -> [B, H/stride, W/stride, features]."""
  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    bn = functools.partial(FrozenBatchNorm, dtype=self.dtype)
    y = nn.relu(bn(name="bn1")(_conv(self.features, 3, self.stride, "conv1", self.dtype)(x)))
    y = bn(name="bn2")(_conv(self.features, 3, 1, "conv2", self.dtype)(y))
    return nn.relu(y + _shortcut(x, self.features, self.stride, self.dtype))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 x4 (ResNet-50/101/152).

  The 3x3 conv strides (torchvision's "ResNet v1.5"), or with `stride_in_1x1` the first
  1x1 conv (the MSRA / Caffe2 ResNets of detectron2, STRIDE_IN_1X1).
  x: [B, H, W, Cin] -> [B, H/stride, W/stride, 4 * features].
  """
  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  stride_in_1x1: bool = False
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    bn = functools.partial(FrozenBatchNorm, dtype=self.dtype)
    s1, s3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
    y = nn.relu(bn(name="bn1")(_conv(self.features, 1, s1, "conv1", self.dtype)(x)))
    y = nn.relu(bn(name="bn2")(_conv(self.features, 3, s3, "conv2", self.dtype)(y)))
    out = self.features * self.expansion
    y = bn(name="bn3")(_conv(out, 1, 1, "conv3", self.dtype)(y))
    return nn.relu(y + _shortcut(x, out, self.stride, self.dtype))


def _shortcut(x: jax.Array, features: int, stride: int, dtype: Dtype) -> jax.Array:
  """Identity, or a strided 1x1 conv + BN where the shape changes (torchvision's downsample)."""
  if stride == 1 and x.shape[-1] == features:
    return x
  y = _conv(features, 1, stride, "downsample_conv", dtype)(x)
  return FrozenBatchNorm(dtype=dtype, name="downsample_bn")(y)


class Stem(nn.Module):
  """7x7/2 conv, BN, ReLU, 3x3/2 max-pool. x: [B, H, W, 3] -> [B, H/4, W/4, 64]."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _conv(64, 7, 2, "conv1", self.dtype)(x)
    x = nn.relu(FrozenBatchNorm(dtype=self.dtype, name="bn1")(x))
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def _block_boundary(x: jax.Array) -> jax.Array:
  """x, unchanged, as a fusion boundary for XLA:CPU (other backends: x itself).

  XLA:CPU fuses each block's residual add + ReLU into the next block's, so block k of a
  stage recomputes the whole residual chain of blocks 0..k (R101 res4: 23 blocks, about
  0.3 s of a 800² forward pass, and as much again in the backward pass). A conditional is
  a boundary fusion does not cross. Both branches return x's value (-(-x) is exact, NaN
  included) and the predicate is a traced value, so XLA keeps it; its gradient is a
  conditional as well.
  """
  def barrier(x):
    keep = jnp.isfinite(x[(0,) * x.ndim])
    return jax.lax.cond(keep, lambda v: v, lambda v: -(-v), x)
  return jax.lax.platform_dependent(x, cpu=barrier, default=lambda v: v)


class Stage(nn.Module):
  """`num_blocks` residual blocks; the first one strides. [B, H, W, C] -> [B, H/s, W/s, C']."""
  block: Any
  num_blocks: int
  features: int
  stride: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_blocks):
      x = _block_boundary(self.block(self.features, self.stride if i == 0 else 1,
                                     dtype=self.dtype, name=f"block{i}")(x))
    return x


# depth -> (block, blocks per stage res2..res5)
SPECS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def out_channels(depth: int) -> tuple[int, ...]:
  """Channels of C2..C5 for a ResNet `depth`."""
  block, _ = _spec(depth)
  return tuple(64 * 2**i * block.expansion for i in range(4))


def _spec(depth: int):
  if depth not in SPECS:
    raise ValueError(f"ResNet depth must be one of {sorted(SPECS)}, got {depth}")
  return SPECS[depth]


class ResNet(nn.Module):
  """ResNet trunk returning C2..C5 (strides 4, 8, 16, 32).

  Attributes:
    depth: 18, 34, 50, 101 or 152.
    freeze_at: 0 trains everything; 1 freezes the stem; N >= 2 the stem and res2..resN.
      Frozen parts sit behind a stop_gradient, so no backward pass runs through them.
    dtype: compute dtype; parameters and BN statistics stay float32.
    remat: rematerialise each stage in the backward pass (memory for compute).
    stride_in_1x1: bottlenecks stride in their first 1x1 conv (detectron2's MSRA weights).
  """
  depth: int = 50
  freeze_at: int = 2
  dtype: Dtype = jnp.float32
  remat: bool = False
  stride_in_1x1: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
    """x: [B, H, W, 3] normalised image -> (C2, C3, C4, C5), C_l: [B, H/2^l, W/2^l, C_l]."""
    if not 0 <= self.freeze_at <= 5:
      raise ValueError(f"freeze_at must be in [0, 5], got {self.freeze_at}")
    block, counts = _spec(self.depth)
    if self.stride_in_1x1:
      if block is not Bottleneck:
        raise ValueError(f"stride_in_1x1 needs bottleneck blocks, not ResNet-{self.depth}")
      block = functools.partial(Bottleneck, stride_in_1x1=True)
    stage_cls = nn.remat(Stage) if self.remat else Stage
    x = Stem(dtype=self.dtype, name="stem")(x.astype(self.dtype))
    if self.freeze_at >= 1:
      x = jax.lax.stop_gradient(x)
    outputs = []
    for level, count in zip(range(2, 6), counts):
      x = stage_cls(block, count, 64 * 2**(level - 2), 1 if level == 2 else 2,
                    dtype=self.dtype, name=f"res{level}")(x)
      if self.freeze_at >= level:
        x = jax.lax.stop_gradient(x)
      outputs.append(x)
    return tuple(outputs)

